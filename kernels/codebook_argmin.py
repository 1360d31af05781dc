"""Launch planning for ``codebook_argmin`` (search kernels in ``codebook_argmin_jit.py``, the code
norms and the finalize in ``codebook_argmin_finalize_jit.py``, every configuration in
``codebook_argmin_table.py``).

Three launches: the code norms (skipped when the caller passes them, except for ``"tf32x3"``,
which also prepares the codebook's TF32 parts), the search, the finalize; ``"tf32x3"`` adds the
exact pass over non-finite rows and codes (a read of the latent when there are none). The latent is read in
place as rows ``n = b * H W + hw`` when its positions merge into one stride and a row block never
crosses a batch item (``(N, D)`` rows, channels-last, NCHW with ``H * W`` a multiple of the row
block or batch 1); otherwise its rows are copied once into an ``(N, D)`` tensor (O(N D) against
the O(N K D) search). The codebook is read as contiguous rows, in fp32 unless latent and
codebook share a 16-bit dtype. The codebook is split over programs when the row blocks alone
cannot fill the GPU. The plan is cached per sizes, dtypes, layout and device (:func:`plan`).
"""

from __future__ import annotations

import functools

import torch
import triton

from vqvae_fast._device import capability, device_guard, sm_count

from . import codebook_argmin_finalize_jit as fin
from . import codebook_argmin_jit as jit
from . import codebook_argmin_table as T
from ._table import Launch, arch_for, run
from .codebook_argmin_jit import EMPTY_SLOT

TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
#: programs that keep a device busy: two waves of one program per SM
WAVES = 2
#: every search tile is 128 rows: NCHW latents whose H * W is a multiple are read in place
ROW_BLOCK = 128


def dot_kind(z_dtype: torch.dtype, e_dtype: torch.dtype, D: int, precision: str) -> str:
    """Which products the search runs for these inputs and this precision."""
    if z_dtype == e_dtype and z_dtype in (torch.float16, torch.bfloat16):
        return "native"  # products of 16-bit numbers are exact in fp32: both precisions
    if precision == "fast" and D >= 16:  # below 16 the three products cost next to nothing
        return "tf32"
    return "tf32x3"


def choose_splits(row_blocks: int, num_tiles: int, programs: int, num_splits: int | None = None) -> tuple[int, int]:
    """``(num_splits, tiles_per_split)``: split the codebook when ``row_blocks`` are fewer than
    the ``programs`` that fill the device; every split gets at least one tile."""
    if num_splits is None:
        num_splits = -(-programs // max(row_blocks, 1))
    num_splits = max(1, min(num_splits, num_tiles))
    tiles_per_split = -(-num_tiles // num_splits)
    return -(-num_tiles // tiles_per_split), tiles_per_split


def _channel_stride(z: torch.Tensor) -> int:
    """The stride along ``D``; 1 when ``D == 1`` (never stepped along: the unit-stride layout)."""
    return z.stride(1) if z.shape[1] > 1 else 1


def _rows(z: torch.Tensor) -> dict:
    """How the kernels address the rows of a 2-D ``z`` (one batch item of ``N`` positions)."""
    return dict(B=1, HW=z.shape[0], stride_zb=0, stride_zw=z.stride(0), stride_zd=_channel_stride(z))


def _as_rows(z: torch.Tensor) -> torch.Tensor:
    """``z`` as ``(N, D)`` rows in taming's ``(b, h, w)`` order: a view for channels-last, else a copy."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]) if z.dim() == 4 else z


def latent_rows(z: torch.Tensor, codebook: torch.Tensor, any_strides: bool = False) -> tuple[torch.Tensor, dict, bool]:
    """``(z, rows, aligned)``: ``z`` (or its rows copied into an ``(N, D)`` tensor), how the
    kernels address its rows (``B``, ``HW``, ``stride_zb``, ``stride_zw``, ``stride_zd``, the unit
    stride ``"w"`` or ``"d"``) and whether the aligned tiles apply (:func:`aligned`).

    Read in place: ``(N, D)`` rows and ``(B, D, H, W)`` latents whose positions merge into one
    stride with row blocks inside one batch item -- in any strides for the resident kernel
    (``any_strides``), which reads its latent tile once; for the chunked kernel with a unit
    stride, and for its aligned tiles also NCHW (unit stride on positions). Anything else is read
    as ``(N, D)`` rows with contiguous channels (a view of a channels-last latent, else one copy).
    """
    if z.dim() == 2:
        rows = _rows(z)
    else:
        B, D, H, W = z.shape
        rows = dict(B=B, HW=H * W, stride_zb=z.stride(0), stride_zw=z.stride(3), stride_zd=_channel_stride(z))
        merged = H == 1 or z.stride(2) == W * z.stride(3)
        in_batch = B == 1 or (H * W) % ROW_BLOCK == 0
        if not (merged and in_batch):
            z = _as_rows(z)
            rows = _rows(z)
    fast = aligned(z, codebook, rows)
    if not any_strides and rows["stride_zd"] != 1 and not (fast and rows["stride_zw"] == 1):
        z = _as_rows(z).contiguous()  # the general tiles read channels-contiguous rows
        rows = _rows(z)
        fast = aligned(z, codebook, rows)
    rows["unit"] = "d" if rows["stride_zd"] == 1 else "w"
    return z, rows, fast


def aligned(z: torch.Tensor, codebook: torch.Tensor, rows: dict) -> bool:
    """Whether Triton will see every pointer 16-byte aligned and every index integer divisible by
    16 (or equal to 1): the case the "aligned" tiles are compiled and gated for. ``D`` (the
    codebook's row stride) must be 16-divisible: the codebook tiles are vector loads."""
    ints = [rows["B"] * rows["HW"], codebook.shape[0], rows["stride_zw"], rows["stride_zd"]]
    if rows["B"] > 1:
        ints += [rows["HW"], rows["stride_zb"]]
    pointers_aligned = z.data_ptr() % 16 == 0 and codebook.data_ptr() % 16 == 0
    return pointers_aligned and codebook.stride(0) % 16 == 0 and all(v % 16 == 0 or v == 1 for v in ints)


def item_blocks(rows: dict, block_n: int) -> int:
    """Row blocks of ``block_n`` per batch item (``H * W`` is a multiple of every search and
    finalize block when there are several items), or all of them for one item."""
    if rows["B"] == 1:
        return max(1, triton.cdiv(rows["HW"], block_n))
    return rows["HW"] // block_n


@functools.lru_cache(maxsize=1024)
def plan(N, K, D, z_type, e_type, unit, kind, aligned, return_distance, arch, programs, num_splits=None):
    """``(entries, grids, num_splits, tiles_per_split)``: the code-norm, search and finalize
    launches (their table entries and grids)."""
    addressing = "aligned" if aligned else "general"
    if kind == "native" and D <= T.RESIDENT_MAX_D:
        search = T.resident_entry(arch, z_type, T.padded_d(D))
    else:
        search = T.chunked_entry(arch, kind, z_type, e_type, addressing, unit if aligned else "d")
    block_n, block_k = dict(search.constexprs)["BLOCK_N"], dict(search.constexprs)["BLOCK_K"]
    row_blocks = triton.cdiv(N, block_n)
    splits, tiles_per_split = choose_splits(row_blocks, triton.cdiv(K, block_k), programs, num_splits)
    rerank, exact = kind != "native", kind == "tf32x3"
    reads = rerank or return_distance
    entries = (
        T.TABLE.find(arch, T.norms_entry(e_type, exact)),
        T.TABLE.find(arch, search),
        T.TABLE.find(arch, T.finalize_entry(z_type, e_type, unit, rerank, return_distance) if reads
                     else T.finalize_entry(None, None, None, False, False)),
    ) + ((T.TABLE.find(arch, T.nonfinite_entry(z_type, unit, return_distance)),) if exact else ())
    norms_k = T.NORMS_TILES[exact]["BLOCK_K"]
    grids = ((triton.cdiv(K, jit.NORMS_PAD) * jit.NORMS_PAD // norms_k,), (row_blocks * splits,),
             (triton.cdiv(N, T.FINALIZE_TILE["BLOCK_N"]),), (triton.cdiv(N, T.NONFINITE_TILE["BLOCK_N"]),))
    return entries, grids, splits, tiles_per_split


def codebook_argmin(
    z: torch.Tensor,
    codebook: torch.Tensor,
    precision: str = "ieee",
    return_distance: bool = False,
    num_splits: int | None = None,
    code_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Indices (int64, ``(N,)`` or ``(B, H, W)``) and, if asked, fp32 distances of that shape.

    ``z``: ``(N, D)`` or ``(B, D, H, W)`` in any strides; ``codebook``: ``(K, D)``; fp32, fp16 or
    bf16 (mixed dtypes compute in fp32). ``num_splits`` overrides how many programs share the
    codebook of one row block (tests use it to exercise the cross-program combine).
    ``code_norms``: ``||e_k||^2`` (``(K,)``, fp32) if the caller keeps them; the norm launch is then
    skipped, except for ``"tf32x3"``, which prepares the codebook's parts in it, and where ``K``
    is not a multiple of ``NORMS_PAD`` (the search reads norms padded with ``+inf``).
    Memory: the int64 result, an fp32 ``(K,)`` of code norms; for fp32 inputs an int64 ``(N,)``
    runner-up slot, and with the default precision the codebook's two TF32 parts (``8 K D``
    bytes) and a flag per code; nothing proportional to ``N * K``.
    """
    K, D = codebook.shape
    kind = dot_kind(z.dtype, codebook.dtype, D, precision)
    if kind != "native" and codebook.dtype != torch.float32:
        codebook = codebook.float()  # exact; O(K D)
    if codebook.stride(1) != 1:  # O(K D) copy so that codes are contiguous rows, as compiled
        codebook = codebook.contiguous()
    out_shape = (z.shape[0], z.shape[2], z.shape[3]) if z.dim() == 4 else (z.shape[0],)
    z, rows, fast = latent_rows(z, codebook, any_strides=kind == "native" and D <= T.RESIDENT_MAX_D)
    N = rows["B"] * rows["HW"]
    device = z.device
    best = torch.full((N,), EMPTY_SLOT, dtype=torch.int64, device=device)
    distances = torch.empty((N,) if return_distance else (0,), dtype=torch.float32, device=device)
    if N == 0:
        return best.reshape(out_shape), (distances.reshape(out_shape) if return_distance else None)
    entries, grids, splits, tiles_per_split = plan(
        N, K, D, TRITON_TYPES[z.dtype], TRITON_TYPES[codebook.dtype], rows["unit"], kind,
        fast, return_distance, arch_for(capability(device)), WAVES * sm_count(device),
        num_splits)
    norms, search, finalize = entries[:3]
    exact = kind == "tf32x3"
    # the runner-up slots, and for "tf32x3" one more: the any-non-finite-code flag (EMPTY_SLOT: none)
    second = torch.full((N + 1,), EMPTY_SLOT, dtype=torch.int64, device=device) if kind != "native" else best
    any_bad = second[N:] if exact else best
    launches = []
    padded = -(-K // jit.NORMS_PAD) * jit.NORMS_PAD
    if code_norms is None or exact or padded != K:  # the search reads norms padded with +inf
        enorm = torch.empty((padded,), dtype=torch.float32, device=device)
        if exact:
            stride_pk = -(-D // T.PARTS_ALIGN) * T.PARTS_ALIGN
            parts = torch.empty((2, K, stride_pk), dtype=torch.float32, device=device)
            flags = torch.empty((K,), dtype=torch.int64, device=device)
            e_big, e_small = parts[0], parts[1]
        else:
            stride_pk, e_big, e_small, flags = 0, enorm, enorm, best
        launches.append(Launch(norms, fin._code_norms_kernel, grids[0],
                               (codebook, enorm, e_big, e_small, flags, any_bad, K, D, codebook.stride(0),
                                codebook.stride(1), stride_pk)))
    else:
        enorm, flags = code_norms, best
    z_rows = (item_blocks(rows, dict(search.constexprs)["BLOCK_N"]), rows["stride_zb"], rows["stride_zw"],
              rows["stride_zd"])
    if search.kernel == "_resident_kernel":
        launches.append(Launch(search, jit._resident_kernel, grids[1],
                               (z, codebook, enorm, best, N, K, D, *z_rows, codebook.stride(0), splits,
                                tiles_per_split)))
    else:
        e_arg, es_arg, stride_e = (e_big, e_small, stride_pk) if exact else (codebook, codebook, codebook.stride(0))
        launches.append(Launch(search, jit._chunked_kernel, grids[1],
                               (z, e_arg, es_arg, enorm, best, second, N, K, D, *z_rows, stride_e, splits,
                                tiles_per_split)))
    # the plain finalize reads neither z nor e: the slots stand in for them (one table entry)
    reads = dict(finalize.constexprs)["RERANK"] or return_distance
    z_, e_ = (z, codebook) if reads else (best, best)
    z_strides = ((item_blocks(rows, T.FINALIZE_TILE["BLOCK_N"]), *z_rows[1:], codebook.stride(0), codebook.stride(1))
                 if reads else (1,) + (0,) * 5)
    launches.append(Launch(finalize, fin._finalize_kernel, grids[2],
                           (z_, e_, best, second, distances, N, K, D, *z_strides)))
    if exact:
        launches.append(Launch(entries[3], fin._nonfinite_kernel, grids[3],
                               (z, codebook, best, distances, flags, any_bad, N, K, D,
                                item_blocks(rows, T.NONFINITE_TILE["BLOCK_N"]), *z_strides[1:])))
    with device_guard(z):
        run(launches)
    return best.reshape(out_shape), (distances.reshape(out_shape) if return_distance else None)
