"""``spatial_attention``: single-head attention over H*W positions with head size C."""

from __future__ import annotations

import torch

from .. import _validation as V
from .._backend import op_backends
from ..reference import ops as reference

BACKENDS = op_backends("spatial_attention")
BACKENDS.register("reference", devices=None, dtypes=V.FLOAT_DTYPES)(reference.spatial_attention)


def check_args(q, k, v, scale) -> None:
    V.check_tensor("q", q, ndim=(3, 4))
    V.check_tensor("k", k, ndim=(3, 4))
    V.check_tensor("v", v, ndim=(3, 4))
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
    V.check_same_dtype(q=q, k=k, v=v)
    V.check_same_device(q=q, k=k, v=v)
    if q.shape[1] == 0:
        raise ValueError(f"q must have at least one channel (the head size C), got shape {tuple(q.shape)}")
    if scale is not None:
        V.check_float("scale", scale, positive=True)


def spatial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    r"""``out = v softmax(s qᵀ k)ᵀ`` for one head of size ``C`` over ``N`` positions.

    .. math::
        \mathrm{out}_{b,:,i} = \sum_j \frac{\exp(s\, q_{b,:,i} \cdot k_{b,:,j})}
        {\sum_{j'} \exp(s\, q_{b,:,i} \cdot k_{b,:,j'})}\, v_{b,:,j}, \qquad s = C^{-1/2}

    Args:
        q, k, v: ``(B, C, N)`` or ``(B, C, H, W)``, one shape, dtype and device for all three
            (the layout the 1x1 convolutions of an attention block produce).
        scale: ``s``; default ``C ** -0.5``.

    Returns ``(B, C, N)`` or ``(B, C, H, W)`` like ``q``.
    """
    check_args(q, k, v, scale)
    backend = BACKENDS.select(q.device, q.dtype)
    return backend.fn(q, k, v, scale)
