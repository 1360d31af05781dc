"""Rules for taming-transformers blocks and their copies (LDM, CogView, vqvae_fast.reference)."""

from __future__ import annotations

import torch.nn as nn

from .. import models
from .. import nn as fast
from ..nn._adopt import adopt
from .rules import Rule, conv_problem, first_problem, group_norm_problem


def _resnet_problem(block) -> str | None:
    shortcut = None
    if block.in_channels != block.out_channels:
        name = "conv_shortcut" if block.use_conv_shortcut else "nin_shortcut"
        if not isinstance(getattr(block, name, None), nn.Conv2d):
            shortcut = f"channels change but there is no {name} convolution"
    return first_problem(
        group_norm_problem(block.norm1, "norm1"),
        group_norm_problem(block.norm2, "norm2"),
        shortcut,
    )


def _attn_problem(block) -> str | None:
    problems = [group_norm_problem(block.norm, "norm")]
    for name in ("q", "k", "v", "proj_out"):
        conv = getattr(block, name)
        problems.append(conv_problem(conv, name, kernel=1, padding=0))
        if isinstance(conv, nn.Conv2d) and conv.in_channels != conv.out_channels:
            problems.append(f"{name} changes the channel count")
    return first_problem(*problems)


def _downsample_problem(block) -> str | None:
    if not block.with_conv:
        return "with_conv=False is a 2x2 average pool: there is nothing to accelerate"
    return conv_problem(getattr(block, "conv", None), "conv", kernel=3, stride=2, padding=0)


def _upsample_problem(block) -> str | None:
    if not block.with_conv:
        return "with_conv=False is a plain nearest upsampling: there is nothing to accelerate"
    return conv_problem(getattr(block, "conv", None), "conv", kernel=3, stride=1, padding=1)


def _quantizer_v1_problem(block) -> str | None:
    return ("taming's first VectorQuantizer weighs its loss terms differently and returns one-hot "
            "encodings; only VectorQuantizer2 semantics are implemented")


def _head_problem(container) -> str | None:
    return group_norm_problem(container.norm_out, "norm_out")


def _fast_encoder(encoder: nn.Module) -> nn.Module:
    fast_encoder = adopt(encoder, models.Encoder)
    fast_encoder.require_divisible_input = False  # the original accepted any size its convs do
    return fast_encoder


def _fast_decoder(decoder: nn.Module) -> nn.Module:
    fast_decoder = adopt(decoder, models.Decoder)
    if not hasattr(fast_decoder, "tanh_out"):  # taming's Decoder predates LDM's tanh_out
        fast_decoder.tanh_out = False
    if not hasattr(fast_decoder, "z_channels"):
        fast_decoder.z_channels = decoder.conv_in.in_channels
    return fast_decoder


RULES = (
    Rule(
        "taming ResnetBlock", "group_norm_silu", ("ResnetBlock",),
        ("norm1", "conv1", "norm2", "dropout", "conv2", "in_channels", "out_channels", "use_conv_shortcut"),
        convert=lambda block: fast.ResnetBlock.from_reference(block),
        unsupported=_resnet_problem,
    ),
    Rule(
        "taming AttnBlock", "spatial_attention", ("AttnBlock", "MemoryEfficientAttnBlock"),
        ("norm", "q", "k", "v", "proj_out"),
        convert=lambda block: fast.AttnBlock.from_reference(block),
        unsupported=_attn_problem,
    ),
    Rule(
        "taming Downsample", "padded_conv2d", ("Downsample",), ("with_conv",),
        convert=lambda block: fast.Downsample.from_reference(block),
        unsupported=_downsample_problem,
    ),
    Rule(
        "taming Upsample", "upsample_conv", ("Upsample",), ("with_conv",),
        convert=lambda block: fast.Upsample.from_reference(block),
        unsupported=_upsample_problem,
    ),
    Rule(
        "taming VectorQuantizer2", "codebook_argmin", ("VectorQuantizer2", "VectorQuantizer"),
        ("embedding", "n_e", "e_dim", "beta", "legacy", "remap", "sane_index_shape"),
        convert=lambda block: fast.VectorQuantizer.from_reference(block),
    ),
    Rule(
        "taming VectorQuantizer (v1)", "codebook_argmin", ("VectorQuantizer",),
        ("embedding", "n_e", "e_dim", "beta"),
        convert=lambda block: block,
        unsupported=_quantizer_v1_problem,
    ),
    Rule(
        "taming Encoder head (norm_out + swish + conv_out)", "group_norm_silu", ("Encoder",),
        ("conv_in", "down", "mid", "norm_out", "conv_out", "num_resolutions", "in_channels"),
        convert=_fast_encoder, unsupported=_head_problem, descend=True,
    ),
    Rule(
        "taming Decoder head (norm_out + swish + conv_out)", "group_norm_silu", ("Decoder",),
        ("conv_in", "mid", "up", "norm_out", "conv_out", "num_resolutions", "give_pre_end"),
        convert=_fast_decoder, unsupported=_head_problem, descend=True,
    ),
)
