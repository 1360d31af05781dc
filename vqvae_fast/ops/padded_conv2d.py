"""``padded_conv2d``: convolution with asymmetric zero padding, without a padded copy of the input."""

from __future__ import annotations

import torch

from .. import _validation as V
from .._backend import op_backends
from ..reference import ops as reference

BACKENDS = op_backends("padded_conv2d")
BACKENDS.register("reference", devices=None, dtypes=V.FLOAT_DTYPES)(reference.padded_conv2d)


def check_args(x, weight, bias, stride, padding) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    V.check_tensor("x", x, ndim=4)
    V.check_tensor("weight", weight, ndim=4)
    V.check_optional_tensor("bias", bias, ndim=1)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight expects {weight.shape[1]} input channels (weight.shape[1]) but x has "
            f"{x.shape[1]} (x.shape[1])"
        )
    if bias is not None:
        V.check_shape("bias", bias, (weight.shape[0],))
    V.check_same_device(x=x, weight=weight, bias=bias)
    V.check_same_dtype(x=x, weight=weight, bias=bias)
    stride = V.check_int_tuple("stride", stride, 2, min_value=1)
    padding = V.check_int_tuple("padding", padding, 4, min_value=0)
    left, right, top, bottom = padding
    if x.shape[2] + top + bottom < weight.shape[2] or x.shape[3] + left + right < weight.shape[3]:
        raise ValueError(
            f"x spatial size {tuple(x.shape[2:])} plus padding {padding} is smaller than the "
            f"kernel {tuple(weight.shape[2:])}"
        )
    return stride, padding


def padded_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int, int, int] = (0, 0, 0, 0),
) -> torch.Tensor:
    r"""``conv2d(pad(x, padding), weight, bias, stride)`` with ``padding = (left, right, top, bottom)``.

    .. math::
        y_{n,o,p,q} = b_o + \sum_{c,i,j} w_{o,c,i,j}\; x_{n,c,\,s_H p + i - \mathrm{top},\, s_W q + j - \mathrm{left}}

    with ``x`` read as zero outside its bounds.

    Args:
        x: ``(N, C_in, H, W)``, NCHW or channels_last.
        weight: ``(C_out, C_in, kH, kW)``; bias: ``(C_out,)`` or ``None``.
        stride: int or ``(sH, sW)``.
        padding: int or ``(left, right, top, bottom)``, each >= 0 (``F.pad`` order).

    Returns ``(N, C_out, (H + top + bottom - kH) // sH + 1, (W + left + right - kW) // sW + 1)``.
    """
    stride, padding = check_args(x, weight, bias, stride, padding)
    backend = BACKENDS.select(x.device, x.dtype)
    return backend.fn(x, weight, bias, stride, padding)
