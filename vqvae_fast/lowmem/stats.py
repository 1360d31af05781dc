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
        count = tile.shape[1] // self.groups * tile.shape[2] * tile.shape[3]
        if count == 0:
            return
        mean, m2 = _tile_moments(tile, self.groups)
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


def _tile_moments(tile: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, group) mean and M2 of one tile, float64, ``(N, G)`` each.

    16-bit tiles are widened a quarter of the groups at a time (the float32 copy stays within
    half the tile's size). On CPU the reduction is ATen's group norm (its output unused: far
    faster there than ``torch.var_mean``); on CUDA per-channel ``var_mean`` (no layout
    constraint, no output written), the channels of a group merged like tiles are.
    """
    n, channels = tile.shape[:2]
    per_group = channels // groups
    wide_dtype = _stats_dtype(tile.dtype)
    parts = 4 if wide_dtype != tile.dtype and groups % 4 == 0 else 1
    step = groups // parts
    means, m2s = [], []
    for g0 in range(0, groups, step):
        part = tile[:, g0 * per_group:(g0 + step) * per_group].to(wide_dtype)
        if part.is_cuda:
            var_c, mean_c = torch.var_mean(part, dim=(2, 3), correction=0)  # (N, C_part)
            mean_c, var_c = mean_c.double().view(n, step, per_group), var_c.double().view(n, step, per_group)
            mean = mean_c.mean(dim=2)
            positions = part.shape[2] * part.shape[3]
            m2 = positions * (var_c.sum(dim=2) + (mean_c - mean[:, :, None]).square().sum(dim=2))
        else:
            if not part.is_contiguous() and not part.is_contiguous(memory_format=torch.channels_last):
                part = part.contiguous()
            _, mean, rstd = torch.native_group_norm(part, None, None, n, part.shape[1],
                                                    part.shape[2] * part.shape[3], step, 0.0)
            count = per_group * part.shape[2] * part.shape[3]
            mean, m2 = mean.double(), rstd.double().pow(-2) * count  # rstd = inf for a constant group
        means.append(mean)
        m2s.append(m2)
    if parts == 1:
        return means[0], m2s[0]
    return torch.cat(means, dim=1), torch.cat(m2s, dim=1)


def normalize_into(out: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``out = x * scale + shift`` (``out`` may be a view, or ``x`` itself): computed in the
    statistics' float32 and rounded once to ``out``'s dtype, as group norm does."""
    torch.addcmul(shift, x, scale, out=out)


def silu_(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=True)
