"""Building blocks of the taming-transformers VQGAN, in plain PyTorch.

Parameter names, shapes and defaults are taming's, so a taming state_dict loads unchanged.
Each block's forward goes through the reference functional ops (``reference.ops``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops

GROUPS = 32
EPS = 1e-6
DOWNSAMPLE_PADDING = (0, 1, 0, 1)  # (left, right, top, bottom): taming pads right and bottom


def Normalize(in_channels: int, num_groups: int = GROUPS) -> nn.GroupNorm:
    """taming's normalisation layer: ``GroupNorm(32, C, eps=1e-6, affine=True)``."""
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=EPS, affine=True)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """swish / SiLU, written as taming writes it: ``x * sigmoid(x)``."""
    return x * torch.sigmoid(x)


def norm_act(norm: nn.GroupNorm, x: torch.Tensor, activation: str | None = "silu") -> torch.Tensor:
    """Apply a GroupNorm module's parameters (and SiLU) through the reference op."""
    return ops.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps, activation)


class ResnetBlock(nn.Module):
    """``x + conv2(dropout(swish(norm2(conv1(swish(norm1(x)))))))``, shortcut when C changes.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (default ``in_channels``).
        conv_shortcut: use a 3x3 ``conv_shortcut`` instead of the 1x1 ``nin_shortcut``.
        dropout: dropout probability between the two convolutions.
        temb_channels: width of the timestep embedding; 0 for none (the autoencoder uses 0).
    Shape: ``(N, in_channels, H, W) -> (N, out_channels, H, W)``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: int = 512,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut

        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == self.out_channels:
            return x
        if self.use_conv_shortcut:
            return self.conv_shortcut(x)
        return self.nin_shortcut(x)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(norm_act(self.norm1, x))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(norm_act(self.norm2, h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over spatial positions with a residual connection.

    ``x + proj_out(attention(q(h), k(h), v(h)))`` with ``h = norm(x)``; ``q``, ``k``, ``v`` and
    ``proj_out`` are 1x1 convolutions (weights ``[C, C, 1, 1]``), head size ``C``.
    Shape: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = norm_act(self.norm, x, activation=None)
        h = ops.spatial_attention(self.q(h), self.k(h), self.v(h))  # (N, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve H and W: pad right/bottom by one then 3x3 conv with stride 2, or 2x2 average pool.

    Shape: ``(N, C, H, W) -> (N, C, H // 2, W // 2)`` (the pad makes odd sizes round down too).
    """

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return ops.padded_conv2d(
                x, self.conv.weight, self.conv.bias, stride=2, padding=DOWNSAMPLE_PADDING
            )
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    """Double H and W by nearest interpolation, then a 3x3 conv when ``with_conv``."""

    def __init__(self, in_channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


ATTN_TYPES = ("vanilla", "none")


def make_attn(in_channels: int, attn_type: str = "vanilla", attn_cls: type = AttnBlock) -> nn.Module:
    """The attention block for ``attn_type``: ``"vanilla"`` or ``"none"`` (identity)."""
    if attn_type == "vanilla":
        return attn_cls(in_channels)
    if attn_type == "none":
        return nn.Identity()
    raise ValueError(f"attn_type must be one of {list(ATTN_TYPES)}, got {attn_type!r}")
