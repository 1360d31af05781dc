r"""Triton kernels for ``codebook_argmin``: nearest codebook entry without the ``N x K`` matrix.

For latents ``z`` (``N`` rows of ``D`` values, read in place from ``(N, D)`` or ``(B, D, H, W)``
NCHW / channels_last storage) and a codebook ``e`` of shape ``(K, D)``:

.. math::
    i_n = \arg\min_k \big(\lVert e_k \rVert^2 - 2\, z_n \cdot e_k\big)
        = \arg\min_k \lVert z_n - e_k \rVert^2

ties going to the lowest ``k`` (``torch.argmin``).

How the work is laid out:

* ``_code_norms_kernel`` computes ``||e_k||^2`` once per call (fp32).
* ``_codebook_argmin_kernel``: a program takes a block of ``BLOCK_N`` rows and a contiguous
  range of ``BLOCK_K``-code tiles (a *split* of the codebook). Per tile it computes
  ``||e_k||^2 - 2 z.e_k`` with a ``tl.dot`` over ``D`` in ``BLOCK_D`` chunks (``D`` padded with
  zeros to a multiple of 16, the smallest ``tl.dot``) and keeps a running ``(min, index)`` per
  row. It then folds its result into a per-row int64 slot with ``atomic_min`` on the packed
  ``(order-preserving key of the distance) << 32 | index``: the minimum packed value is the
  smallest distance with the lowest index whatever order the splits finish in, so splitting
  ``K`` across programs (to fill the GPU when ``N`` is small) stays deterministic and needs no
  partial buffers.
* Dot kinds: ``"ieee"`` (fp32 operands, ``input_precision="ieee"``: FMA, never TF32),
  ``"native"`` (fp16/bf16 operands on tensor cores: their products are exact in fp32 and
  accumulate in fp32) and ``"tf32"`` (``precision="fast"`` on fp32: tensor cores). The TF32
  kernel also keeps the runner-up per row (across splits: whatever loses in the best slot is a
  runner-up candidate) and ``_finalize_kernel`` re-ranks the two candidates by their fp32
  distance ``sum_d (z_d - e_d)^2``.
* ``_finalize_kernel`` writes the int64 indices in place of the packed slots and, when asked,
  the distance of the chosen code as ``sum_d (z_d - e_d)^2`` in fp32 (no cancellation).

The launcher (``codebook_argmin``) chooses tile sizes and the split from the shape;
``gate_configs()`` lists every configuration it can launch, for the ahead-of-time compile gate.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .gate import GateConfig

#: value of a packed (key, index) slot before any candidate arrived (int64 max).
EMPTY_SLOT = 2**63 - 1
INT32_MAX = 2**31 - 1
_EMPTY_SLOT = tl.constexpr(EMPTY_SLOT)
_INT32_MAX = tl.constexpr(INT32_MAX)

# ----------------------------------------------------------------------------------------------
# Small helpers (inlined into the kernels)


@triton.jit
def _order_key(x):
    """fp32 -> int32 whose signed order is the float order (-0.0 folded into +0.0)."""
    bits = (x + 0.0).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _row_offsets(rows, block_start, HW, W, stride_zb, stride_zh, stride_zw,
                 BLOCK_N: tl.constexpr, BLOCK_IN_BATCH: tl.constexpr, MERGED_HW: tl.constexpr):
    """int64 offset of row ``n = b * HW + h * W + w`` of z; rows ``(B, H, W)`` flattened."""
    if BLOCK_IN_BATCH:
        # The block lies inside one batch item: scalar batch index, consecutive positions, so
        # the compiler sees contiguous addresses when the position stride is 1 (NCHW).
        b = block_start // HW
        hw = ((block_start - b * HW) + tl.arange(0, BLOCK_N)).to(tl.int64)
    else:
        b = rows // HW
        hw = (rows - b * HW).to(tl.int64)
    base = b.to(tl.int64) * stride_zb
    if MERGED_HW:  # stride_zh == W * stride_zw: (h, w) is one axis
        return base + hw * stride_zw
    h = hw // W
    w = hw - h * W
    return base + h * stride_zh + w * stride_zw


# ----------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _code_norms_kernel(e_ptr, out_ptr, K, D, stride_ek, stride_ed,
                       BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """``out[k] = sum_d e[k, d]^2`` in fp32."""
    pid = tl.program_id(0)
    codes = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    code_mask = codes < K
    dims = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ptrs = e_ptr + codes.to(tl.int64)[:, None] * stride_ek + (d0 + dims)[None, :] * stride_ed
        x = tl.load(ptrs, mask=code_mask[:, None] & ((d0 + dims) < D)[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(x * x, axis=1)
    tl.store(out_ptr + codes, acc, mask=code_mask)


@triton.jit
def _codebook_argmin_kernel(
    z_ptr, e_ptr, enorm_ptr, best_ptr, second_ptr,
    N, K, D, HW, W,
    stride_zb, stride_zh, stride_zw, stride_zd,
    stride_ek, stride_ed,
    num_splits, tiles_per_split,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT: tl.constexpr,  # "ieee" (fp32 FMA), "tf32" (tensor cores), "native" (fp16/bf16 tensor cores)
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: no mask along D
    TRACK_SECOND: tl.constexpr,  # also keep the runner-up (fast mode re-ranks both)
    BLOCK_IN_BATCH: tl.constexpr,  # every row block lies in one batch item (B == 1 or HW % BLOCK_N == 0)
    MERGED_HW: tl.constexpr,  # stride_zh == W * stride_zw
):
    """Fold ``min_k (||e_k||^2 - 2 z_n.e_k)`` over this program's codes into ``best_ptr``.

    Program ``pid`` handles row block ``pid // num_splits`` against codebook tiles
    ``[s * tiles_per_split, (s + 1) * tiles_per_split)`` with ``s = pid % num_splits``.
    ``best_ptr`` / ``second_ptr``: int64 ``(N,)`` slots of packed ``key << 32 | index``
    (``EMPTY_SLOT`` initially), the best and (``TRACK_SECOND``) the runner-up.
    """
    pid = tl.program_id(0)
    row_block = pid // num_splits
    split = pid - row_block * num_splits
    block_start = row_block.to(tl.int64) * BLOCK_N  # 64-bit: N may exceed 2^31 rows
    rows = block_start + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    row_off = _row_offsets(rows, block_start, HW, W, stride_zb, stride_zh, stride_zw,
                           BLOCK_N, BLOCK_IN_BATCH, MERGED_HW)  # int64
    dims = tl.arange(0, BLOCK_D)
    tile_begin = split * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, tl.cdiv(K, BLOCK_K))

    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    second = tl.full([BLOCK_N], float("inf"), tl.float32)
    second_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    for tile in range(tile_begin, tile_end):
        codes = tile * BLOCK_K + tl.arange(0, BLOCK_K)
        code_mask = codes < K
        code_off = codes.to(tl.int64) * stride_ek
        # padding codes get +inf: they never win a strict comparison
        enorm = tl.load(enorm_ptr + codes, mask=code_mask, other=float("inf"))
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_off = (d0 + dims).to(tl.int64)
            z_ptrs = z_ptr + row_off[:, None] + d_off[None, :] * stride_zd  # (BLOCK_N, BLOCK_D)
            e_ptrs = e_ptr + code_off[None, :] + d_off[:, None] * stride_ed  # (BLOCK_D, BLOCK_K)
            if EVEN_D:
                zt = tl.load(z_ptrs, mask=row_mask[:, None], other=0.0)
                et = tl.load(e_ptrs, mask=code_mask[None, :], other=0.0)
            else:  # D padded with zeros up to a multiple of BLOCK_D (tl.dot needs >= 16)
                d_mask = (d0 + dims) < D
                zt = tl.load(z_ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
                et = tl.load(e_ptrs, mask=d_mask[:, None] & code_mask[None, :], other=0.0)
            if DOT == "ieee":
                acc = tl.dot(zt.to(tl.float32), et.to(tl.float32), acc, input_precision="ieee")
            elif DOT == "tf32":
                acc = tl.dot(zt.to(tl.float32), et.to(tl.float32), acc, input_precision="tf32")
            else:  # fp16 / bf16 operands: exact products, fp32 accumulation
                acc = tl.dot(zt, et, acc)
        # NaN distances (NaN or infinite inputs) become -inf, the smallest: torch.argmin's rule
        # (a NaN is the minimum, ties to the lowest index) under an ordered comparison. An
        # explicit test: maximum's NaN rule differs between compilers and Triton versions.
        dist = enorm[None, :] - 2.0 * acc  # (BLOCK_N, BLOCK_K)
        dist = tl.where(dist != dist, float("-inf"), dist)

        # best of the tile, ties to the lowest code
        tile_min = tl.min(dist, axis=1)
        tile_arg = tl.min(tl.where(dist == tile_min[:, None], codes[None, :], _INT32_MAX), axis=1)
        # strict <: an earlier tile (lower codes) keeps an equal distance
        take = tile_min < best
        if TRACK_SECOND:
            rest = tl.where(codes[None, :] == tile_arg[:, None], float("inf"), dist)
            tile_min2 = tl.min(rest, axis=1)
            tile_arg2 = tl.min(tl.where(rest == tile_min2[:, None], codes[None, :], _INT32_MAX), axis=1)
            # runner-up of the union: the loser of the two bests against the other list's next
            old = tl.where(take, best, second)
            old_idx = tl.where(take, best_idx, second_idx)
            new = tl.where(take, tile_min2, tile_min)
            new_idx = tl.where(take, tile_arg2, tile_arg)
            keep_old = old <= new  # equal: the older (lower) code
            second = tl.where(keep_old, old, new)
            second_idx = tl.where(keep_old, old_idx, new_idx)
        best_idx = tl.where(take, tile_arg, best_idx)
        best = tl.where(take, tile_min, best)

    packed = (_order_key(best).to(tl.int64) << 32) | best_idx.to(tl.int64)
    old_slot = tl.atomic_min(best_ptr + rows, packed, mask=row_mask, sem="relaxed")
    if TRACK_SECOND:
        # Whatever loses in the best slot is a runner-up candidate: our best (it lost) or the
        # previous holder (we displaced it); with each program's own runner-up, the minimum over
        # all of them is the overall runner-up, whatever the order of the atomics.
        loser = tl.where(packed < old_slot, old_slot, packed)
        packed2 = (_order_key(second).to(tl.int64) << 32) | second_idx.to(tl.int64)
        tl.atomic_min(second_ptr + rows, tl.minimum(loser, packed2), mask=row_mask, sem="relaxed")


@triton.jit
def _finalize_kernel(
    z_ptr, e_ptr, best_ptr, second_ptr, dist_ptr,
    N, K, D, HW, W, stride_zb, stride_zh, stride_zw, stride_zd, stride_ek, stride_ed,
    RERANK: tl.constexpr, WITH_DISTANCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_IN_BATCH: tl.constexpr, MERGED_HW: tl.constexpr,
):
    """Write the final int64 indices in place of the packed slots.

    ``RERANK`` (fast mode): choose between the best and the runner-up by the fp32 distance
    ``sum_d (z_d - e_{k,d})^2`` (ties: lower index). ``WITH_DISTANCE``: store that distance.
    """
    pid = tl.program_id(0)
    block_start = pid.to(tl.int64) * BLOCK_N
    rows = block_start + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    index = tl.load(best_ptr + rows, mask=row_mask, other=0) & 0xFFFFFFFF
    if RERANK or WITH_DISTANCE:
        row_off = _row_offsets(rows, block_start, HW, W, stride_zb, stride_zh, stride_zw,
                               BLOCK_N, BLOCK_IN_BATCH, MERGED_HW)
        if RERANK:
            other = tl.load(second_ptr + rows, mask=row_mask, other=0) & 0xFFFFFFFF
            other = tl.where(other < K, other, index)  # padding codes are never candidates
        else:
            other = index
        dims = tl.arange(0, BLOCK_D)
        dist = tl.zeros([BLOCK_N], dtype=tl.float32)
        dist_other = tl.zeros([BLOCK_N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_off = (d0 + dims).to(tl.int64)
            mask = row_mask[:, None] & ((d0 + dims) < D)[None, :]
            x = tl.load(z_ptr + row_off[:, None] + d_off[None, :] * stride_zd, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(e_ptr + (index * stride_ek)[:, None] + d_off[None, :] * stride_ed, mask=mask, other=0.0)
            diff = x - y.to(tl.float32)
            dist += tl.sum(diff * diff, axis=1)
            if RERANK:
                y2 = tl.load(e_ptr + (other * stride_ek)[:, None] + d_off[None, :] * stride_ed, mask=mask, other=0.0)
                diff2 = x - y2.to(tl.float32)
                dist_other += tl.sum(diff2 * diff2, axis=1)
        if RERANK:
            switch = (dist_other < dist) | ((dist_other == dist) & (other < index))
            switch = switch & (dist < float("inf"))  # a best from NaN / infinite inputs stays
            index = tl.where(switch, other, index)
            dist = tl.where(switch, dist_other, dist)
        if WITH_DISTANCE:
            tl.store(dist_ptr + rows, dist, mask=row_mask)
    tl.store(best_ptr + rows, index, mask=row_mask)


# ----------------------------------------------------------------------------------------------
# Launcher

#: (BLOCK_N, BLOCK_K, BLOCK_D, num_warps, num_stages) of the main kernel per dot kind, for
#: "aligned" addressing (16-divisible strides and sizes, row blocks inside one batch item, (h, w)
#: merged: vector loads) and for any other (per-element addresses: smaller tiles, or the
#: registers spill).
MAIN_CONFIGS = {
    "ieee": {"aligned": (128, 128, 16, 8, 2), "general": (128, 64, 16, 8, 1)},
    "tf32": {"aligned": (128, 128, 16, 8, 3), "general": (128, 64, 16, 8, 3)},
    "native": {"aligned": (128, 128, 32, 8, 3), "general": (128, 64, 32, 8, 3)},
}
AUX_BLOCK_N, AUX_BLOCK_D = 64, 32  # finalize kernel


def dot_kind(z_dtype: torch.dtype, e_dtype: torch.dtype, D: int, precision: str) -> str:
    """Which inner product the main kernel runs for these inputs and this precision."""
    if z_dtype == e_dtype and z_dtype in (torch.float16, torch.bfloat16):
        return "native"  # products of 16-bit numbers are exact in fp32: both precisions
    if precision == "fast" and D >= 16:  # below 16 the (padded) dot is cheap: stay exact
        return "tf32"
    return "ieee"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    """Programs that keep the device busy: two waves of one program per SM."""
    if device.type != "cuda":
        return 4  # interpreter: programs run one after another; a few splits keep it honest
    index = device.index if device.index is not None else torch.cuda.current_device()
    return 2 * _sm_count(index)


def choose_splits(row_blocks: int, num_tiles: int, device: torch.device,
                  num_splits: int | None = None) -> tuple[int, int]:
    """``(num_splits, tiles_per_split)``: split the codebook when there are too few row blocks."""
    if num_splits is None:
        num_splits = -(-_target_programs(device) // max(row_blocks, 1))
    num_splits = max(1, min(num_splits, num_tiles))
    tiles_per_split = -(-num_tiles // num_splits)
    return -(-num_tiles // tiles_per_split), tiles_per_split


def latent_layout(z: torch.Tensor) -> dict:
    """How rows of ``z`` are addressed: ``n = b * HW + h * W + w`` and the strides, no copy."""
    if z.dim() == 2:
        N = z.shape[0]
        return dict(B=1, HW=N, W=max(N, 1), stride_zb=0, stride_zh=0, stride_zw=z.stride(0),
                    stride_zd=z.stride(1), merged=True, out_shape=(N,))
    B, _, H, W = z.shape
    merged = H == 1 or z.stride(2) == W * z.stride(3)
    return dict(B=B, HW=H * W, W=max(W, 1), stride_zb=z.stride(0), stride_zh=z.stride(2),
                stride_zw=z.stride(3), stride_zd=z.stride(1), merged=merged, out_shape=(B, H, W))


def _aligned_addressing(z: torch.Tensor, codebook: torch.Tensor, layout: dict, N: int) -> bool:
    """Whether Triton will see every pointer 16-byte aligned and every index integer divisible by
    16 (or equal to 1): the case the "aligned" configurations are compiled and gated for."""
    ints = [N, codebook.shape[0], layout["stride_zb"], layout["stride_zw"], layout["stride_zd"],
            codebook.stride(0), codebook.stride(1)]
    if layout["B"] > 1:
        ints.append(layout["HW"])
    if not layout["merged"]:
        ints += [layout["W"], layout["stride_zh"]]
    pointers_aligned = z.data_ptr() % 16 == 0 and codebook.data_ptr() % 16 == 0
    return pointers_aligned and all(v % 16 == 0 or v == 1 for v in ints)


def _block_in_batch(layout: dict, block_n: int) -> bool:
    return layout["B"] == 1 or layout["HW"] % block_n == 0


def codebook_argmin(
    z: torch.Tensor,
    codebook: torch.Tensor,
    precision: str = "ieee",
    return_distance: bool = False,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Indices (int64, ``(N,)`` or ``(B, H, W)``) and, if asked, fp32 distances of that shape.

    ``z``: ``(N, D)`` or ``(B, D, H, W)`` in any strides; ``codebook``: ``(K, D)``; fp32, fp16 or
    bf16 (mixed dtypes compute in fp32). ``num_splits`` overrides how many programs share the
    codebook of one row block (tests use it to exercise the cross-program combine).
    Memory: the int64 result, an fp32 ``(K,)`` of code norms, and with ``"fast"`` an int64
    ``(N,)`` runner-up slot; nothing proportional to ``N * K``.
    """
    if z.device.type == "cuda":
        with torch.cuda.device(z.device):  # Triton launches on the current device
            return _launch(z, codebook, precision, return_distance, num_splits)
    return _launch(z, codebook, precision, return_distance, num_splits)


def _launch(z, codebook, precision, return_distance, num_splits):
    if codebook.stride(1) != 1:  # O(K * D) copy so that codes are contiguous rows, as compiled
        codebook = codebook.contiguous()
    layout = latent_layout(z)
    N = layout["B"] * layout["HW"]
    K, D = codebook.shape
    device = z.device
    out_shape = layout["out_shape"]
    best = torch.full((N,), EMPTY_SLOT, dtype=torch.int64, device=device)
    distances = torch.empty((N,) if return_distance else (0,), dtype=torch.float32, device=device)
    if N == 0:
        return best.reshape(out_shape), (distances.reshape(out_shape) if return_distance else None)

    enorm = torch.empty((K,), dtype=torch.float32, device=device)
    _code_norms_kernel[(triton.cdiv(K, 64),)](
        codebook, enorm, K, D, codebook.stride(0), codebook.stride(1), BLOCK_K=64, BLOCK_D=32, num_warps=4,
    )

    kind = dot_kind(z.dtype, codebook.dtype, D, precision)
    rerank = kind == "tf32"
    second = torch.full((N,), EMPTY_SLOT, dtype=torch.int64, device=device) if rerank else best
    strides = (layout["stride_zb"], layout["stride_zh"], layout["stride_zw"], layout["stride_zd"])

    block_n, block_k, block_d, warps, stages = MAIN_CONFIGS[kind]["aligned"]
    if not (_aligned_addressing(z, codebook, layout, N) and layout["merged"]
            and _block_in_batch(layout, block_n)):
        block_n, block_k, block_d, warps, stages = MAIN_CONFIGS[kind]["general"]
    dot = kind
    if kind == "native" and codebook.dtype == torch.bfloat16 and _interpreting():
        # Triton's CPU interpreter multiplies bf16 bit patterns wrongly in tl.dot; the fp32 dot
        # of the upcast values is the same exact-product computation.
        dot = "ieee"
    row_blocks = triton.cdiv(N, block_n)
    splits, tiles_per_split = choose_splits(row_blocks, triton.cdiv(K, block_k), device, num_splits)
    _codebook_argmin_kernel[(row_blocks * splits,)](
        z, codebook, enorm, best, second,
        N, K, D, layout["HW"], layout["W"], *strides, codebook.stride(0), codebook.stride(1),
        splits, tiles_per_split,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, DOT=dot, EVEN_D=D % block_d == 0,
        TRACK_SECOND=rerank, BLOCK_IN_BATCH=_block_in_batch(layout, block_n), MERGED_HW=layout["merged"],
        num_warps=warps, num_stages=stages,
    )
    _finalize_kernel[(triton.cdiv(N, AUX_BLOCK_N),)](
        z, codebook, best, second, distances,
        N, K, D, layout["HW"], layout["W"], *strides, codebook.stride(0), codebook.stride(1),
        RERANK=rerank, WITH_DISTANCE=return_distance, BLOCK_N=AUX_BLOCK_N, BLOCK_D=AUX_BLOCK_D,
        BLOCK_IN_BATCH=_block_in_batch(layout, AUX_BLOCK_N), MERGED_HW=layout["merged"], num_warps=4,
    )
    indices = best.reshape(out_shape)
    return indices, (distances.reshape(out_shape) if return_distance else None)


# ----------------------------------------------------------------------------------------------
# Compile gate


_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _main_gate_config(GateConfig, name, kind, dtype, layout, *, D=256, general=False, crossing=False):
    """The main kernel as the launcher compiles it for ``layout`` ("nchw", "rows" or "strided").

    ``crossing``: row blocks cross batch items and (h, w) do not merge (per-row index math).
    ``general``: that, with nothing 16-divisible: the register-heaviest variant of a kind.
    """
    block_n, block_k, block_d, warps, stages = MAIN_CONFIGS[kind]["general" if general or crossing else "aligned"]
    t = _TRITON_DTYPES[dtype]
    signature = {
        "z_ptr": f"*{t}", "e_ptr": f"*{t}", "enorm_ptr": "*fp32", "best_ptr": "*i64", "second_ptr": "*i64",
        "N": "i32", "K": "i32", "D": "i32", "HW": "i32", "W": "i32",
        "stride_zb": "i32", "stride_zh": "i32", "stride_zw": "i32", "stride_zd": "i32",
        "stride_ek": "i32", "stride_ed": "constexpr", "num_splits": "i32", "tiles_per_split": "i32",
    }
    constexprs = dict(
        stride_ed=1, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, DOT=kind,
        EVEN_D=D % block_d == 0, TRACK_SECOND=kind == "tf32", BLOCK_IN_BATCH=not (general or crossing),
        MERGED_HW=not (general or crossing),
    )
    # the runtime specialises the stride that equals 1: positions (NCHW) or channels (rows);
    # "strided" latents have neither
    if layout != "strided":
        unit_stride = "stride_zw" if layout == "nchw" else "stride_zd"
        signature[unit_stride] = "constexpr"
        constexprs[unit_stride] = 1
    aligned = ["z_ptr", "e_ptr", "enorm_ptr", "best_ptr", "second_ptr", "N", "K", "HW", "W",
               "stride_zb", "stride_zh", "stride_zw", "stride_zd", "stride_ek"]
    if D % 16 == 0:
        aligned.append("D")
    aligned = tuple(a for a in aligned if a not in constexprs)
    if layout == "rows":  # (N, D) rows: the batch and height strides do not exist
        aligned = tuple(a for a in aligned if a != "stride_zh")
    if general:
        aligned = tuple(a for a in aligned if a.endswith("_ptr"))
    return GateConfig(
        name=name, kernel=_codebook_argmin_kernel, signature=signature, constexprs=constexprs,
        aligned=aligned, num_warps=warps, num_stages=stages, tensor_cores=kind != "ieee",
    )


def gate_configs() -> list:
    """Every kernel configuration the launcher can choose (main kernel per dot kind and layout)."""
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    main = [  # (name, kind, dtype, layout, options)
        ("ieee fp32 rows", "ieee", f32, "rows", {}),
        ("ieee fp32 nchw", "ieee", f32, "nchw", {}),
        ("ieee fp32 nchw D=4", "ieee", f32, "nchw", dict(D=4)),
        ("ieee fp32 nchw D=4 crossing", "ieee", f32, "nchw", dict(D=4, crossing=True)),
        ("ieee fp32 rows general", "ieee", f32, "rows", dict(D=40, general=True)),
        ("ieee fp32 strided general", "ieee", f32, "strided", dict(D=3, general=True)),
        ("fast tf32 rows", "tf32", f32, "rows", {}),
        ("fast tf32 nchw", "tf32", f32, "nchw", {}),
        ("fast tf32 nchw D=24", "tf32", f32, "nchw", dict(D=24)),
        ("fast tf32 nchw D=24 crossing", "tf32", f32, "nchw", dict(D=24, crossing=True)),
        ("fast tf32 rows general", "tf32", f32, "rows", dict(D=40, general=True)),
        ("fast tf32 strided general", "tf32", f32, "strided", dict(D=40, general=True)),
        ("bf16 rows", "native", bf16, "rows", {}),
        ("fp16 nchw", "native", f16, "nchw", {}),
        ("bf16 nchw D=8", "native", bf16, "nchw", dict(D=8)),
        ("bf16 nchw D=8 crossing", "native", bf16, "nchw", dict(D=8, crossing=True)),
        ("fp16 rows general", "native", f16, "rows", dict(D=40, general=True)),
        ("bf16 strided general", "native", bf16, "strided", dict(D=3, general=True)),
    ]
    configs = [_main_gate_config(GateConfig, name, kind, dtype, layout, **options)
               for name, kind, dtype, layout, options in main]
    strides = ("stride_zb", "stride_zh", "stride_zw", "stride_zd")
    configs.append(GateConfig(
        name="code norms", kernel=_code_norms_kernel,
        signature={"e_ptr": "*fp32", "out_ptr": "*fp32", "K": "i32", "D": "i32", "stride_ek": "i32",
                   "stride_ed": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr"},
        constexprs=dict(stride_ed=1, BLOCK_K=64, BLOCK_D=32), aligned=("e_ptr", "out_ptr", "stride_ek"),
    ))
    for dtype, rerank in ((f32, True), (f32, False), (bf16, False)):
        t = _TRITON_DTYPES[dtype]
        consts = dict(RERANK=rerank, WITH_DISTANCE=True, BLOCK_N=AUX_BLOCK_N, BLOCK_D=AUX_BLOCK_D,
                      BLOCK_IN_BATCH=True, MERGED_HW=True, stride_ed=1)
        configs.append(GateConfig(
            name=f"finalize {t}{' rerank' if rerank else ''}", kernel=_finalize_kernel,
            signature={"z_ptr": f"*{t}", "e_ptr": f"*{t}", "best_ptr": "*i64", "second_ptr": "*i64",
                       "dist_ptr": "*fp32", "N": "i32", "K": "i32", "D": "i32", "HW": "i32", "W": "i32",
                       **{s: "i32" for s in strides}, "stride_ek": "i32",
                       **{c: "constexpr" for c in consts}},
            constexprs=consts, aligned=("z_ptr", "e_ptr", "best_ptr", "second_ptr", "dist_ptr"),
        ))
    return configs
