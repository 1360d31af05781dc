"""Rules and fast blocks for diffusers' autoencoders (``VQModel``, ``AutoencoderKL``).

diffusers names the taming weights differently (``ResnetBlock2D``, ``Attention`` with Linear
``to_q``/``to_k``/``to_v``, ``Downsample2D``, ``Upsample2D``, ``conv_norm_out`` + ``conv_act``);
the fast blocks here keep those names and compute what diffusers computes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import nn as fast
from .. import ops
from ..nn._adopt import adopt
from ..nn._derived import DerivedWeightsMixin
from ..nn.attention import projection_weights
from ..nn.resnet import norm_act
from ..nn.upsample import upsample_then_conv
from .rules import Rule, conv_problem, first_problem, group_norm_problem


class ResnetBlock2D(nn.Module):
    """diffusers' ``ResnetBlock2D`` without a timestep embedding, each norm fused with its SiLU.

    ``(shortcut(x) + conv2(dropout(silu(norm2(conv1(silu(norm1(x))))))) / output_scale_factor``.
    """

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        h = self.conv1(norm_act(self.norm1, input_tensor))
        if temb is not None:  # diffusers adds a raw temb when the block has no projection
            h = h + temb
        h = self.conv2(self.dropout(norm_act(self.norm2, h)))
        shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        out = shortcut + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class VAEAttention(DerivedWeightsMixin, nn.Module):
    """diffusers' single-head VAE ``Attention`` (group norm, Linear q/k/v/out, residual) on fast ops.

    The Linear weights ``(C, C)`` act on channels, so on ``(B, C, H, W)`` they are 1x1
    convolutions: q, k and v come from one convolution over the concatenated weights and are read
    by the attention kernel as channel slices, with no transposes. In inference the output
    projection is folded into the value projection, and the weights are cached while unchanged
    (:func:`vqvae_fast.nn.attention.projection_weights`).
    """

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.dim() != 4:
            raise ValueError(
                "the accelerated VAE attention takes only (B, C, H, W) self-attention input "
                "without encoder_hidden_states or attention_mask"
            )
        residual = hidden_states
        gn = self.group_norm
        h = ops.group_norm_silu(hidden_states, gn.num_groups, gn.weight, gn.bias, gn.eps, activation=None)
        channels = h.shape[1]
        q, k, v, proj = self.to_q, self.to_k, self.to_v, self.to_out[0]
        weight, bias, w_out, b_out = projection_weights(
            self, q.weight, q.bias, k.weight, k.bias, v.weight, v.bias, proj.weight, proj.bias
        )
        qkv = F.conv2d(h, weight[:, :, None, None], bias)  # (B, 3C, H, W)
        q, k, v = qkv.split(channels, dim=1)
        out = ops.spatial_attention(q, k, v, scale=channels**-0.5)  # (B, C, H, W)
        if w_out is not None:  # training: the output projection as it is (else folded into v)
            out = F.conv2d(out, w_out[:, :, None, None], b_out)
        out = self.to_out[1](out)
        out = out + residual
        return out if self.rescale_output_factor == 1.0 else out / self.rescale_output_factor


class Downsample2D(nn.Module):
    """diffusers' ``Downsample2D`` with ``padding=0``: pad right/bottom, 3x3 stride-2 conv, fused."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return ops.padded_conv2d(hidden_states, self.conv.weight, self.conv.bias, stride=2, padding=(0, 1, 0, 1))


class Upsample2D(DerivedWeightsMixin, nn.Module):
    """diffusers' ``Upsample2D`` (nearest x2 then 3x3 conv) as one folded transposed conv (CUDA;
    the folded weight cached while ``conv.weight`` is unchanged)."""

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        expected = (hidden_states.shape[2] * 2, hidden_states.shape[3] * 2)
        if output_size is not None and tuple(output_size) != expected:
            up = F.interpolate(hidden_states, size=output_size, mode="nearest")
            return self.conv(up)
        return upsample_then_conv(hidden_states, self.conv.weight, self.conv.bias, self)


# -- recognition -----------------------------------------------------------------------------------


def _resnet_problem(block) -> str | None:
    if block.time_emb_proj is not None:
        return "it takes a timestep embedding (time_emb_proj), which the fast block does not implement"
    if block.upsample is not None or block.downsample is not None:
        return "it resamples inside the block (up/down), which the fast block does not implement"
    if not isinstance(block.nonlinearity, nn.SiLU):
        return f"its activation is {type(block.nonlinearity).__name__}, not SiLU"
    return first_problem(group_norm_problem(block.norm1, "norm1"), group_norm_problem(block.norm2, "norm2"))


def _attention_problem(attn) -> str | None:
    if attn.heads != 1:
        return f"it has {attn.heads} heads; the fast block is single-head (the VAE's attention)"
    if attn.is_cross_attention or getattr(attn, "only_cross_attention", False):
        return "it is a cross-attention"
    if attn.spatial_norm is not None or attn.norm_cross or getattr(attn, "norm_q", None) is not None \
            or getattr(attn, "norm_k", None) is not None:
        return "it uses spatial / cross / q-k normalisation"
    if not attn.residual_connection:
        return "it has no residual connection"
    if attn.group_norm is None:
        return "it has no group norm"
    processor = type(attn.processor).__name__
    if processor not in ("AttnProcessor2_0", "AttnProcessor"):
        return f"it runs the custom processor {processor}"
    channels = attn.to_q.in_features
    if not all(isinstance(getattr(attn, n), nn.Linear) for n in ("to_q", "to_k", "to_v")) \
            or attn.to_q.out_features != channels or attn.to_out[0].out_features != channels:
        return "its projections are not square Linear layers"
    if processor == "AttnProcessor" and abs(attn.scale - channels**-0.5) > 1e-12:
        return f"it scales logits by {attn.scale}, not channels ** -0.5"
    return group_norm_problem(attn.group_norm, "group_norm")


def _downsample_problem(block) -> str | None:
    if not block.use_conv:
        return "use_conv=False is an average pool: there is nothing to accelerate"
    if block.padding != 0:
        return f"padding={block.padding} is symmetric: cuDNN already convolves it without a copy"
    if getattr(block, "norm", None) is not None:
        return "it normalises before the convolution"
    return conv_problem(block.conv, "conv", kernel=3, stride=2, padding=0)


def _upsample_problem(block) -> str | None:
    if not block.use_conv or block.use_conv_transpose or not getattr(block, "interpolate", True):
        return "only the nearest-upsample + 3x3 conv form is accelerated"
    if getattr(block, "norm", None) is not None:
        return "it normalises before upsampling"
    return conv_problem(block.conv, "conv", kernel=3, stride=1, padding=1)


def _head_problem(container) -> str | None:
    if not isinstance(container.conv_act, nn.SiLU):
        return f"conv_act is {type(container.conv_act).__name__}, not SiLU"
    return group_norm_problem(container.conv_norm_out, "conv_norm_out")


def _fuse_head(container: nn.Module) -> nn.Module:
    """Fuse ``conv_norm_out`` with ``conv_act`` (which becomes an identity); parameters shared."""
    container.conv_norm_out = fast.GroupNormSiLU.from_group_norm(container.conv_norm_out, activation="silu")
    container.conv_act = nn.Identity()
    return container


def _fast_quantizer(block: nn.Module) -> nn.Module:
    block.e_dim = block.vq_embed_dim  # the name taming and vqvae_fast use for the code dimension
    return fast.VectorQuantizer.from_reference(block)


RULES = (
    Rule(
        "diffusers ResnetBlock2D", "group_norm_silu", ("ResnetBlock2D",),
        ("norm1", "conv1", "norm2", "dropout", "conv2", "conv_shortcut", "time_emb_proj",
         "nonlinearity", "output_scale_factor", "upsample", "downsample"),
        convert=lambda block: adopt(block, ResnetBlock2D), unsupported=_resnet_problem,
    ),
    Rule(
        "diffusers VAE Attention", "spatial_attention", ("Attention",),
        ("group_norm", "to_q", "to_k", "to_v", "to_out", "heads", "processor", "residual_connection",
         "rescale_output_factor", "spatial_norm", "is_cross_attention"),
        convert=lambda block: adopt(block, VAEAttention), unsupported=_attention_problem,
    ),
    Rule(
        "diffusers Downsample2D", "padded_conv2d", ("Downsample2D",), ("use_conv", "padding", "conv"),
        convert=lambda block: adopt(block, Downsample2D), unsupported=_downsample_problem,
    ),
    Rule(
        "diffusers Upsample2D", "upsample_conv", ("Upsample2D",), ("use_conv", "use_conv_transpose", "conv"),
        convert=lambda block: adopt(block, Upsample2D), unsupported=_upsample_problem,
    ),
    Rule(
        "diffusers VectorQuantizer", "codebook_argmin", ("VectorQuantizer",),
        ("embedding", "n_e", "vq_embed_dim", "beta", "legacy", "remap", "sane_index_shape"),
        convert=_fast_quantizer,
    ),
    Rule(
        "diffusers Encoder/Decoder head (conv_norm_out + conv_act)", "group_norm_silu", ("Encoder", "Decoder"),
        ("conv_norm_out", "conv_act", "conv_out"),
        convert=_fuse_head, unsupported=_head_problem, descend=True,
        already_fast=lambda container: isinstance(container.conv_act, nn.Identity)
        and type(container.conv_norm_out).__name__ == "GroupNormSiLU",
    ),
)
