"""``padded_conv2d``: convolution with asymmetric zero padding, without a padded copy of the input.

Backends: ``cuda`` and ``cpu`` run the compiled op ``torch.ops.vqvae_fast.padded_conv2d`` (its
schema, checks and kernels are C++, in ``csrc/``); ``reference`` is ``F.pad`` + ``F.conv2d``.
This module registers the op's fake implementation (for ``torch.compile``) and its autograd
formula, which calls ``torch.ops.vqvae_fast.padded_conv2d_backward``, once the extension loads.
Without the extension the op falls back to the reference with a one-time warning.

On CPU, chosen automatically, the op runs ``F.pad`` + ``F.conv2d`` (oneDNN): measured with one
and two threads at the benchmark's CPU shapes (batch 1 and 8, 16x16 to 64x64, NCHW and
channels_last) the extension's decomposition (ATen's convolution for the bulk, im2col + GEMM
for the border strips) wins at some shapes and loses up to 1.3x at others, depending on the
thread count as much as on the shape, so no size rule keeps it never slower. Forcing the ``cpu``
backend (``use_backend("cpu")``) runs the extension's kernel, which never builds the padded
input (less memory).

When the compiled op runs (the rule of :func:`vqvae_fast._backend.custom_op_needed`): through
``torch.ops`` under ``torch.compile`` and when autograd must record the call; an eager call that
needs no gradient calls the same kernel below the autograd dispatch key (the Python autograd
registration would otherwise cost a redispatch through Python on every call).
"""

from __future__ import annotations

import torch

from ._autocast import autocast_inputs
from .. import _backend, _extension
from .. import _validation as V
from .._backend import custom_op_needed, op_backends
from ..reference import ops as reference

BACKENDS = op_backends("padded_conv2d")


def _run_extension(x, weight, bias, stride, padding):
    """The compiled op: through its autograd registration where :func:`custom_op_needed` says
    so, else straight to its CPU / CUDA kernel."""
    op = torch.ops.vqvae_fast.padded_conv2d.default
    if custom_op_needed(x, weight, bias):
        return op(x, weight, bias, list(stride), list(padding))
    with torch._C._AutoDispatchBelowAutograd():
        return op(x, weight, bias, list(stride), list(padding))


def _pad_then_conv(x, weight, bias, stride, padding):
    """``F.pad`` then ``F.conv2d``: the CPU choice (module docstring); keeps channels_last."""
    return torch.conv2d(torch.constant_pad_nd(x, padding), weight, bias, stride)


@BACKENDS.register("reference", devices=None, dtypes=V.FLOAT_DTYPES)
def _reference(x, weight, bias, stride, padding):
    reason = _extension.status(need_cuda=x.device.type == "cuda")
    if reason is not None and x.device.type in ("cpu", "cuda") and _backend.forced_backend("padded_conv2d") is None:
        _extension.warn_fallback("padded_conv2d", "reference", reason)
    return reference.padded_conv2d(x, weight, bias, stride, padding)


BACKENDS.register(
    "cuda", devices=("cuda",), dtypes=V.FLOAT_DTYPES,
    requires=lambda: _backend.extension_status(need_cuda=True),
)(_run_extension)
BACKENDS.register(
    "cpu", devices=("cpu",), dtypes=V.FLOAT_DTYPES, requires=lambda: _backend.extension_status(),
    auto=_pad_then_conv,
)(_run_extension)


def check_args(x, weight, bias, stride, padding) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Raise on bad arguments; return ``stride`` and ``padding`` as tuples. The common case is a
    few comparisons; anything unusual goes through the detailed checks, which name the argument."""
    V.check_tensor("x", x, ndim=4)
    V.check_tensor("weight", weight, ndim=4)
    if bias is not None:
        V.check_tensor("bias", bias, ndim=1)
    _, channels, height, width = x.shape
    out_channels, in_channels, kernel_h, kernel_w = weight.shape
    if in_channels != channels:
        raise ValueError(
            f"weight expects {in_channels} input channels (weight.shape[1]) but x has "
            f"{channels} (x.shape[1])"
        )
    if kernel_h < 1 or kernel_w < 1:
        raise ValueError(f"weight must have a kernel of at least 1x1, got shape {tuple(weight.shape)}")
    dtype, device = x.dtype, x.device
    if bias is None:
        if weight.device != device:
            V.check_same_device(x=x, weight=weight)
        if weight.dtype != dtype:
            V.check_same_dtype(x=x, weight=weight)
    else:
        if bias.shape[0] != out_channels:
            V.check_shape("bias", bias, (out_channels,))
        if weight.device != device or bias.device != device:
            V.check_same_device(x=x, weight=weight, bias=bias)
        if weight.dtype != dtype or bias.dtype != dtype:
            V.check_same_dtype(x=x, weight=weight, bias=bias)
    stride = _int_tuple("stride", stride, 2, 1)
    padding = _int_tuple("padding", padding, 4, 0)
    left, right, top, bottom = padding
    if height + top + bottom < kernel_h or width + left + right < kernel_w:
        raise ValueError(
            f"x spatial size {(height, width)} plus padding {padding} is smaller than the "
            f"kernel {(kernel_h, kernel_w)}"
        )
    return stride, padding


def _int_tuple(name: str, value, length: int, min_value: int) -> tuple[int, ...]:
    """``V.check_int_tuple`` with a quick accept for an int or a tuple of plain ints."""
    if type(value) is int:
        if value >= min_value:
            return (value,) * length
    elif type(value) is tuple and len(value) == length:
        for v in value:
            if type(v) is not int or v < min_value:
                break
        else:
            return value
    return V.check_int_tuple(name, value, length, min_value=min_value)


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
    return BACKENDS.select(x.device, x.dtype).fn(x, weight, bias, stride, padding)


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
