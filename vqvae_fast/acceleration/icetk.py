"""Rules for icetk's blocks (CogView2 / CogVideo's image tokenizer) and vqvae_fast.reference.icetk.

icetk's ``ResnetBlock``, ``AttnBlock``, ``Upsample`` and ``Encoder`` are taming's under the same
names and attributes: the taming rules convert them. These rules add the blocks taming has not:
``DownSample`` (capital S), ``ResidualDownSample``, ``VectorQuantize`` / ``VectorQuantizeEMA``,
``GumbelQuantize`` (left alone) and the ``Decoder`` without ``give_pre_end``.
"""

from __future__ import annotations

import torch.nn as nn

from .. import models
from .. import nn as fast
from ..nn._adopt import adopt
from .rules import Rule, conv_problem, first_problem
from .taming import _downsample_problem, _head_problem


def _residual_downsample_problem(block) -> str | None:
    pool, conv = block.pooling_down_sampler, block.conv_down_sampler
    if getattr(pool, "with_conv", True):
        return "pooling_down_sampler is not a 2x2 average pool (with_conv=False)"
    if not getattr(conv, "with_conv", False):
        return "conv_down_sampler has no convolution (with_conv=False)"
    problem = conv_problem(getattr(conv, "conv", None), "conv_down_sampler.conv", kernel=3, stride=2, padding=0)
    if problem is None and conv.conv.in_channels != conv.conv.out_channels:
        problem = "conv_down_sampler.conv changes the channel count: the pool cannot be folded into it"
    return problem


def _quantizer_problem(block) -> str | None:
    if not isinstance(block.embed, nn.Embedding):
        return f"embed is a {type(block.embed).__name__}, not an nn.Embedding"
    if getattr(block, "pre_proj", True) and not isinstance(getattr(block, "proj", None), nn.Module):
        return "pre_proj is set but there is no proj module"
    return None


def _gumbel_problem(block) -> str | None:
    return ("GumbelQuantize samples its codes from a Gumbel-softmax over an n_embed-channel projection "
            "(randomly, in eval mode too): there is no nearest-code search for codebook_argmin to replace")


def _fast_decoder(decoder: nn.Module) -> nn.Module:
    """icetk's Decoder: taming's structure without give_pre_end / tanh_out (both off)."""
    fast_decoder = adopt(decoder, models.Decoder)
    fast_decoder.give_pre_end = False
    fast_decoder.tanh_out = False
    if not hasattr(fast_decoder, "z_channels"):
        fast_decoder.z_channels = decoder.conv_in.in_channels
    return fast_decoder


QUANTIZER_ATTRIBUTES = ("embed", "embedding_dim", "n_embed", "commitment_cost", "hidden_dim")

RULES = (
    Rule(
        "icetk DownSample", "padded_conv2d", ("DownSample",), ("with_conv",),
        convert=lambda block: fast.Downsample.from_reference(block),
        unsupported=_downsample_problem,
    ),
    Rule(
        "icetk ResidualDownSample (average pool folded into the padded conv)", "padded_conv2d",
        ("ResidualDownSample",), ("pooling_down_sampler", "conv_down_sampler"),
        convert=lambda block: fast.ResidualDownSample.from_reference(block),
        unsupported=_residual_downsample_problem,
    ),
    Rule(
        "icetk VectorQuantizeEMA", "codebook_argmin", ("VectorQuantizeEMA",),
        QUANTIZER_ATTRIBUTES + ("pre_proj", "cluster_size", "embed_avg"),
        convert=lambda block: fast.VectorQuantizeEMA.from_reference(block),
        unsupported=_quantizer_problem,
    ),
    Rule(
        "icetk VectorQuantize", "codebook_argmin", ("VectorQuantize",), QUANTIZER_ATTRIBUTES + ("proj",),
        convert=lambda block: fast.VectorQuantize.from_reference(block),
        unsupported=_quantizer_problem,
    ),
    Rule(
        "icetk GumbelQuantize", "codebook_argmin", ("GumbelQuantize",), ("proj", "embed"),
        convert=lambda block: block, unsupported=_gumbel_problem,
    ),
    Rule(
        "icetk Decoder head (norm_out + swish + conv_out)", "group_norm_silu", ("Decoder",),
        ("conv_in", "mid", "up", "norm_out", "conv_out", "num_resolutions"),
        convert=_fast_decoder, unsupported=_head_problem, descend=True,
    ),
)
