r"""Group-norm statistics of a tensor that only ever exists as tiles, and the normalisation with them.

Each tile contributes, per sample ``n`` and group ``g``, its count ``m`` (channels of the group
times positions), mean and sum of squared deviations ``M2`` (ATen's group-norm reduction: a
Welford pass in float32, or the input's dtype when wider; 16-bit tiles are widened first). Tiles
are merged as they come with Chan et al.'s parallel update, in float64 so that the order and
the number of tiles do not show in the result::

    m = m_a + m_b,  d = mean_b - mean_a,
    mean = mean_a + d m_b / m,   M2 = M2_a + M2_b + d^2 m_a m_b / m,   var = M2 / m

(biased, as group norm uses). The normalisation then is ``x * scale_c + shift_c`` with
``scale_c = gamma_c / sqrt(var_g + eps)`` and ``shift_c = beta_c - mean_g scale_c``: the very
formula of ATen's group norm, in float32. Nothing here reads a value back to the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class GroupMoments:
    """Running per-(sample, group) count, mean and M2 of one tensor, merged tile by tile."""

    __slots__ = ("groups", "count", "mean", "m2")

    def __init__(self, groups: int) -> None:
        self.groups = groups
        self.count = 0
        self.mean: torch.Tensor | None = None  # (N, G) float64
        self.m2: torch.Tensor | None = None

    def add(self, tile: torch.Tensor) -> None:
        """Merge a ``(N, C, h, w)`` tile (NCHW or channels-last) into the running moments."""
        n, channels, height, width = tile.shape
        count = channels // self.groups * height * width
        if count == 0:
            return
        wide = tile.to(_stats_dtype(tile.dtype))  # no copy for float32 / float64
        if not wide.is_contiguous() and (wide.is_cuda or not wide.is_contiguous(memory_format=torch.channels_last)):
            wide = wide.contiguous()
        # ATen's group-norm reduction (its normalised output is not used): far faster on CPU
        # than torch.var_mean, and the same Welford statistics the plain group norm computes
        _, mean, rstd = torch.native_group_norm(wide, None, None, n, channels, height * width, self.groups, 0.0)
        mean, m2 = mean.double(), rstd.double().pow(-2) * count  # rstd = inf for a constant group
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
        ``nn.GroupNorm``-like module with this many groups), in float32 (or wider)."""
        if self.mean is None:
            raise RuntimeError("no tile was added before the statistics were used")
        n, groups = self.mean.shape
        channels = norm.num_channels if hasattr(norm, "num_channels") else norm.weight.shape[0]
        per_group = channels // groups
        rstd = (self.m2 / self.count + norm.eps).rsqrt()  # (N, G)
        scale = rstd[:, :, None].expand(n, groups, per_group).reshape(n, channels)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -self.mean[:, :, None].expand(n, groups, per_group).reshape(n, channels) * scale
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
