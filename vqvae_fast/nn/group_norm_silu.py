"""``GroupNormSiLU``: ``nn.GroupNorm`` followed by SiLU, as one fused op."""

from __future__ import annotations

import torch
from torch import nn

from .. import _validation as V
from ..ops.group_norm_silu import group_norm_silu
from ..reference import ops as reference


class GroupNormSiLU(nn.Module):
    r"""Group normalisation followed by SiLU, computed by :func:`vqvae_fast.group_norm_silu`.

    .. math::
        z = \frac{x - \mathrm{E}_g[x]}{\sqrt{\mathrm{Var}_g[x] + \epsilon}} \gamma_c + \beta_c,
        \qquad y = z \cdot \sigma(z)

    The mean and biased variance run over the ``num_channels / num_groups`` channels of each
    group and all spatial positions, per sample. With ``activation=None`` it is plain group norm.

    It takes exactly :class:`torch.nn.GroupNorm`'s arguments and has its parameters
    (``weight``, ``bias``) and state_dict keys, so it loads a ``GroupNorm``'s state; the taming
    ``Normalize`` + ``nonlinearity`` pair becomes one module.

    Args:
        num_groups: number of groups ``G``; must divide ``num_channels``.
        num_channels: channels ``C`` expected in the input.
        eps: added to the variance. Default: ``1e-5`` (as ``nn.GroupNorm``; taming uses ``1e-6``).
        affine: learnable per-channel ``weight`` (ones) and ``bias`` (zeros). Default: ``True``.
        device, dtype: factory arguments for the parameters.
        activation: ``"silu"`` (default) or ``None``.

    Shape:
        - Input: ``(N, C, *)``, NCHW or channels_last.
        - Output: same shape, dtype and memory format as the input.

    Examples::

        >>> norm = GroupNormSiLU(32, 128, eps=1e-6)
        >>> y = norm(torch.randn(2, 128, 16, 16))
        >>> fused = GroupNormSiLU.from_group_norm(nn.GroupNorm(32, 128))  # shares its parameters
    """

    __constants__ = ["num_groups", "num_channels", "eps", "affine", "activation"]

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        activation: str | None = "silu",
    ) -> None:
        super().__init__()
        self._set_config(num_groups, num_channels, eps, affine, activation)
        if affine:
            factory = {"device": device, "dtype": dtype}
            self.weight = nn.Parameter(torch.empty(num_channels, **factory))
            self.bias = nn.Parameter(torch.empty(num_channels, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def _set_config(self, num_groups, num_channels, eps, affine, activation) -> None:
        V.check_int("num_groups", num_groups, min_value=1)
        V.check_int("num_channels", num_channels, min_value=1)
        V.check_divisible("num_channels", num_channels, "num_groups", num_groups)
        V.check_float("eps", eps)
        V.check_choice("activation", activation, reference.ACTIVATIONS)
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = float(eps)
        self.affine = bool(affine)
        self.activation = activation

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, activation: str | None = "silu") -> "GroupNormSiLU":
        """A ``GroupNormSiLU`` with ``norm``'s configuration that shares its ``weight`` and
        ``bias`` Parameter objects (no copy): training either trains both."""
        if not isinstance(norm, nn.GroupNorm):
            raise TypeError(f"norm must be a torch.nn.GroupNorm, got {type(norm).__name__}")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._set_config(norm.num_groups, norm.num_channels, norm.eps, norm.affine, activation)
        module.register_parameter("weight", norm.weight)  # the same Parameter objects (or None)
        module.register_parameter("bias", norm.bias)
        return module

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        V.check_tensor("x", x, min_ndim=2)
        if x.shape[1] != self.num_channels:
            raise ValueError(
                f"x must have {self.num_channels} channels (dim 1), got shape {tuple(x.shape)}"
            )
        return group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps, self.activation)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"activation={self.activation!r}"
        )
