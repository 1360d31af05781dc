r"""Fast ``ResidualDownSample`` (icetk): the average pool folded into the stride-2 conv.

icetk's block sums a 2x2 average pool and a 3x3 stride-2 conv of the same input, both ``/2``.
Output ``(p, q)`` of the conv reads input rows ``2p .. 2p+2`` and columns ``2q .. 2q+2``; the
pool reads rows ``2p, 2p+1`` and columns ``2q, 2q+1``: the top-left 2x2 taps of that window.
So the sum is one conv whose weight is the conv's plus ``1/4`` on the diagonal (``o = c``) at
those four taps:

.. math::
    W'_{o,c,i,j} = W_{o,c,i,j} + \tfrac14\,[o = c]\,[i < 2]\,[j < 2]

The pool never reads the zero row and column the conv pads on the right and bottom (its windows
end at ``2p + 1 <= H - 1``), so the folded conv is exact for every ``H``, ``W``: one
``padded_conv2d`` on the unpadded input, no pooled temporary, no separate sum.
"""

from __future__ import annotations

import torch

from .. import _validation as V
from ..ops.padded_conv2d import padded_conv2d
from ..reference.blocks import DOWNSAMPLE_PADDING
from ..reference.icetk import blocks as icetk_blocks
from ._adopt import adopt
from ._derived import DerivedWeightsMixin, derived


def fold_average_pool(weight: torch.Tensor) -> torch.Tensor:
    """``(C, C, 3, 3)`` conv weight -> the weight of ``conv + avg_pool_2x2`` (module docstring).

    Summed in at least fp32 and rounded once to ``weight``'s dtype. Differentiable in ``weight``
    (the gradient passes unchanged), so training reaches the original parameter.
    """
    channels = weight.shape[0]
    wide = torch.promote_types(weight.dtype, torch.float32)
    pool = torch.zeros((channels, 3, 3), dtype=wide, device=weight.device)
    pool[:, :2, :2] = 0.25
    index = torch.arange(channels, device=weight.device)
    folded = weight.to(wide).index_put((index, index), pool, accumulate=True)  # W[c, c] += pool
    return folded.to(weight.dtype)


class ResidualDownSample(DerivedWeightsMixin, icetk_blocks.ResidualDownSample):
    """icetk's ResidualDownSample (same argument, submodules and state_dict keys) as one conv.

    ``avg_pool_2x2(x) + conv_s2(pad(x))`` computed as a single :func:`vqvae_fast.padded_conv2d`
    with the pool folded into the weight (:func:`fold_average_pool`; cached while
    ``conv_down_sampler.conv.weight`` is unchanged, recomputed with autograd in training). The
    submodules stay for the state_dict; their forwards are not called.
    Shape: ``(N, C, H, W) -> (N, C, H // 2, W // 2)`` (``H, W >= 2``), memory format kept.
    """

    @classmethod
    def from_reference(cls, block: torch.nn.Module) -> "ResidualDownSample":
        """A fast block sharing ``block``'s submodules and parameters (icetk's or the reference's)."""
        return adopt(block, cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv_down_sampler.conv
        V.check_tensor("x", x, ndim=4)
        if x.shape[1] != conv.in_channels:
            raise ValueError(f"x must have {conv.in_channels} channels, got shape {tuple(x.shape)}")
        V.check_matches_module("x", x, conv)
        weight = derived(self, "pool_folded_weight", fold_average_pool, conv.weight)
        return padded_conv2d(x, weight, conv.bias, stride=2, padding=DOWNSAMPLE_PADDING)
