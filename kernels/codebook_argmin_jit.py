r"""The ``@triton.jit`` kernels of ``codebook_argmin``: nearest codebook entry without the ``N x K`` matrix.

For latent rows ``z`` (``N`` rows of ``D`` values; row ``n = b * HW + hw`` at offset
``b * stride_zb + hw * stride_zw``, value ``d`` at ``+ d * stride_zd``) and a codebook ``e`` of
shape ``(K, D)`` with contiguous rows:

.. math::
    i_n = \arg\min_k \big(\lVert e_k \rVert^2 - 2\, z_n \cdot e_k\big)
        = \arg\min_k \lVert z_n - e_k \rVert^2

ties going to the lowest ``k`` (``torch.argmin``).

* ``_code_norms_kernel`` computes ``||e_k||^2`` once per call (fp32).
* ``_codebook_argmin_kernel``: a program takes a block of ``BLOCK_N`` rows (inside one batch
  item) and a contiguous range of ``BLOCK_K``-code tiles (a *split* of the codebook). Per tile it
  computes ``||e_k||^2 - 2 z.e_k`` with a ``tl.dot`` over ``D`` in ``BLOCK_D`` chunks (``D``
  padded with zeros to a multiple of 16, the smallest ``tl.dot``) and keeps a running
  ``(min, index)`` per row. It then folds its result into a per-row int64 slot with
  ``atomic_min`` on the packed ``(order-preserving key of the distance) << 32 | index``: the
  minimum packed value is the smallest distance with the lowest index whatever order the splits
  finish in, so splitting ``K`` across programs stays deterministic and needs no partial buffers.
* Dot kinds: ``"ieee"`` (fp32 operands, ``input_precision="ieee"``: FMA, never TF32),
  ``"native"`` (fp16/bf16 operands on tensor cores: their products are exact in fp32 and
  accumulate in fp32) and ``"tf32"`` (tensor cores). The TF32 kernel also keeps the runner-up
  per row (across splits: whatever loses in the best slot is a runner-up candidate) and
  ``_finalize_kernel`` re-ranks the two candidates by their fp32 distance ``sum_d (z_d - e_d)^2``.
* ``_finalize_kernel`` writes the int64 indices in place of the packed slots and, when asked,
  the distance of the chosen code as ``sum_d (z_d - e_d)^2`` in fp32 (no cancellation).
"""

from __future__ import annotations

import triton
import triton.language as tl

from vqvae_fast._device import interpreting

#: value of a packed (key, index) slot before any candidate arrived (int64 max).
EMPTY_SLOT = 2**63 - 1
INT32_MAX = 2**31 - 1
_INT32_MAX = tl.constexpr(INT32_MAX)
#: Triton's CPU interpreter multiplies bf16 bit patterns wrongly in ``tl.dot``; there the native
#: dot runs on the upcast values (the same exact-product computation).
_INTERPRETED = tl.constexpr(interpreting())


@triton.jit
def _order_key(x):
    """fp32 -> int32 whose signed order is the float order (-0.0 folded into +0.0)."""
    bits = (x + 0.0).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _row_offsets(block_start, HW, stride_zb, stride_zw, BLOCK_N: tl.constexpr):
    """int64 offsets of rows ``block_start + [0, BLOCK_N)``, which lie in one batch item (scalar
    batch index, consecutive positions: contiguous addresses when ``stride_zw`` is 1)."""
    b = block_start // HW
    hw = ((block_start - b * HW) + tl.arange(0, BLOCK_N)).to(tl.int64)
    return b.to(tl.int64) * stride_zb + hw * stride_zw


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
    N, K, D, HW,
    stride_zb, stride_zw, stride_zd,
    stride_ek, stride_ed,
    num_splits, tiles_per_split,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT: tl.constexpr,  # "ieee" (fp32 FMA), "tf32" (tensor cores), "native" (fp16/bf16 tensor cores)
    EVEN_D: tl.constexpr,  # D % BLOCK_D == 0: no mask along D
    TRACK_SECOND: tl.constexpr,  # also keep the runner-up (fast mode re-ranks both)
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
    row_off = _row_offsets(block_start, HW, stride_zb, stride_zw, BLOCK_N)  # int64
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
            elif _INTERPRETED:
                acc = tl.dot(zt.to(tl.float32), et.to(tl.float32), acc, input_precision="ieee")
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
    N, K, D, HW, stride_zb, stride_zw, stride_zd, stride_ek, stride_ed,
    RERANK: tl.constexpr, WITH_DISTANCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Write the final int64 indices in place of the packed slots.

    ``RERANK`` (fast mode): choose between the best and the runner-up by the fp32 distance
    ``sum_d (z_d - e_{k,d})^2`` (ties: lower index). ``WITH_DISTANCE``: store that distance.
    Without either, ``z`` and ``e`` are not read.
    """
    pid = tl.program_id(0)
    block_start = pid.to(tl.int64) * BLOCK_N
    rows = block_start + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    index = tl.load(best_ptr + rows, mask=row_mask, other=0) & 0xFFFFFFFF
    if RERANK or WITH_DISTANCE:
        row_off = _row_offsets(block_start, HW, stride_zb, stride_zw, BLOCK_N)
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
