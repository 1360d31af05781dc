"""icetk's VQ-VAE blocks (CogView2 / CogVideo's image tokenizer), in plain PyTorch.

icetk's ``Encoder`` and ``Decoder`` have taming's structure and state_dict keys under other
constructor names (``channels``, ``channels_mult``, ``resample_with_conv``, ``out_channels``),
without ``double_z``, ``give_pre_end`` or ``tanh_out``, and accept any input size. Its
``ResnetBlock`` has no timestep embedding; ``DownSample`` (capital S) is taming's ``Downsample``;
``ResidualDownSample`` sums the two kinds of ``DownSample``. Constructor arguments, their order
and defaults are icetk 0.0.7's, so icetk configs (``{"target": ..., "params": ...}``) build these
classes unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .. import blocks, model
from ..blocks import AttnBlock, Normalize, Upsample, nonlinearity

__all__ = [
    "AttnBlock", "Decoder", "DownSample", "Encoder", "Normalize", "ResidualDownSample", "ResnetBlock",
    "Upsample", "nonlinearity",
]


class ResnetBlock(blocks.ResnetBlock):
    """icetk's ResnetBlock: taming's without the timestep embedding, icetk's argument order.

    ``x + conv2(dropout(swish(norm2(conv1(swish(norm1(x)))))))``, with a 1x1 ``nin_shortcut``
    (or a 3x3 ``conv_shortcut``) when the channel count changes.

    Args:
        in_channels, dropout, out_channels, conv_shortcut: as icetk's.
        temb_channels: must be 0 (icetk's blocks have none); accepted so that the shared
            Encoder / Decoder structure can build either kind of block.
    """

    def __init__(self, in_channels: int, dropout: float, out_channels: int | None = None,
                 conv_shortcut: bool = False, *, temb_channels: int = 0):
        if temb_channels != 0:
            raise ValueError(f"temb_channels must be 0 (icetk's ResnetBlock has no timestep embedding), "
                             f"got {temb_channels}")
        super().__init__(in_channels=in_channels, out_channels=out_channels, conv_shortcut=conv_shortcut,
                         dropout=dropout, temb_channels=0)


class DownSample(blocks.Downsample):
    """icetk's ``DownSample``: a 3x3 stride-2 conv on ``x`` zero-padded right and bottom by one
    (``with_conv``), or a 2x2 average pool. Shape: ``(N, C, H, W) -> (N, C, H // 2, W // 2)``."""


class ResidualDownSample(nn.Module):
    r"""Halve H and W twice over and sum: ``avg_pool_2x2(x) + conv_s2(pad(x))``.

    .. math::
        y_{n,c,p,q} = \tfrac14 \sum_{i,j \in \{0,1\}} x_{n,c,2p+i,2q+j}
                      + b_c + \sum_{c',i,j} w_{c,c',i,j}\, x_{n,c',2p+i,2q+j}

    (``x = 0`` past the right and bottom edges). Submodules ``pooling_down_sampler``
    (``DownSample(with_conv=False)``) and ``conv_down_sampler`` (``DownSample(with_conv=True)``),
    as icetk's; the state_dict holds ``conv_down_sampler.conv.{weight,bias}``.
    Shape: ``(N, C, H, W) -> (N, C, H // 2, W // 2)``.
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.pooling_down_sampler = DownSample(in_channels, with_conv=False)
        self.conv_down_sampler = DownSample(in_channels, with_conv=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooling_down_sampler(x) + self.conv_down_sampler(x)


class Encoder(model.Encoder):
    """icetk's Encoder: image ``(B, in_channels, H, W)`` to ``(B, z_channels, H / f, W / f)``,
    ``f = 2 ** (len(channels_mult) - 1)``; any ``H``, ``W`` (odd sizes round down at each level).

    The structure of :class:`vqvae_fast.reference.Encoder` with icetk's arguments (in icetk's
    order and with its defaults): ``channels`` is taming's ``ch``, ``channels_mult`` its
    ``ch_mult``, ``resample_with_conv`` its ``resamp_with_conv``; ``out_channels`` is stored
    but unused, as in icetk; there is no ``double_z``.
    """

    resnet_block = ResnetBlock
    downsample_block = DownSample
    require_divisible_input = False  # icetk encodes any size

    def __init__(self, in_channels: int = 3, out_channels: int = 3, z_channels: int = 256, channels: int = 128,
                 num_res_blocks: int = 0, resolution: int = 256, attn_resolutions: Sequence[int] = (16,),
                 resample_with_conv: bool = True, channels_mult: Sequence[int] = (1, 2, 4, 8), dropout: float = 0.0):
        super().__init__(ch=channels, out_ch=out_channels, ch_mult=channels_mult, num_res_blocks=num_res_blocks,
                         attn_resolutions=attn_resolutions, dropout=dropout, resamp_with_conv=resample_with_conv,
                         in_channels=in_channels, resolution=resolution, z_channels=z_channels, double_z=False)
        self.out_channels = out_channels
        self.channels = channels


class Decoder(model.Decoder):
    """icetk's Decoder: ``(B, z_channels, h, w)`` to ``(B, out_channels, h * f, w * f)``.

    The structure of :class:`vqvae_fast.reference.Decoder` with icetk's arguments (note that
    icetk's Decoder takes ``channels_mult`` before ``resample_with_conv``, its Encoder after);
    no ``give_pre_end``, no ``tanh_out``.
    """

    resnet_block = ResnetBlock

    def __init__(self, in_channels: int = 3, out_channels: int = 3, z_channels: int = 256, channels: int = 128,
                 num_res_blocks: int = 0, resolution: int = 256, attn_resolutions: Sequence[int] = (16,),
                 channels_mult: Sequence[int] = (1, 2, 4, 8), resample_with_conv: bool = True, dropout: float = 0.0):
        super().__init__(ch=channels, out_ch=out_channels, ch_mult=channels_mult, num_res_blocks=num_res_blocks,
                         attn_resolutions=attn_resolutions, dropout=dropout, resamp_with_conv=resample_with_conv,
                         in_channels=in_channels, resolution=resolution, z_channels=z_channels)
        self.out_channels = out_channels
        self.channels = channels

    def get_last_layer(self) -> torch.Tensor:
        return self.conv_out.weight
