r"""Group-norm statistics of a tensor that only ever exists as tiles, and the normalisation with them.

Each tile contributes, per sample ``n`` and channel ``c``, its count ``m`` (positions), mean and
sum of squared deviations ``M2`` (``torch.var_mean`` over the tile in float32, the input's dtype
when wider). Tiles are merged as they come with Chan et al.'s parallel update (in float64, so
that the order and number of tiles do not show in the result)::

    m = m_a + m_b,  d = mean_b - mean_a,
    mean = mean_a + d m_b / m,   M2 = M2_a + M2_b + d^2 m_a m_b / m

and a group of ``C_g`` channels (equal counts ``m``) is the same merge over its channels::

    mean_g = (1 / C_g) sum_c mean_c,   M2_g = sum_c M2_c + m sum_c (mean_c - mean_g)^2,
    var_g = M2_g / (m C_g)           (biased, as group norm uses)

The normalisation then is ``x * scale_c + shift_c`` with ``scale_c = gamma_c / sqrt(var_g + eps)``
and ``shift_c = beta_c - mean_g scale_c``: the very formula of ATen's group norm, in float32.
Nothing here reads a value back to the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class ChannelMoments:
    """Running per-(sample, channel) count, mean and M2 of one tensor, merged tile by tile."""

    __slots__ = ("count", "mean", "m2")

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None  # (N, C) float64
        self.m2: torch.Tensor | None = None

    def add(self, tile: torch.Tensor) -> None:
        """Merge a ``(N, C, h, w)`` tile (any layout) into the running moments."""
        count = tile.shape[2] * tile.shape[3]
        if count == 0:
            return
        wide = tile.to(_stats_dtype(tile.dtype))  # no copy for float32 / float64
        var, mean = torch.var_mean(wide, dim=(2, 3), correction=0)  # (N, C)
        mean, m2 = mean.double(), var.double() * count
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * count / total)
        self.count = total

    def scale_shift(self, norm, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` of shape ``(N, C, 1, 1)`` for the group norm ``norm`` (an
        ``nn.GroupNorm``-like module), in float32 (the input's dtype when wider)."""
        if self.mean is None:
            raise RuntimeError("no tile was added before the statistics were used")
        n, channels = self.mean.shape
        groups = norm.num_groups
        mean_c = self.mean.view(n, groups, channels // groups)
        mean_g = mean_c.mean(dim=2, keepdim=True)  # (N, G, 1)
        m2_g = self.m2.view(n, groups, -1).sum(dim=2, keepdim=True) + self.count * (mean_c - mean_g).square().sum(
            dim=2, keepdim=True)
        var_g = m2_g / (self.count * (channels // groups))
        rstd = (var_g + norm.eps).rsqrt()  # (N, G, 1)
        scale = rstd.expand(n, groups, channels // groups).reshape(n, channels)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -mean_g.expand(n, groups, channels // groups).reshape(n, channels) * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        out = _stats_dtype(dtype)
        return scale.to(out).view(n, channels, 1, 1), shift.to(out).view(n, channels, 1, 1)


def normalize_into(out: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``out = x * scale + shift`` (``out`` may be a view, or ``x`` itself): computed in the
    statistics' float32 and rounded once to ``out``'s dtype, as group norm does."""
    torch.addcmul(shift, x, scale, out=out)


def silu_(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=True)
