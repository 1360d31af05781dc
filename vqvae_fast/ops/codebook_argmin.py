"""``codebook_argmin``: index of the nearest codebook entry for each latent vector."""

from __future__ import annotations

import torch

from .. import _validation as V
from .._backend import op_backends
from ..reference import ops as reference

BACKENDS = op_backends("codebook_argmin")
PRECISIONS = ("ieee", "fast")


@BACKENDS.register("reference", devices=None, dtypes=V.FLOAT_DTYPES)
def _reference(z, codebook, precision, return_distance):
    return reference.codebook_argmin(z, codebook, return_distance=return_distance)


def check_args(z, codebook, precision, return_distance) -> None:
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
    V.check_same_device(z=z, codebook=codebook)
    V.check_choice("precision", precision, PRECISIONS)
    if not isinstance(return_distance, bool):
        raise TypeError(f"return_distance must be a bool, got {type(return_distance).__name__}")
    V.check_no_grad("z", z, "codebook_argmin")
    V.check_no_grad("codebook", codebook, "codebook_argmin")


def codebook_argmin(
    z: torch.Tensor,
    codebook: torch.Tensor,
    precision: str = "ieee",
    return_distance: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Nearest codebook entry of every latent vector, without the ``N x K`` distance matrix.

    .. math::
        i_n = \arg\min_k \lVert z_n - e_k \rVert^2 = \arg\min_k \big(\lVert e_k \rVert^2 - 2\, z_n \cdot e_k\big)

    ties going to the lowest index, as ``torch.argmin``.

    Args:
        z: ``(N, D)`` or ``(B, D, H, W)`` (NCHW or channels_last).
        codebook: ``(K, D)``.
        precision: ``"ieee"`` (fp32 products) or ``"fast"`` (see the backend's documentation).
        return_distance: also return ``min_k ||z_n - e_k||^2``.

    Returns int64 indices ``(N,)`` or ``(B, H, W)`` (and the distances, fp32, same shape).
    """
    check_args(z, codebook, precision, return_distance)
    dtype = torch.promote_types(z.dtype, codebook.dtype)
    backend = BACKENDS.select(z.device, dtype)
    return backend.fn(z, codebook, precision, return_distance)
