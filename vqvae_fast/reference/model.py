"""taming-transformers ``Encoder`` and ``Decoder``, configured by the taming ``ddconfig`` dict.

Both take the ddconfig keys as keyword arguments and ignore keys they do not know, so
``Encoder(**ddconfig)`` works with taming, LDM and CogView configs. ``resolution`` only decides
at which levels attention is placed. The block classes are class attributes so that the fast
model (``vqvae_fast.models``) is this same structure built from fast blocks.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .. import _validation as V
from . import blocks


def _check_common(ch_mult, num_res_blocks, attn_type, use_linear_attn) -> tuple[int, ...]:
    ch_mult = tuple(ch_mult)
    if not ch_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ch_mult):
        raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult!r}")
    V.check_int("num_res_blocks", num_res_blocks, min_value=0)
    if use_linear_attn:
        raise ValueError("use_linear_attn=True (linear attention) is not supported; use attn_type='vanilla'")
    V.check_choice("attn_type", attn_type, blocks.ATTN_TYPES)
    return ch_mult


class Encoder(nn.Module):
    """Image ``(B, in_channels, H, W)`` to latent ``(B, z, H / f, W / f)``, ``f = 2 ** (levels - 1)``.

    ``z = 2 * z_channels`` when ``double_z`` (mean and log-variance of a Gaussian posterior).

    Structure (taming): ``conv_in``; per level ``i``, ``num_res_blocks`` ResnetBlocks to
    ``ch * ch_mult[i]`` channels, each followed by attention when the level's resolution is in
    ``attn_resolutions``, then a Downsample except at the last level; ``mid`` (block, attention,
    block); ``norm_out``, swish, ``conv_out``.
    """

    resnet_block = blocks.ResnetBlock
    attn_block = blocks.AttnBlock
    downsample_block = blocks.Downsample
    norm_layer = staticmethod(blocks.Normalize)
    norm_act = staticmethod(blocks.norm_act)  # (norm module, x) -> swish(norm(x))
    # Refuse inputs whose size the decoder could not restore (taming itself accepts them).
    require_divisible_input = True

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int | None = None,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
        **ignore_kwargs,
    ):
        super().__init__()
        ch_mult = _check_common(ch_mult, num_res_blocks, attn_type, use_linear_attn)
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.z_channels = z_channels
        self.double_z = double_z

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1,) + ch_mult
        self.in_ch_mult = in_ch_mult
        curr_res = resolution
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(
                    self.resnet_block(
                        in_channels=block_in, out_channels=block_out,
                        temb_channels=self.temb_ch, dropout=dropout,
                    )
                )
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(blocks.make_attn(block_in, attn_type, self.attn_block))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = self.downsample_block(block_in, resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = self.resnet_block(
            in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch, dropout=dropout
        )
        self.mid.attn_1 = blocks.make_attn(block_in, attn_type, self.attn_block)
        self.mid.block_2 = self.resnet_block(
            in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch, dropout=dropout
        )
        self.norm_out = self.norm_layer(block_in)
        self.conv_out = nn.Conv2d(
            block_in, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1, padding=1
        )

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (self.num_resolutions - 1)

    def check_input(self, x: torch.Tensor) -> None:
        V.check_tensor("x", x, ndim=4)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have {self.in_channels} channels (in_channels), got shape {tuple(x.shape)}"
            )
        f = self.downsampling_factor
        if self.require_divisible_input and (x.shape[2] % f or x.shape[3] % f):
            raise ValueError(
                f"x spatial size {tuple(x.shape[2:])} must be divisible by the downsampling "
                f"factor {f} (2 ** (len(ch_mult) - 1))"
            )

    def output_head(self, h: torch.Tensor) -> torch.Tensor:
        """``conv_out(swish(norm_out(h)))``."""
        return self.conv_out(self.norm_act(self.norm_out, h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.output_head(h)


class Decoder(nn.Module):
    """Latent ``(B, z_channels, h, w)`` to image ``(B, out_ch, h * f, w * f)``.

    Structure (taming): ``conv_in``; ``mid`` (block, attention, block); per level from the
    lowest resolution up, ``num_res_blocks + 1`` ResnetBlocks (with attention at the
    ``attn_resolutions``) then an Upsample except at the top level; ``norm_out``, swish,
    ``conv_out``, and ``tanh`` when ``tanh_out``. ``give_pre_end`` returns the features before
    ``norm_out``. ``up`` is indexed by level (``up[0]`` is the full-resolution level).
    """

    resnet_block = blocks.ResnetBlock
    attn_block = blocks.AttnBlock
    upsample_block = blocks.Upsample
    norm_layer = staticmethod(blocks.Normalize)
    norm_act = staticmethod(blocks.norm_act)  # (norm module, x) -> swish(norm(x))

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int | None = None,
        resolution: int,
        z_channels: int,
        give_pre_end: bool = False,
        tanh_out: bool = False,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
        **ignore_kwargs,
    ):
        super().__init__()
        ch_mult = _check_common(ch_mult, num_res_blocks, attn_type, use_linear_attn)
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.z_channels = z_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out

        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)

        self.mid = nn.Module()
        self.mid.block_1 = self.resnet_block(
            in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch, dropout=dropout
        )
        self.mid.attn_1 = blocks.make_attn(block_in, attn_type, self.attn_block)
        self.mid.block_2 = self.resnet_block(
            in_channels=block_in, out_channels=block_in, temb_channels=self.temb_ch, dropout=dropout
        )

        levels = []
        for i_level in reversed(range(self.num_resolutions)):
            block = nn.ModuleList()
            attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(
                    self.resnet_block(
                        in_channels=block_in, out_channels=block_out,
                        temb_channels=self.temb_ch, dropout=dropout,
                    )
                )
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(blocks.make_attn(block_in, attn_type, self.attn_block))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = self.upsample_block(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            levels.insert(0, up)  # keep up[i] = level i, as taming's checkpoints expect
        self.up = nn.ModuleList(levels)

        self.norm_out = self.norm_layer(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def check_input(self, z: torch.Tensor) -> None:
        V.check_tensor("z", z, ndim=4)
        if z.shape[1] != self.z_channels:
            raise ValueError(
                f"z must have {self.z_channels} channels (z_channels), got shape {tuple(z.shape)}"
            )

    def output_head(self, h: torch.Tensor) -> torch.Tensor:
        """``conv_out(swish(norm_out(h)))``."""
        return self.conv_out(self.norm_act(self.norm_out, h))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.check_input(z)
        self.last_z_shape = z.shape
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        if self.give_pre_end:
            return h
        h = self.output_head(h)
        return torch.tanh(h) if self.tanh_out else h
