"""Launch planning for ``codebook_argmin`` (kernels and math in ``codebook_argmin_jit.py``, every
configuration in ``codebook_argmin_table.py``).

The latent is read in place as rows ``n = b * HW + hw`` when its positions merge into one stride
and a row block never crosses a batch item (``(N, D)`` rows, channels-last, NCHW with ``H * W`` a
multiple of the row block or batch 1); otherwise its rows are copied once into an ``(N, D)``
tensor (O(N D) against the O(N K D) search). The codebook is read as contiguous rows, in fp32
unless latent and codebook share a 16-bit dtype. The tiles depend on whether every size, stride
and pointer is 16-aligned; the codebook is split over programs when the row blocks alone cannot
fill the GPU. The plan is cached per sizes, dtypes, layout and device (:func:`plan`).
"""

from __future__ import annotations

import functools

import torch
import triton

from vqvae_fast._device import capability, device_guard, sm_count

from . import codebook_argmin_jit as jit
from . import codebook_argmin_table as T
from ._table import Launch, arch_for, run
from .codebook_argmin_jit import EMPTY_SLOT

TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
#: programs that keep a device busy: two waves of one program per SM
WAVES = 2


def dot_kind(z_dtype: torch.dtype, e_dtype: torch.dtype, D: int, precision: str) -> str:
    """Which inner product the main kernel runs for these inputs and this precision."""
    if z_dtype == e_dtype and z_dtype in (torch.float16, torch.bfloat16):
        return "native"  # products of 16-bit numbers are exact in fp32: both precisions
    if precision == "fast" and D >= 16:  # below 16 the (padded) dot is cheap: stay exact
        return "tf32"
    return "ieee"


def choose_splits(row_blocks: int, num_tiles: int, programs: int, num_splits: int | None = None) -> tuple[int, int]:
    """``(num_splits, tiles_per_split)``: split the codebook when ``row_blocks`` are fewer than
    the ``programs`` that fill the device."""
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


def latent_rows(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, dict, bool]:
    """``(z, rows, aligned)``: ``z`` (or its rows copied into an ``(N, D)`` tensor), how the
    kernels address its rows (``B``, ``HW``, ``stride_zb``, ``stride_zw``, ``stride_zd``, the unit
    stride ``"w"`` or ``"d"``) and whether the aligned tiles apply (:func:`aligned`).

    Read in place: ``(N, D)`` rows and ``(B, D, H, W)`` latents whose positions merge into one
    stride with row blocks inside one batch item, with a unit stride, and -- for the aligned tiles
    only -- NCHW (unit stride on positions). Anything else is read as ``(N, D)`` rows with
    contiguous channels (a view of a channels-last latent, else one copy).
    """
    if z.dim() == 2:
        rows = _rows(z)
    else:
        B, D, H, W = z.shape
        rows = dict(B=B, HW=H * W, stride_zb=z.stride(0), stride_zw=z.stride(3), stride_zd=_channel_stride(z))
        merged = H == 1 or z.stride(2) == W * z.stride(3)
        in_batch = B == 1 or (H * W) % T.MAIN_TILES["ieee"]["aligned"][0] == 0  # every tile's BLOCK_N
        if not (merged and in_batch):
            z = _as_rows(z)
            rows = _rows(z)
    fast = aligned(z, codebook, rows)
    if rows["stride_zd"] != 1 and not (fast and rows["stride_zw"] == 1):
        z = _as_rows(z).contiguous()  # the general tiles read channels-contiguous rows
        rows = _rows(z)
        fast = aligned(z, codebook, rows)
    rows["unit"] = "d" if rows["stride_zd"] == 1 else "w"
    return z, rows, fast


def aligned(z: torch.Tensor, codebook: torch.Tensor, rows: dict) -> bool:
    """Whether Triton will see every pointer 16-byte aligned and every index integer divisible by
    16 (or equal to 1): the case the "aligned" tiles are compiled and gated for. The code
    dimension ``D`` (the codebook's row stride) must be 16-divisible: the table's aligned fp32
    tiles have no mask along ``D``."""
    ints = [rows["B"] * rows["HW"], codebook.shape[0], rows["stride_zw"], rows["stride_zd"]]
    if rows["B"] > 1:
        ints += [rows["HW"], rows["stride_zb"]]
    pointers_aligned = z.data_ptr() % 16 == 0 and codebook.data_ptr() % 16 == 0
    return pointers_aligned and codebook.stride(0) % 16 == 0 and all(v % 16 == 0 or v == 1 for v in ints)


@functools.lru_cache(maxsize=1024)
def plan(N, K, D, z_type, e_type, unit, kind, aligned, return_distance, arch, programs, num_splits=None):
    """``(entries, grids, tiles_per_split)``: the code-norm, main and finalize launches."""
    addressing = "aligned" if aligned else "general"
    block_n, block_k, block_d = T.MAIN_TILES[kind][addressing][:3]
    row_blocks = triton.cdiv(N, block_n)
    splits, tiles_per_split = choose_splits(row_blocks, triton.cdiv(K, block_k), programs, num_splits)
    rerank = kind == "tf32"
    reads = rerank or return_distance
    entries = (
        T.TABLE.find(arch, T.norms_entry(e_type)),
        T.TABLE.find(arch, T.main_entry(kind, z_type, e_type, addressing, unit, D % block_d == 0)),
        T.TABLE.find(arch, T.finalize_entry(z_type, e_type, unit, rerank, return_distance) if reads
                     else T.finalize_entry(None, None, None, False, False)),
    )
    grids = ((triton.cdiv(K, T.NORMS_TILE["BLOCK_K"]),), (row_blocks * splits,),
             (triton.cdiv(N, T.FINALIZE_TILE["BLOCK_N"]),))
    return entries, grids, splits, tiles_per_split


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
    K, D = codebook.shape
    kind = dot_kind(z.dtype, codebook.dtype, D, precision)
    if kind != "native" and codebook.dtype != torch.float32:
        codebook = codebook.float()  # exact; O(K D)
    if codebook.stride(1) != 1:  # O(K D) copy so that codes are contiguous rows, as compiled
        codebook = codebook.contiguous()
    out_shape = (z.shape[0], z.shape[2], z.shape[3]) if z.dim() == 4 else (z.shape[0],)
    z, rows, fast = latent_rows(z, codebook)
    N = rows["B"] * rows["HW"]
    device = z.device
    best = torch.full((N,), EMPTY_SLOT, dtype=torch.int64, device=device)
    distances = torch.empty((N,) if return_distance else (0,), dtype=torch.float32, device=device)
    if N == 0:
        return best.reshape(out_shape), (distances.reshape(out_shape) if return_distance else None)
    (norms, main, finalize), grids, splits, tiles_per_split = plan(
        N, K, D, TRITON_TYPES[z.dtype], TRITON_TYPES[codebook.dtype], rows["unit"], kind,
        fast, return_distance, arch_for(capability(device)), WAVES * sm_count(device),
        num_splits)
    enorm = torch.empty((K,), dtype=torch.float32, device=device)
    second = torch.full((N,), EMPTY_SLOT, dtype=torch.int64, device=device) if kind == "tf32" else best
    z_rows = (rows["HW"], rows["stride_zb"], rows["stride_zw"], rows["stride_zd"])
    e_rows = (codebook.stride(0), codebook.stride(1))
    # the plain finalize reads neither z nor e: the slots stand in for them (one table entry)
    z_, e_ = (z, codebook) if dict(finalize.constexprs)["RERANK"] or return_distance else (best, best)
    z_strides = (*z_rows, *e_rows) if z_ is z else (0,) * 6
    with device_guard(z):
        run([
            Launch(norms, jit._code_norms_kernel, grids[0], (codebook, enorm, K, D, *e_rows)),
            Launch(main, jit._codebook_argmin_kernel, grids[1],
                   (z, codebook, enorm, best, second, N, K, D, *z_rows, *e_rows, splits, tiles_per_split)),
            Launch(finalize, jit._finalize_kernel, grids[2], (z_, e_, best, second, distances, N, K, D, *z_strides)),
        ])
    return best.reshape(out_shape), (distances.reshape(out_shape) if return_distance else None)
