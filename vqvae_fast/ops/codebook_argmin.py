"""``codebook_argmin``: index of the nearest codebook entry for each latent vector.

Backends: ``triton`` (CUDA; fused distance + argmin kernels of ``vqvae_fast.kernels``), ``cpu``
(blocked ``addmm`` + ``argmin`` below) and ``reference`` (the full ``N x K`` matrix). The fast
backends run behind the custom op ``torch.ops.vqvae_fast.codebook_argmin`` so that
``torch.compile`` keeps them as one node. The op is not differentiable, so of the rule of
:func:`vqvae_fast._backend.custom_op_needed` only the first case applies: the custom op runs
under ``torch.compile``; every eager call runs the selected backend directly. The custom op takes
the backend the public call selected as its last argument (``"auto"`` selects, for direct
``torch.ops`` callers).
"""

from __future__ import annotations

import functools
from typing import Iterator

import torch

from .. import _backend
from .. import _validation as V
from .._backend import custom_op_needed, op_backends
from ..reference import ops as reference

BACKENDS = op_backends("codebook_argmin")
PRECISIONS = ("ieee", "fast")

#: bytes of one block of distances on the CPU path (rows x K); bounds its extra memory. 16 MiB:
#: 256 rows of a 16384-code codebook in one GEMM (1.1x faster than 128-row blocks, one thread),
#: while blocks much beyond the L2-resident size slow the small-D case (D=4: 1.5x at 32 MiB).
CPU_BLOCK_BYTES = 16 << 20
#: below this many rows the CPU path runs ``mm`` then ``add`` rather than ``addmm`` (1.2x faster
#: at 16 rows of a 16384-code codebook; slower from a few hundred rows on).
SMALL_BLOCK_ROWS = 64


def _compute_dtype(z: torch.Tensor, codebook: torch.Tensor) -> torch.dtype:
    dtype = z.dtype
    return dtype if codebook.dtype == dtype else torch.promote_types(dtype, codebook.dtype)


def _distance_dtype(dtype: torch.dtype) -> torch.dtype:
    """Distances come back in fp32 (fp64 for fp64 inputs), whatever the backend."""
    return torch.promote_types(dtype, torch.float32)


def _out_shape(z: torch.Tensor) -> tuple[int, ...]:
    return (z.shape[0], z.shape[2], z.shape[3]) if z.dim() == 4 else (z.shape[0],)


def _no_distance(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The custom op always returns two tensors; without distances the second is empty."""
    return torch.empty((0,), dtype=_distance_dtype(dtype), device=z.device)


# ----------------------------------------------------------------------------------------------
# Backends. Each returns ``(indices, distances)``; ``distances`` is None when not asked for.


@BACKENDS.register("triton", devices=("cuda",), dtypes=V.KERNEL_DTYPES, requires=_backend.triton_status)
def _triton(z, codebook, precision, return_distance, code_norms=None):
    """Given fp32 code norms (as a quantizer caches them), the kernels skip their norm launch."""
    if code_norms is not None and (code_norms.dtype != torch.float32 or not code_norms.is_contiguous()):
        code_norms = None
    return _kernels().codebook_argmin(z, codebook, precision, return_distance, code_norms=code_norms)


@functools.lru_cache(maxsize=None)
def _kernels():
    """``vqvae_fast.kernels.codebook_argmin``, imported (with triton) on first use only."""
    from ..kernels import codebook_argmin as kernels

    return kernels


def _row_blocks(z: torch.Tensor, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first row, block (r, D))`` over the rows of ``z`` in taming's ``(b, h, w)`` order.

    Blocks are views of ``z`` for ``(N, D)``, NCHW and channels_last input; a block that spans
    several batch items (tiny ``H * W``), or an item of unusual strides, is copied — at most
    ``max(rows, H * W)`` rows at a time, never the whole latent.
    """
    if z.dim() == 2:
        for start in range(0, z.shape[0], rows):
            yield start, z[start:start + rows]
        return
    B, D, H, W = z.shape
    HW = H * W
    if B * HW == 0:
        return  # no rows (and no H * W to divide by)
    positions = z.permute(0, 2, 3, 1)  # (B, H, W, D) view
    if HW >= rows:
        for b in range(B):
            item = positions[b].reshape(HW, D)  # a view unless (H, W) cannot merge
            for start in range(0, HW, rows):
                yield b * HW + start, item[start:start + rows]
    else:
        per_block = max(1, rows // HW)
        for b in range(0, B, per_block):
            yield b * HW, positions[b:b + per_block].reshape(-1, D)  # copies per_block items


def code_norms(codebook: torch.Tensor) -> torch.Tensor:
    """``||e_k||^2`` ``(K,)`` in the CPU path's compute dtype (fp32; fp64 for fp64)."""
    compute = torch.float64 if codebook.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(codebook.to(compute), dim=1).square_()  # no (K, D) temporary


def cpu_codebook_argmin(z, codebook, return_distance, block_bytes: int = CPU_BLOCK_BYTES, enorm=None):
    """Chunked PyTorch argmin: ``addmm`` then ``argmin`` per block of rows, never ``N x K``.

    Computes in fp32 (fp64 for fp64 inputs): ``d = ||e||^2 - 2 z.e`` per block of
    ``block_bytes / (K * itemsize)`` rows into one reused buffer, so the extra memory is that
    buffer, the codebook in the compute dtype and ``O(rows * D)`` — independent of ``N``.
    Distances of the chosen codes are ``sum_d (z_d - e_d)^2`` in the compute dtype.
    ``enorm``: the code norms ``||e_k||^2`` if known (:func:`code_norms`), else computed here.
    Returns ``(indices, distances or None)``.
    """
    compute = torch.float64 if _compute_dtype(z, codebook) == torch.float64 else torch.float32
    e = codebook.to(compute)  # (K, D); a copy only for 16-bit codebooks
    K = e.shape[0]
    if enorm is None:
        enorm = torch.linalg.vector_norm(e, dim=1).square_()  # (K,): no (K, D) temporary, 3x faster
    else:
        enorm = enorm.to(compute)
    N = z.shape[0] * (z.shape[2] * z.shape[3] if z.dim() == 4 else 1)
    rows = max(1, min(N, block_bytes // (K * e.element_size())))
    shape = _out_shape(z)
    if 0 < N <= rows:  # one block: no buffer, no loop (what small calls take)
        block = reference.flatten_latents(z).to(compute)  # (N, D); a copy for 4-D latents only
        indices = _block_scores(block, e, enorm).argmin(dim=1)  # ties: lowest index
        if not return_distance:
            return indices.reshape(shape), None
        return indices.reshape(shape), (block - e[indices]).pow(2).sum(1).reshape(shape)
    indices = torch.empty((N,), dtype=torch.int64, device=z.device)
    distances = torch.empty((N if return_distance else 0,), dtype=compute, device=z.device)
    buffer = torch.empty((rows * K,), dtype=compute, device=z.device)
    for start, block in _row_blocks(z, rows):
        block = block.to(compute)  # (r, D)
        count = block.shape[0]
        scores = _block_scores(block, e, enorm, out=buffer[: count * K].view(count, K))
        chosen = indices[start:start + count]
        torch.argmin(scores, dim=1, out=chosen)  # ties: lowest index
        if return_distance:
            distances[start:start + count] = (block - e[chosen]).pow(2).sum(1)
    return indices.reshape(shape), distances.reshape(shape) if return_distance else None


def _block_scores(block, e, enorm, out=None):
    """``||e||^2 - 2 z.e`` ``(r, K)`` for a block of rows ``(r, D)``, into ``out`` if given."""
    if block.shape[0] < SMALL_BLOCK_ROWS:  # MKL's GEMM with a broadcast bias is slow for a few rows
        products = torch.mm(block, e.t()) if out is None else torch.mm(block, e.t(), out=out)
        return products.mul_(-2).add_(enorm)
    if out is None:
        return torch.addmm(enorm, block, e.t(), beta=1, alpha=-2)
    return torch.addmm(enorm, block, e.t(), beta=1, alpha=-2, out=out)


@BACKENDS.register("cpu", devices=("cpu",), dtypes=V.FLOAT_DTYPES)
def _cpu(z, codebook, precision, return_distance, code_norms=None):
    return cpu_codebook_argmin(z, codebook, return_distance, enorm=code_norms)


@BACKENDS.register("reference", devices=None, dtypes=V.FLOAT_DTYPES)
def _reference(z, codebook, precision, return_distance, code_norms=None):
    result = reference.codebook_argmin(z, codebook, return_distance=return_distance)
    if not return_distance:
        return result, None
    indices, distances = result
    return indices, distances.to(_distance_dtype(distances.dtype))


# ----------------------------------------------------------------------------------------------
# The custom op (fast backends run behind it: torch.compile sees one opaque node)


@torch.library.custom_op("vqvae_fast::codebook_argmin", mutates_args=())
def _codebook_argmin_op(
    z: torch.Tensor, codebook: torch.Tensor, precision: str, return_distance: bool, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, distances)``; ``distances`` is empty unless ``return_distance``."""
    if backend == "auto":
        fn = BACKENDS.select(z.device, _compute_dtype(z, codebook)).fn
    else:
        fn = BACKENDS.backends[backend].fn
    indices, distances = fn(z, codebook, precision, return_distance)
    return indices, distances if distances is not None else _no_distance(z, _compute_dtype(z, codebook))


@_codebook_argmin_op.register_fake
def _codebook_argmin_fake(z, codebook, precision, return_distance, backend="auto"):
    shape = _out_shape(z)
    distance_dtype = _distance_dtype(_compute_dtype(z, codebook))
    indices = z.new_empty(shape, dtype=torch.int64)
    distances = z.new_empty(shape if return_distance else (0,), dtype=distance_dtype)
    return indices, distances


# ----------------------------------------------------------------------------------------------
# Public function


def check_args(z, codebook, precision, return_distance, code_norms=None) -> None:
    V.check_tensor("z", z, ndim=(2, 4))
    V.check_tensor("codebook", codebook, ndim=2)
    if codebook.shape[0] == 0:
        raise ValueError("codebook must hold at least one code, got shape (0, D)")
    if codebook.shape[1] != z.shape[1]:
        raise ValueError(
            f"codebook has code dimension {codebook.shape[1]} but z has {z.shape[1]} "
            f"(dimension 1 of z, shape {tuple(z.shape)})"
        )
    if z.shape[1] == 0:
        raise ValueError("z must have a non-zero code dimension D")
    if codebook.device != z.device:
        V.check_same_device(z=z, codebook=codebook)
    if precision not in PRECISIONS:
        V.check_choice("precision", precision, PRECISIONS)
    if not isinstance(return_distance, bool):
        raise TypeError(f"return_distance must be a bool, got {type(return_distance).__name__}")
    if z.requires_grad or codebook.requires_grad:
        V.check_no_grad("z", z, "codebook_argmin")
        V.check_no_grad("codebook", codebook, "codebook_argmin")
    if code_norms is not None:
        V.check_tensor("code_norms", code_norms, ndim=1)
        V.check_shape("code_norms", code_norms, (codebook.shape[0],))
        V.check_same_device(z=z, code_norms=code_norms)


def codebook_argmin(
    z: torch.Tensor,
    codebook: torch.Tensor,
    precision: str = "ieee",
    return_distance: bool = False,
    *,
    code_norms: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Nearest codebook entry of every latent vector, without the ``N x K`` distance matrix.

    .. math::
        i_n = \arg\min_k \lVert z_n - e_k \rVert^2 = \arg\min_k \big(\lVert e_k \rVert^2 - 2\, z_n \cdot e_k\big)

    ties going to the lowest index, as ``torch.argmin``.

    Args:
        z: ``(N, D)`` or ``(B, D, H, W)`` (NCHW, channels_last or other strides: read in place).
        codebook: ``(K, D)``, ``K >= 1``. Mixed dtypes compute in their promoted dtype.
        precision: what the indices guarantee on the GPU (Triton) path. Both precisions run on
            tensor cores; the search never builds the ``N x K`` matrix.

            * ``"ieee"`` (default). fp16 / bf16 latents and codebook alike: 16-bit products,
              exact in fp32, accumulated in fp32. Every other dtype pair, in fp32 with three TF32
              products per term: ``z = z_big + z_small`` and ``e = e_big + e_small`` (parts
              rounded to TF32), ``z.e ~ z_big.e_big + z_small.e_big + z_big.e_small``, each term
              within ``2^-20 |z_d e_d|`` of the exact product, accumulated in fp32; each row keeps
              its best two candidates, re-ranked by their fp32 distance ``sum_d (z_d - e_d)^2``
              (no cancellation). The index agrees with an fp64 computation except at near-ties:
              two codes within fp32 rounding of each other, or two or more other codes within
              ``~2^-19 sum_d |z_d e_d|`` of the best -- on adversarial near-tie codebooks it
              agrees with fp64 at least as often as an fp32 PyTorch computation of taming's
              ``|z|^2 + |e|^2 - 2 z.e`` (``tests/test_codebook_argmin_accuracy.py``). Rows or
              codes holding a NaN or an infinity (or values whose squares overflow) are searched
              again with fp32 products, so the NaN and infinity rules below hold exactly. (On
              GPUs without TF32, before sm_80, the three products run as fp32 FMAs.)
            * ``"fast"``: fp32 inputs with one TF32 product (inputs read to 11 bits: ``~2^-9
              |z_d e_d|`` per term) and the same re-rank of the best two. The indices equal the
              ``"ieee"`` ones except where two or more other codes lie within
              ``~2^-8 sum_d |z_d e_d|`` of the best. fp16 / bf16 inputs, and ``D < 16``, run the
              ``"ieee"`` computation.

            NaN distances count as the smallest and ties go to the lowest index
            (``torch.argmin`` on the reference's distances). On CPU both precisions compute in
            fp32 (fp64 for fp64 inputs) with BLAS, in blocks of rows.
        return_distance: also return ``min_k ||z_n - e_k||^2``, computed for the chosen code as
            ``sum_d (z_d - e_d)^2`` (fp32; fp64 for fp64 inputs).
        code_norms: optional ``||e_k||^2`` ``(K,)`` of this codebook, as
            :func:`vqvae_fast.ops.codebook_argmin.code_norms` computes them (a quantizer caches
            them while its codebook is unchanged). The CPU backend then skips computing them, and
            so does the GPU search except for fp32 inputs at the default precision (which
            prepares the codebook's TF32 parts in the same pass).

    Returns int64 indices ``(N,)`` or ``(B, H, W)``, and the distances of that shape if asked.
    Memory: ``O(N + K D)`` on the GPU (for fp32 inputs at the default precision the codebook's
    two TF32 parts, ``8 K D`` bytes), one block of ``CPU_BLOCK_BYTES`` on the CPU; the reference
    backend builds the full ``(N, K)`` matrix.

    Example::

        >>> z = torch.randn(2, 8, 4, 4); codebook = torch.randn(512, 8)
        >>> codebook_argmin(z, codebook).shape
        torch.Size([2, 4, 4])
    """
    check_args(z, codebook, precision, return_distance, code_norms)
    backend = BACKENDS.select(z.device, _compute_dtype(z, codebook))
    if backend.name != "reference" and custom_op_needed(z, codebook):
        indices, distances = torch.ops.vqvae_fast.codebook_argmin(z, codebook, precision, return_distance, backend.name)
    else:
        indices, distances = backend.fn(z, codebook, precision, return_distance, code_norms)
    return (indices, distances) if return_distance else indices
