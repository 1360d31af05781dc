"""``group_norm_silu``: group norm followed by SiLU (or by nothing), one pass over memory."""

from __future__ import annotations

import torch

from .. import _validation as V
from .._backend import op_backends
from ..reference import ops as reference

BACKENDS = op_backends("group_norm_silu")
BACKENDS.register("reference", devices=None, dtypes=V.FLOAT_DTYPES)(reference.group_norm_silu)


def check_args(x, num_groups, weight, bias, eps, activation) -> None:
    V.check_tensor("x", x, min_ndim=2)
    V.check_int("num_groups", num_groups, min_value=1)
    V.check_divisible("x.shape[1] (channels)", x.shape[1], "num_groups", num_groups)
    for name, param in (("weight", weight), ("bias", bias)):
        V.check_optional_tensor(name, param, ndim=1)
        if param is not None:
            V.check_shape(name, param, (x.shape[1],))
    V.check_same_device(x=x, weight=weight, bias=bias)
    V.check_float("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    V.check_choice("activation", activation, reference.ACTIVATIONS)


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
        weight, bias: optional per-channel affine parameters ``(C,)``.
        eps: added to the variance.
        activation: ``"silu"`` or ``None``.

    Returns a tensor of ``x``'s shape, dtype and memory format.
    """
    check_args(x, num_groups, weight, bias, eps, activation)
    backend = BACKENDS.select(x.device, x.dtype)
    return backend.fn(x, num_groups, weight, bias, eps, activation)
