"""``group_norm_silu``: group norm followed by SiLU (or by nothing), fused.

Backends: ``triton`` (CUDA; the kernels of ``vqvae_fast.kernels.group_norm_silu``: one read and
one write of ``x`` where a group fits in registers, otherwise two reads and one write spread over
the whole GPU), ``cpu`` (native group norm then in-place SiLU, with an explicit backward) and
``reference``. The fast backends run behind the custom op ``torch.ops.vqvae_fast.group_norm_silu``
(returning ``y`` and the fp32 per-group ``mean, rstd``; its gradient is the custom op
``vqvae_fast::group_norm_silu_backward``), so ``torch.compile(fullgraph=True)`` traces through
them without a graph break. On CPU tensors the op runs the cpu backend unless the triton backend
is forced (then the kernels run in Triton's interpreter, ``TRITON_INTERPRET=1``).

When the custom op runs (the rule of :func:`vqvae_fast._backend.custom_op_needed`): under
``torch.compile``, and in eager mode when autograd must record the call; an eager call that
needs no gradient runs the implementation directly (``_triton_forward`` / ``_native_forward``).
The cpu backend's eager autograd path is ATen's own (``torch.group_norm`` then ``F.silu``, which
autograd differentiates), except for a bias without a weight, which ATen's backward cannot take.
The custom ops take the backend the public call selected as their last argument (``"auto"``
selects, for direct ``torch.ops`` callers).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import _backend
from .. import _validation as V
from .._backend import custom_op_needed, op_backends
from .._device import output_memory_format
from ..reference import ops as reference

BACKENDS = op_backends("group_norm_silu")

_HALF = (torch.float16, torch.bfloat16)


def check_args(x, num_groups, weight, bias, eps, activation) -> None:
    """Raise on bad arguments. The common case is tested with a few comparisons first; anything
    unusual goes through the detailed checks, which raise with the argument's name."""
    V.check_tensor("x", x, min_ndim=2)
    if not (type(num_groups) is int and num_groups >= 1 and x.shape[1] % num_groups == 0):
        V.check_int("num_groups", num_groups, min_value=1)
        V.check_divisible("x.shape[1] (channels)", x.shape[1], "num_groups", num_groups)
    for name, param in (("weight", weight), ("bias", bias)):
        if param is not None:
            _check_param(name, param, x)
    if weight is not None and bias is not None and weight.dtype != bias.dtype:
        V.check_same_dtype(weight=weight, bias=bias)
    if not (type(eps) is float and eps >= 0.0):
        V.check_float("eps", eps)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
    if activation is not None and activation != "silu":
        V.check_choice("activation", activation, reference.ACTIVATIONS)


def _check_param(name: str, param, x: torch.Tensor) -> None:
    V.check_tensor(name, param, ndim=1)
    if param.shape[0] != x.shape[1]:
        V.check_shape(name, param, (x.shape[1],))
    # parameters in x's dtype, or fp32 with an fp16/bf16 x (as F.group_norm allows)
    if param.dtype != x.dtype and not (x.dtype in _HALF and param.dtype == torch.float32):
        raise TypeError(
            f"{name} must have x's dtype {x.dtype} (or float32 when x is float16/bfloat16), got {param.dtype}"
        )
    if param.device != x.device:
        V.check_same_device(x=x, **{name: param})


def group_norm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-6,
    activation: str | None = "silu",
) -> torch.Tensor:
    r"""``silu(group_norm(x))``, or plain group norm with ``activation=None``.

    .. math::
        y = \hat x\,\sigma(\hat x), \quad
        \hat x_{nc\cdot} = \frac{x_{nc\cdot} - \mu_{ng}}{\sqrt{\sigma^2_{ng} + \epsilon}}\,\gamma_c + \beta_c

    where group ``g`` holds channels ``c`` with ``c // (C / num_groups) = g`` and the statistics
    run over those channels and all spatial positions (fp32 accumulation).

    Args:
        x: ``(N, C, *)`` in fp32, fp16, bf16 (fp64 on the CPU / reference backends); NCHW,
            channels_last or strided.
        num_groups: groups ``G``; ``C % G == 0``.
        weight, bias: optional per-channel affine parameters ``(C,)``, in ``x``'s dtype (or fp32
            for an fp16/bf16 ``x``).
        eps: added to the variance.
        activation: ``"silu"`` or ``None``.

    Returns a tensor of ``x``'s shape and dtype: channels_last when ``x`` is channels_last
    (4-D and 5-D), contiguous otherwise. Differentiable in ``x``, ``weight`` and ``bias``.
    """
    check_args(x, num_groups, weight, bias, eps, activation)
    return BACKENDS.select(x.device, x.dtype).fn(x, num_groups, weight, bias, eps, activation)


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _run(x, num_groups, weight, bias, eps, activation, backend: str) -> torch.Tensor:
    """``backend``'s implementation ("triton" or "cpu"), through the custom op where
    :func:`custom_op_needed` says so, else called directly."""
    silu = activation == "silu"
    if custom_op_needed(x, weight, bias):
        return torch.ops.vqvae_fast.group_norm_silu(x, num_groups, weight, bias, float(eps), silu, backend)[0]
    if backend == "triton":
        return _triton_forward(x, num_groups, weight, bias, eps, silu)[0]
    return _native_forward(x, num_groups, weight, bias, eps, silu, stats=False)[0]


def _resolve(backend: str, x: torch.Tensor) -> str:
    """The custom ops' implementation: ``"triton"`` or ``"cpu"`` (native, runs on any device);
    ``"auto"`` (a direct ``torch.ops`` call) selects as the public function would."""
    if backend == "auto":
        try:
            backend = BACKENDS.select(x.device, x.dtype).name
        except _backend.BackendUnavailableError:
            backend = "cpu"
    return "triton" if backend == "triton" else "cpu"


# ----------------------------------------------------------------------------------------------
# cpu backend: the fastest correct PyTorch, native group norm then SiLU in place (the reference
# runs the same group norm, then two more passes for x * sigmoid(x)). Runs on any device: the
# custom op falls back to it wherever the triton backend is not chosen.


def _native_forward(x, num_groups, weight, bias, eps, silu, stats: bool = True):
    """``(y, mean, rstd)``; with ``stats=False`` the statistics are left in native's dtype."""
    N, C = x.shape[0], x.shape[1]
    layout = output_memory_format(x)
    if x.numel() == 0:  # native group norm refuses an empty spatial size
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout)
        zeros = x.new_zeros((N, num_groups), dtype=_stats_dtype(x.dtype))
        return y, zeros, zeros.clone()
    x = x.contiguous(memory_format=layout)  # native needs it (torch 2.11)
    y, mean, rstd = torch.native_group_norm(x, weight, bias, N, C, x.numel() // (N * C), num_groups, eps)
    if silu:
        F.silu(y, inplace=True)
    if not y.is_contiguous(memory_format=layout):  # odd strides
        y = y.contiguous(memory_format=layout)
    if not stats:
        return y, mean, rstd
    dtype = _stats_dtype(x.dtype)  # native keeps fp16/bf16 statistics unless params are fp32
    return y, mean.to(dtype), rstd.to(dtype)


def _native_backward(dy, x, mean, rstd, weight, bias, num_groups, eps, silu):
    N, C = x.shape[0], x.shape[1]
    HxW = math.prod(x.shape[2:])
    if x.numel() == 0:
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
        zeros = lambda p: x.new_empty((0,)) if p is None else torch.zeros_like(p)  # noqa: E731
        return dx, zeros(weight), zeros(bias)
    # the statistics in the dtype native group norm produced them (a lossless round trip)
    mixed = any(p is not None and p.dtype != x.dtype for p in (weight, bias))
    stats = mean.dtype if mixed else x.dtype
    mean, rstd = mean.to(stats), rstd.to(stats)
    # native wants x and dy contiguous in one memory format (torch 2.11 checks it)
    layout = output_memory_format(x)
    x_c, dz = x.contiguous(memory_format=layout), dy.contiguous(memory_format=layout)
    if silu:
        # recompute the pre-activation as the forward did (nothing of x's size was saved)
        z, _, _ = torch.native_group_norm(x_c, weight, bias, N, C, HxW, num_groups, eps)
        dz = torch.ops.aten.silu_backward(dz, z)
    # without a weight, native's dbias fails (mixed dtypes; any dtype on torch 2.11): summed here
    bias_by_native = bias is not None and weight is not None
    mask = [True, weight is not None, bias_by_native]
    dx, dw, db = torch.ops.aten.native_group_norm_backward(
        dz, x_c, mean, rstd, weight, N, C, HxW, num_groups, mask
    )
    if bias is not None and not bias_by_native:
        dims = [d for d in range(dz.dim()) if d != 1]
        db = dz.sum(dim=dims, dtype=torch.float32)
    dx = _fresh(dx.contiguous(memory_format=output_memory_format(x)), (x, dy))
    return dx, _param_grad(dw, weight, x), _param_grad(db, bias, x)


def _fresh(t: torch.Tensor, inputs) -> torch.Tensor:
    """``t``, cloned if it is one of ``inputs`` (a custom op must not return its inputs)."""
    return t.clone() if any(t is i for i in inputs) else t


def _param_grad(grad, param, x):
    """The gradient of an optional parameter; an empty tensor stands for ``None`` in the op."""
    if param is None:
        return x.new_empty((0,))
    return grad.to(param.dtype)


# ----------------------------------------------------------------------------------------------
# triton backend


@functools.lru_cache(maxsize=None)
def _kernels():
    """``vqvae_fast.kernels.group_norm_silu``, imported (with triton) on first use only."""
    from ..kernels import group_norm_silu as kernels

    return kernels


def _triton_forward(x, num_groups, weight, bias, eps, silu):
    return _kernels().forward(x, num_groups, weight, bias, eps, silu, memory_format=output_memory_format(x))


def _triton_backward(dy, x, mean, rstd, weight, bias, num_groups, eps, silu):
    dx, dw, db = _kernels().backward(
        dy, x, mean, rstd, weight, bias, num_groups, silu, memory_format=output_memory_format(x)
    )
    return dx, _param_grad(dw, weight, x), _param_grad(db, bias, x)


# ----------------------------------------------------------------------------------------------
# The custom ops


@torch.library.custom_op("vqvae_fast::group_norm_silu", mutates_args=())
def _group_norm_silu_op(
    x: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    silu: bool,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean, rstd)``; ``mean, rstd`` are ``(N, G)`` in fp32 (fp64 for fp64 ``x``)."""
    if _resolve(backend, x) == "triton":
        return _triton_forward(x, num_groups, weight, bias, eps, silu)
    return _native_forward(x, num_groups, weight, bias, eps, silu)


@_group_norm_silu_op.register_fake
def _(x, num_groups, weight, bias, eps, silu, backend="auto"):
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    stats = x.new_empty((x.shape[0], num_groups), dtype=_stats_dtype(x.dtype))
    return y, stats, torch.empty_like(stats)


@torch.library.custom_op("vqvae_fast::group_norm_silu_backward", mutates_args=())
def _group_norm_silu_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    num_groups: int,
    eps: float,
    silu: bool,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight, dbias)``; a parameter that is ``None`` gets an empty gradient."""
    if _resolve(backend, x) == "triton":
        return _triton_backward(dy, x, mean, rstd, weight, bias, num_groups, eps, silu)
    return _native_backward(dy, x, mean, rstd, weight, bias, num_groups, eps, silu)


@_group_norm_silu_backward_op.register_fake
def _(dy, x, mean, rstd, weight, bias, num_groups, eps, silu, backend="auto"):
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    dw = x.new_empty((0,)) if weight is None else torch.empty_like(weight)
    db = x.new_empty((0,)) if bias is None else torch.empty_like(bias)
    return dx, dw, db


def _setup_context(ctx, inputs, output):
    x, num_groups, weight, bias, eps, silu, backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.num_groups, ctx.eps, ctx.silu, ctx.backend = num_groups, eps, silu, backend
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.vqvae_fast.group_norm_silu_backward(
        dy, x, mean, rstd, weight, bias, ctx.num_groups, ctx.eps, ctx.silu, ctx.backend
    )
    return (
        dx if ctx.needs_input_grad[0] else None,
        None,
        dw if weight is not None and ctx.needs_input_grad[2] else None,
        db if bias is not None and ctx.needs_input_grad[3] else None,
        None,
        None,
        None,
    )


_group_norm_silu_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# The backends


@BACKENDS.register("triton", devices=("cuda",), dtypes=V.KERNEL_DTYPES, requires=_backend.triton_status)
def _triton_group_norm_silu(x, num_groups, weight, bias, eps, activation):
    return _run(x, num_groups, weight, bias, eps, activation, "triton")


@BACKENDS.register("cpu", devices=("cpu",), dtypes=V.FLOAT_DTYPES)
def _cpu_group_norm_silu(x, num_groups, weight, bias, eps, activation):
    """The cpu backend: :func:`_run`, except in eager autograd, where ATen's group norm and SiLU
    run under ATen's autograd (no custom-op dispatch; SiLU's backward needs only its input)."""
    if not custom_op_needed(x, weight, bias):  # eager inference: the implementation, directly
        return _native_forward(x, num_groups, weight, bias, eps, activation == "silu", stats=False)[0]
    # traced calls take the custom op; so do a bias without a weight (ATen's backward fails there:
    # mixed dtypes; any dtype on torch 2.11) and empty inputs (native group norm refuses them)
    if torch.compiler.is_compiling() or x.numel() == 0 or (bias is not None and weight is None):
        return _run(x, num_groups, weight, bias, eps, activation, "cpu")
    y = torch.group_norm(x, num_groups, weight, bias, eps, False)  # F.group_norm minus its Python checks
    if activation == "silu":
        y = F.silu(y)
    return y.contiguous(memory_format=output_memory_format(x))


@BACKENDS.register("reference", devices=None, dtypes=V.FLOAT_DTYPES)
def _reference_group_norm_silu(x, num_groups, weight, bias, eps, activation):
    if x.numel() == 0:  # F.group_norm refuses zero positions or channels: the op's own path
        return _run(x, num_groups, weight, bias, eps, activation, "cpu")
    return reference.group_norm_silu(x, num_groups, weight, bias, eps, activation)
