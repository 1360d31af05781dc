"""Fast ``Upsample``: nearest x2 then 3x3 conv, as one stride-2 transposed convolution.

Nearest upsampling repeats each input pixel in a 2x2 patch, so a 3x3 conv over the upsampled
image sees, per output phase, only 2x2 distinct input pixels. Along one axis, the taps
``w0, w1, w2`` of the conv fold into a 4-tap kernel ``(w2, w1 + w2, w0 + w1, w0)`` of a
transposed convolution with stride 2 and padding 1 (output ``2H``). In 2-D the folding is
``W'[o, c] = A w[o, c] Aᵀ`` with ``A`` below. This needs 4/9 of the multiply-adds and never
materialises the 4x larger upsampled tensor.

The fold pays off where the transposed convolution is a tuned kernel (cuDNN). On CPU, ATen
runs transposed convolutions through im2col + GEMM, slower than interpolating and running its
oneDNN convolution, so CPU tensors keep the two-step form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validation as V
from ..reference import blocks
from ._adopt import adopt
from ._derived import DerivedWeightsMixin, derived

# Rows: the 4 taps of the transposed kernel; columns: the 3 taps of the original conv.
_FOLD = torch.tensor(
    [[0.0, 0.0, 1.0],
     [0.0, 1.0, 1.0],
     [1.0, 1.0, 0.0],
     [1.0, 0.0, 0.0]]
)


def fold_upsample_weight(weight: torch.Tensor) -> torch.Tensor:
    """3x3 conv weight ``(C_out, C_in, 3, 3)`` -> transposed-conv weight ``(C_in, C_out, 4, 4)``.

    Summed in at least fp32 (then cast back) so the folded taps carry no extra rounding in fp16/bf16.
    """
    wide = torch.promote_types(weight.dtype, torch.float32)
    fold = _FOLD.to(device=weight.device, dtype=wide)
    folded = torch.einsum("ka,ocab,lb->cokl", fold, weight.to(wide), fold)  # (C_in, C_out, 4, 4)
    return folded.to(weight.dtype)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)``.

    Shapes: ``x`` ``(N, C_in, H, W)``, ``weight`` ``(C_out, C_in, 3, 3)`` -> ``(N, C_out, 2H, 2W)``.
    Always the folded transposed convolution (see :func:`upsample_then_conv` for the choice).
    """
    return F.conv_transpose2d(x, fold_upsample_weight(weight), bias, stride=2, padding=1)


def upsample_then_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, module: torch.nn.Module | None = None
) -> torch.Tensor:
    """The same result by the faster route for ``x``'s device: folded on CUDA, two steps elsewhere.

    With ``module`` (the block owning ``weight``), the folded weight is cached on it while
    ``weight`` is unchanged (:mod:`._derived`; recomputed with autograd in training)."""
    if x.is_cuda:
        folded = fold_upsample_weight(weight) if module is None else derived(module, "folded", fold_upsample_weight, weight)
        return F.conv_transpose2d(x, folded, bias, stride=2, padding=1)
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


class Upsample(DerivedWeightsMixin, blocks.Upsample):
    """taming's Upsample (same arguments and state_dict keys) without the upsampled intermediate.

    On CUDA the folded transposed-convolution weight is cached while ``conv.weight`` is unchanged."""

    @classmethod
    def from_reference(cls, block: torch.nn.Module) -> "Upsample":
        """A fast block sharing ``block``'s ``conv`` (taming, LDM or reference ``Upsample``)."""
        return adopt(block, cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        V.check_tensor("x", x, ndim=4)
        if self.with_conv:
            channels = self.conv.weight.shape[1]
            if x.shape[1] != channels:
                raise ValueError(f"x must have {channels} channels, got shape {tuple(x.shape)}")
            V.check_matches_module("x", x, self)
        if not self.with_conv:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return upsample_then_conv(x, self.conv.weight, self.conv.bias, self)
