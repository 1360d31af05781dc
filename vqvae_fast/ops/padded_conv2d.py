"""``padded_conv2d``: convolution with asymmetric zero padding, without a padded copy of the input.

Backends: ``cuda`` and ``cpu`` run the compiled op ``torch.ops.vqvae_fast.padded_conv2d`` (its
schema, checks and kernels are C++, in ``csrc/``); ``reference`` is ``F.pad`` + ``F.conv2d``.
This module registers the op's fake implementation (for ``torch.compile``) and its autograd
formula, which calls ``torch.ops.vqvae_fast.padded_conv2d_backward``, once the extension loads.
Without the extension the op falls back to the reference with a one-time warning.
"""

from __future__ import annotations

import torch

from ._autocast import autocast_inputs
from .. import _backend, _extension
from .. import _validation as V
from .._backend import op_backends
from ..reference import ops as reference

BACKENDS = op_backends("padded_conv2d")
BACKENDS.register("reference", devices=None, dtypes=V.FLOAT_DTYPES)(reference.padded_conv2d)


def _run_extension(x, weight, bias, stride, padding):
    return torch.ops.vqvae_fast.padded_conv2d(x, weight, bias, list(stride), list(padding))


BACKENDS.register(
    "cuda", devices=("cuda",), dtypes=V.FLOAT_DTYPES,
    requires=lambda: _backend.extension_status(need_cuda=True),
)(_run_extension)
BACKENDS.register(
    "cpu", devices=("cpu",), dtypes=V.FLOAT_DTYPES, requires=lambda: _backend.extension_status(),
)(_run_extension)


def check_args(x, weight, bias, stride, padding) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    V.check_tensor("x", x, ndim=4)
    V.check_tensor("weight", weight, ndim=4)
    V.check_optional_tensor("bias", bias, ndim=1)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight expects {weight.shape[1]} input channels (weight.shape[1]) but x has "
            f"{x.shape[1]} (x.shape[1])"
        )
    if weight.shape[2] < 1 or weight.shape[3] < 1:
        raise ValueError(f"weight must have a kernel of at least 1x1, got shape {tuple(weight.shape)}")
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

    with ``x`` read as zero outside its bounds. The compiled backends never build the padded
    input: on CPU, ATen's convolution with symmetric padding (top, left) computes the bulk of the
    output from ``x`` itself and the border strips it misses come from a small im2col + GEMM; on
    CUDA, cuDNN's graph API takes the asymmetric padding directly.

    Args:
        x: ``(N, C_in, H, W)``, NCHW or channels_last.
        weight: ``(C_out, C_in, kH, kW)``; bias: ``(C_out,)`` or ``None``.
        stride: int or ``(sH, sW)``.
        padding: int or ``(left, right, top, bottom)``, each >= 0 (``F.pad`` order).

    Returns ``(N, C_out, (H + top + bottom - kH) // sH + 1, (W + left + right - kW) // sW + 1)``,
    channels_last when ``x`` is. Under ``torch.autocast`` the inputs are cast to the autocast
    dtype first, as for ``F.conv2d``.
    """
    if isinstance(x, torch.Tensor):
        x, weight, bias = autocast_inputs(x.device, x, weight, bias)
    stride, padding = check_args(x, weight, bias, stride, padding)
    backend = BACKENDS.select(x.device, x.dtype)
    if backend.name == "reference" and _backend.forced_backend("padded_conv2d") is None:
        reason = _extension.status(need_cuda=x.device.type == "cuda")
        if reason is not None and x.device.type in ("cpu", "cuda"):
            _extension.warn_fallback("padded_conv2d", "reference", reason)
    return backend.fn(x, weight, bias, stride, padding)


# ----------------------------------------------------------------------------------------------
# Python parts of the C++ op: fake implementations and autograd.


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of the op's output and grad_input (mirrors ``activation_memory_format``
    in ``csrc/padded_conv2d_decomposed.cpp``)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def output_shape(x, weight, stride, padding) -> tuple:
    left, right, top, bottom = padding
    return (
        x.shape[0],
        weight.shape[0],
        (x.shape[2] + top + bottom - weight.shape[2]) // stride[0] + 1,
        (x.shape[3] + left + right - weight.shape[3]) // stride[1] + 1,
    )


def _fake_forward(x, weight, bias, stride, padding):
    shape = output_shape(x, weight, stride, padding)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


def _fake_backward(grad_output, x, weight, stride, padding, output_mask):
    grad_x = (
        torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
        if output_mask[0]
        else None
    )
    grad_w = weight.new_empty(weight.shape) if output_mask[1] else None
    grad_b = grad_output.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_x, grad_w, grad_b


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding = inputs
    ctx.save_for_backward(x, weight)
    ctx.stride, ctx.padding = stride, padding
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grad_x, grad_w, grad_b = torch.ops.vqvae_fast.padded_conv2d_backward(
        grad_output, x, weight, ctx.stride, ctx.padding, mask
    )
    return grad_x, grad_w, grad_b, None, None


_registered = False


def _register_python_parts() -> None:
    """Fake implementations and autograd of the C++ ops (run once, when the extension loads)."""
    global _registered
    if _registered:
        return
    _registered = True
    torch.library.register_fake("vqvae_fast::padded_conv2d")(_fake_forward)
    torch.library.register_fake("vqvae_fast::padded_conv2d_backward")(_fake_backward)
    torch.library.register_autograd(
        "vqvae_fast::padded_conv2d", _backward, setup_context=_setup_context
    )


_extension.on_load(_register_python_parts)
