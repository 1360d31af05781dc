"""Adapters for diffusers' autoencoder blocks (``AutoencoderKL``, ``VQModel``): their originals and
the fast blocks ``vqvae_fast.accelerate`` installs in their place (same attribute names)."""

from __future__ import annotations

import torch.nn as nn

from . import adapters
from .adapters import attention_memory, conv2d, no_dropout, norm_like, run_whole
from .layers import Conv, Norm, Residual, Save, Unsupported, Whole, symmetric_padding


def resnet_block(block, walk):
    """``(shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))) / output_scale_factor``."""
    if getattr(block, "time_emb_proj", None) is not None:
        raise Unsupported("it takes a timestep embedding (time_emb_proj)")
    if getattr(block, "upsample", None) is not None or getattr(block, "downsample", None) is not None:
        raise Unsupported("it resamples inside the block")
    activation = getattr(block, "nonlinearity", None)
    if activation is not None and not isinstance(activation, nn.SiLU):
        raise Unsupported(f"its activation is {type(activation).__name__}, not SiLU")
    no_dropout(getattr(block, "dropout", None), "dropout")
    conv1, conv2 = conv2d(block.conv1, "conv1"), conv2d(block.conv2, "conv2")
    shortcut = getattr(block, "conv_shortcut", None)
    if shortcut is not None:
        shortcut = conv2d(shortcut, "conv_shortcut")
    residual = Residual(shortcut=shortcut, scale=float(getattr(block, "output_scale_factor", 1.0)),
                        padding=(0, 0, 0, 0) if shortcut is None else symmetric_padding(shortcut))
    return [
        Save(),
        Norm(norm_like(block.norm1, "norm1"), silu=True), Conv(conv1, symmetric_padding(conv1)),
        Norm(norm_like(block.norm2, "norm2"), silu=True), Conv(conv2, symmetric_padding(conv2)),
        residual,
    ]


def attention(block, walk):
    if getattr(block, "spatial_norm", None) is not None:
        raise Unsupported("it uses a spatial norm (needs the latents)")
    if getattr(block, "is_cross_attention", False):
        raise Unsupported("it is a cross-attention")
    fast = type(block).__module__.startswith("vqvae_fast.")
    return [Whole(run_whole(block), "attention", attention_memory(fast))]


def _conv_of(block) -> nn.Conv2d:
    return conv2d(getattr(block, "conv", None) or getattr(block, "Conv2d_0", None), "conv")


def upsample(block, walk):
    if not block.use_conv or getattr(block, "use_conv_transpose", False) or not getattr(block, "interpolate", True):
        raise Unsupported("only nearest upsampling followed by a 3x3 convolution is supported")
    if getattr(block, "norm", None) is not None:
        raise Unsupported("it normalises before upsampling")
    conv = _conv_of(block)
    if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
        raise Unsupported("the convolution after upsampling must be 3x3 with padding 1")
    return [Conv(conv, (1, 1, 1, 1), upsample=True, owner=block)]


def downsample(block, walk):
    if not block.use_conv:
        raise Unsupported("use_conv=False (average pooling)")
    if getattr(block, "norm", None) is not None:
        raise Unsupported("it normalises before the convolution")
    conv = _conv_of(block)
    return [Conv(conv, (0, 1, 0, 1) if block.padding == 0 else symmetric_padding(conv))]


def mid_block(block, walk):
    layers = walk(block.resnets[0], "resnets.0")
    for i, (attn, resnet) in enumerate(zip(block.attentions, block.resnets[1:])):
        if attn is not None:
            layers += walk(attn, f"attentions.{i}")
        layers += walk(resnet, f"resnets.{i + 1}")
    return layers


def resampling_block(block, walk):
    """Up/down decoder blocks: resnets (each followed by its attention in the Attn* variants),
    then the up- or downsamplers."""
    attentions = getattr(block, "attentions", None)
    layers = []
    for i, resnet in enumerate(block.resnets):
        layers += walk(resnet, f"resnets.{i}")
        if attentions is not None:
            layers += walk(attentions[i], f"attentions.{i}")
    for name in ("upsamplers", "downsamplers"):
        for i, sampler in enumerate(getattr(block, name, None) or ()):
            layers += walk(sampler, f"{name}.{i}")
    return layers


def _head(module) -> list:
    """``conv_out(conv_act(conv_norm_out(h)))``; after ``accelerate`` the norm is a fused
    ``GroupNormSiLU`` and ``conv_act`` an identity."""
    norm, act = module.conv_norm_out, module.conv_act
    fused = getattr(norm, "activation", None) == "silu"
    if isinstance(act, nn.SiLU) and not fused:
        silu = True
    elif isinstance(act, nn.Identity):
        silu = fused
    else:
        raise Unsupported(f"conv_act is {type(act).__name__} after {type(norm).__name__}")
    conv = conv2d(module.conv_out, "conv_out")
    return [Norm(norm_like(norm, "conv_norm_out"), silu=silu), Conv(conv, symmetric_padding(conv))]


def decoder(module, walk):
    if not all(hasattr(module, a) for a in ("conv_in", "mid_block", "up_blocks", "conv_norm_out", "conv_out")):
        return None
    layers = [Conv(conv2d(module.conv_in, "conv_in"), symmetric_padding(module.conv_in))]
    layers += walk(module.mid_block, "mid_block")
    for i, block in enumerate(module.up_blocks):
        layers += walk(block, f"up_blocks.{i}")
    return layers + _head(module)


def encoder(module, walk):
    if not all(hasattr(module, a) for a in ("conv_in", "mid_block", "down_blocks", "conv_norm_out", "conv_out")):
        return None
    layers = [Conv(conv2d(module.conv_in, "conv_in"), symmetric_padding(module.conv_in))]
    for i, block in enumerate(module.down_blocks):
        layers += walk(block, f"down_blocks.{i}")
    return layers + walk(module.mid_block, "mid_block") + _head(module)


adapters.register(("ResnetBlock2D",), resnet_block)
adapters.register(("Attention", "VAEAttention"), attention)
adapters.register(("Upsample2D",), upsample)
adapters.register(("Downsample2D",), downsample)
adapters.register(("UNetMidBlock2D",), mid_block)
adapters.register(("UpDecoderBlock2D", "AttnUpDecoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                  resampling_block)
adapters.register(("Decoder",), decoder, container=True)
adapters.register(("Encoder",), encoder, container=True)
