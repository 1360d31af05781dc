"""Adapters for taming-transformers' blocks and their copies: LDM, CogView's icetk (its ``Encoder`` /
``Decoder`` are taming's structure; its ``DownSample`` is taming's ``Downsample``),
``vqvae_fast.reference`` and the fast blocks of ``vqvae_fast.nn`` (the same structure, recognised
by class name)."""

from __future__ import annotations

import torch

from ..reference.blocks import DOWNSAMPLE_PADDING
from . import adapters
from .adapters import attention_memory, conv2d, no_dropout, norm_like, run_whole
from .layers import Conv, Norm, Pointwise, Residual, Save, Unsupported, Whole, symmetric_padding


def resnet_block(block, walk):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))``, shortcut (1x1 or 3x3) when C changes."""
    if not all(hasattr(block, a) for a in ("norm1", "conv1", "norm2", "conv2", "in_channels", "out_channels")):
        return None
    no_dropout(getattr(block, "dropout", None), "dropout")
    conv1, conv2 = conv2d(block.conv1, "conv1"), conv2d(block.conv2, "conv2")
    residual = Residual()
    if block.in_channels != block.out_channels:
        name = "conv_shortcut" if getattr(block, "use_conv_shortcut", False) else "nin_shortcut"
        shortcut = conv2d(getattr(block, name, None), name)
        residual = Residual(shortcut=shortcut, padding=symmetric_padding(shortcut))
    return [
        Save(),
        Norm(norm_like(block.norm1, "norm1"), silu=True), Conv(conv1, symmetric_padding(conv1)),
        Norm(norm_like(block.norm2, "norm2"), silu=True), Conv(conv2, symmetric_padding(conv2)),
        residual,
    ]


def attn_block(block, walk):
    fast = type(block).__module__.startswith("vqvae_fast.nn")
    return [Whole(run_whole(block), "attention", attention_memory(fast))]


def upsample(block, walk):
    if not block.with_conv:
        raise Unsupported("with_conv=False (nearest upsampling without a convolution)")
    conv = conv2d(block.conv, "conv")
    if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
        raise Unsupported("the convolution after upsampling must be 3x3 with padding 1")
    return [Conv(conv, (1, 1, 1, 1), upsample=True, owner=block)]


def downsample(block, walk):
    if not block.with_conv:
        raise Unsupported("with_conv=False (2x2 average pooling)")
    conv = conv2d(block.conv, "conv")
    if conv.padding != (0, 0):
        raise Unsupported(f"conv has padding {conv.padding}; taming pads right and bottom itself")
    symmetric_padding(conv)  # groups / dilation checks
    return [Conv(conv, DOWNSAMPLE_PADDING)]


def identity(block, walk):
    return []


def _head(module) -> list:
    """``conv_out(silu(norm_out(h)))`` (and ``tanh`` for LDM's ``tanh_out``)."""
    conv = conv2d(module.conv_out, "conv_out")
    layers = [Norm(norm_like(module.norm_out, "norm_out"), silu=True), Conv(conv, symmetric_padding(conv))]
    if getattr(module, "tanh_out", False):
        layers.append(Pointwise(torch.tanh, "tanh"))
    return layers


def _mid(module, walk) -> list:
    return walk(module.mid.block_1, "mid.block_1") + walk(module.mid.attn_1, "mid.attn_1") + \
        walk(module.mid.block_2, "mid.block_2")


def decoder(module, walk):
    if not all(hasattr(module, a) for a in ("conv_in", "mid", "up", "norm_out", "conv_out", "num_resolutions")):
        return None
    layers = [Conv(conv2d(module.conv_in, "conv_in"), symmetric_padding(module.conv_in))] + _mid(module, walk)
    for i_level in reversed(range(module.num_resolutions)):
        up = module.up[i_level]
        for i_block, block in enumerate(up.block):
            layers += walk(block, f"up.{i_level}.block.{i_block}")
            if len(up.attn) > 0:
                layers += walk(up.attn[i_block], f"up.{i_level}.attn.{i_block}")
        if i_level != 0:
            layers += walk(up.upsample, f"up.{i_level}.upsample")
    if getattr(module, "give_pre_end", False):
        return layers
    return layers + _head(module)


def encoder(module, walk):
    if not all(hasattr(module, a) for a in ("conv_in", "mid", "down", "norm_out", "conv_out", "num_resolutions")):
        return None
    layers = [Conv(conv2d(module.conv_in, "conv_in"), symmetric_padding(module.conv_in))]
    for i_level, down in enumerate(module.down):
        for i_block, block in enumerate(down.block):
            layers += walk(block, f"down.{i_level}.block.{i_block}")
            if len(down.attn) > 0:
                layers += walk(down.attn[i_block], f"down.{i_level}.attn.{i_block}")
        if i_level != module.num_resolutions - 1:
            layers += walk(down.downsample, f"down.{i_level}.downsample")
    return layers + _mid(module, walk) + _head(module)


def check_input(module, x) -> None:
    """What the container's ``forward`` checks first (vqvae_fast's models name the argument)."""
    check = getattr(module, "check_input", None)
    if check is not None:
        check(x)


def decoder_before(module, z) -> None:
    check_input(module, z)
    module.last_z_shape = z.shape  # taming's decoder records it in forward


adapters.register(("ResnetBlock",), resnet_block)
adapters.register(("AttnBlock", "MemoryEfficientAttnBlock"), attn_block)
adapters.register(("Upsample",), upsample)
adapters.register(("Downsample", "DownSample"), downsample)
adapters.register(("Identity",), identity)
adapters.register(("Decoder",), decoder, before=decoder_before, container=True)
adapters.register(("Encoder",), encoder, before=check_input, container=True)
