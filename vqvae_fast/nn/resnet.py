"""Fast ``ResnetBlock``: the reference block with both norms fused with their SiLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validation as V
from .. import ops
from ..reference import blocks
from ._adopt import adopt


def norm_act(norm, x: torch.Tensor, activation: str | None = "silu") -> torch.Tensor:
    """``silu(norm(x))`` (or ``norm(x)``) for an ``nn.GroupNorm``-like module, in one fused op."""
    return ops.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps, activation)


class ResnetBlock(blocks.ResnetBlock):
    """taming's ResnetBlock (same arguments, submodules and state_dict keys) on fast ops.

    ``x + conv2(dropout(silu(norm2(conv1(silu(norm1(x)))))))`` with each ``silu(norm(.))`` one
    ``vqvae_fast.group_norm_silu`` call (no normalised intermediate in memory) and the residual
    added into the output of ``conv2`` in place.
    Shape: ``(N, in_channels, H, W) -> (N, out_channels, H, W)``, memory format kept.
    """

    @classmethod
    def from_reference(cls, block: torch.nn.Module) -> "ResnetBlock":
        """A fast block sharing ``block``'s submodules and parameters (taming, LDM or reference)."""
        return adopt(block, cls)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        V.check_tensor("x", x, ndim=4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels, got shape {tuple(x.shape)}")
        V.check_matches_module("x", x, self)
        if temb is not None and not hasattr(self, "temb_proj"):
            raise ValueError("temb was given but this block has no temb_proj (built with temb_channels=0)")
        h = self.conv1(norm_act(self.norm1, x))
        if temb is not None:
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(norm_act(self.norm2, h)))
        shortcut = self.shortcut(x)
        if h.dtype != shortcut.dtype and torch.promote_types(h.dtype, shortcut.dtype) != h.dtype:
            # fp32 input, bf16 convs (autocast): the sum in fp32, not in place
            return shortcut + h
        # conv2's output is not saved for its backward, so adding in place is autograd-safe
        return h.add_(shortcut)
