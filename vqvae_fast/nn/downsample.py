"""Fast ``Downsample``: taming's block, with the padded stride-2 conv through ``padded_conv2d``."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _validation as V
from ..ops.padded_conv2d import padded_conv2d
from ..reference.blocks import DOWNSAMPLE_PADDING


class Downsample(nn.Module):
    r"""Halve H and W: a 3x3 stride-2 conv on ``x`` zero-padded right and bottom by one, or a 2x2
    average pool when ``with_conv=False``.

    .. math::
        y_{n,o,p,q} = b_o + \sum_{c,i,j} w_{o,c,i,j}\, x_{n,c,2p+i,2q+j} \qquad (x = 0 \text{ outside})

    Same parameters and state_dict keys as taming's (and the reference's) ``Downsample``
    (``conv.weight``, ``conv.bias``); the conv runs through :func:`vqvae_fast.padded_conv2d`,
    which never builds the padded input.

    Args:
        in_channels: channels ``C`` (in and out).
        with_conv: conv (taming's ``resamp_with_conv=True``) or average pool.
        device, dtype: factory kwargs for the conv's parameters.

    Shape: ``(N, C, H, W) -> (N, C, H // 2, W // 2)`` in both modes (the conv needs H, W >= 2).

    Example::

        >>> block = Downsample(128, with_conv=True)
        >>> block(torch.randn(2, 128, 64, 64)).shape
        torch.Size([2, 128, 32, 32])
    """

    def __init__(self, in_channels: int, with_conv: bool, device=None, dtype=None):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(
                in_channels, in_channels, kernel_size=3, stride=2, padding=0, device=device, dtype=dtype
            )

    @classmethod
    def from_reference(cls, block: nn.Module) -> "Downsample":
        """A fast block that shares ``block``'s conv (the same parameter tensors, not copies)."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.with_conv = block.with_conv
        if block.with_conv:
            fast.conv = block.conv
        fast.train(block.training)
        return fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        V.check_tensor("x", x, ndim=4)
        if self.with_conv:
            V.check_matches_module("x", x, self)
            return padded_conv2d(x, self.conv.weight, self.conv.bias, stride=2, padding=DOWNSAMPLE_PADDING)
        return F.avg_pool2d(x, kernel_size=2, stride=2)

    def extra_repr(self) -> str:
        return f"with_conv={self.with_conv}"
