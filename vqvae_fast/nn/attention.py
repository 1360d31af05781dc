"""Fast drop-in for taming's ``AttnBlock``: same parameters and state_dict keys, fewer passes."""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import _validation as V
from .. import ops
from ..reference import blocks as reference_blocks


class AttnBlock(nn.Module):
    r"""Single-head self-attention over spatial positions with a residual connection.

    .. math::
        h = \mathrm{GroupNorm}(x), \quad q, k, v = W_{q,k,v} h + b_{q,k,v}, \quad
        y = x + W_p\, v\, \mathrm{softmax}(C^{-1/2} q^\top k)^\top + b_p

    Computes what the reference ``AttnBlock`` computes, with the reference's submodules
    (``norm``, ``q``, ``k``, ``v``, ``proj_out``) and state_dict keys, as:

    * the group norm through :func:`vqvae_fast.group_norm_silu` (``activation=None``);
    * ``q``, ``k``, ``v`` as one GEMM with the three weights concatenated at call time (the
      parameters stay ``q.weight``, ``k.weight``, ``v.weight``), bias in the GEMM;
    * :func:`vqvae_fast.spatial_attention` reading ``q``, ``k``, ``v`` as channel slices of that
      one ``(B, 3C, N)`` result;
    * ``proj_out`` as a GEMM that accumulates into the residual ``x + b_p`` (``beta = 1``).

    NCHW inputs run in ``(B, C, N)`` layout (``(B, N, C)`` for the attention when ``H W`` is not
    a multiple of 16), channels-last inputs in ``(B, N, C)`` layout; the output has the input's
    memory format. Under autocast the GEMMs run in the autocast dtype and
    the residual is added afterwards in ``x``'s dtype, as the reference's ``x + proj_out(h)``.

    Args:
        in_channels: ``C``, the head size (a multiple of 32, the group norm's groups).
        device, dtype: factory keyword arguments for the parameters.

    Shape: ``(B, C, H, W) -> (B, C, H, W)``.

    Example::

        >>> block = AttnBlock(64)
        >>> block.load_state_dict(reference_block.state_dict())
        >>> y = block(torch.randn(2, 64, 16, 16))
    """

    def __init__(self, in_channels: int, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_channels = in_channels
        self.norm = nn.GroupNorm(reference_blocks.GROUPS, in_channels, eps=reference_blocks.EPS, affine=True, **factory)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0, **factory)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0, **factory)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0, **factory)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0, **factory)

    @classmethod
    def from_reference(cls, block: nn.Module) -> "AttnBlock":
        """A fast block sharing ``block``'s parameters (the same ``Parameter`` objects, so
        training one trains the other); ``block`` is a reference ``AttnBlock`` or any module
        with its ``norm`` (GroupNorm), ``q``, ``k``, ``v``, ``proj_out`` (1x1 Conv2d)."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.in_channels = block.q.weight.shape[0]
        norm = block.norm
        fast.norm = nn.GroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine, device="meta")
        for name in ("q", "k", "v", "proj_out"):
            conv = getattr(block, name)
            setattr(fast, name, nn.Conv2d(
                conv.in_channels, conv.out_channels, kernel_size=1, bias=conv.bias is not None, device="meta"
            ))
        for name in ("norm", "q", "k", "v", "proj_out"):
            mine, theirs = getattr(fast, name), getattr(block, name)
            for param_name, _ in list(mine.named_parameters(recurse=False)):
                setattr(mine, param_name, getattr(theirs, param_name))
        fast.train(block.training)
        return fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        V.check_tensor("x", x, ndim=4)
        batch, channels, height, width = x.shape
        if channels != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels, got shape {tuple(x.shape)}")
        V.check_matches_module("x", x, self)
        n = height * width
        norm = self.norm
        h = ops.group_norm_silu(x, norm.num_groups, norm.weight, norm.bias, norm.eps, activation=None)
        w_qkv = torch.cat([self.q.weight, self.k.weight, self.v.weight]).view(3 * channels, channels)
        b_qkv = _cat_bias(self.q.bias, self.k.bias, self.v.bias, w_qkv)
        w_proj = self.proj_out.weight.view(channels, channels)
        b_proj = self.proj_out.bias
        tokens = _is_channels_last(x)
        if tokens:  # (B*N, C) rows: the 1x1 convolutions are one plain GEMM over positions
            h_tok = h.permute(0, 2, 3, 1).reshape(batch * n, channels)  # (B*N, C), a view if channels-last
            qkv = torch.addmm(b_qkv, h_tok, w_qkv.t())  # (B*N, 3C)
            qkv = qkv.view(batch, n, 3 * channels).transpose(1, 2)  # (B, 3C, N), channels innermost
        elif n % 16:  # positions innermost would leave rows the kernels cannot copy 16 bytes at a time
            h3 = h.reshape(batch, channels, n)  # (B, C, N)
            qkv = torch.baddbmm(
                b_qkv.view(1, 1, 3 * channels), h3.transpose(1, 2), w_qkv.t().expand(batch, -1, -1)
            ).transpose(1, 2)  # (B, 3C, N), channels innermost
        else:
            h3 = h.reshape(batch, channels, n)  # (B, C, N)
            qkv = torch.baddbmm(b_qkv.view(1, 3 * channels, 1), w_qkv.expand(batch, -1, -1), h3)  # (B, 3C, N)
        q, k, v = qkv.split(channels, dim=1)  # three (B, C, N) views of one tensor
        a = ops.spatial_attention(q, k, v)  # (B, C, N), laid out like q
        if tokens:
            a_tok = a.transpose(1, 2).reshape(batch * n, channels)  # (B*N, C), a view
            x_tok = x.permute(0, 2, 3, 1).reshape(batch * n, channels)  # (B*N, C), a view
            y_tok = _add_projection(x_tok, b_proj, a_tok, w_proj.t(), torch.addmm, torch.Tensor.addmm_)
            return y_tok.view(batch, height, width, channels).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)
        x3 = x.reshape(batch, channels, n)  # (B, C, N)
        bias3 = None if b_proj is None else b_proj.view(channels, 1)
        y3 = _add_projection(x3, bias3, w_proj.expand(batch, -1, -1), a, torch.baddbmm, torch.Tensor.baddbmm_)
        return y3.view(batch, channels, height, width)


def _cat_bias(bq, bk, bv, like: torch.Tensor) -> torch.Tensor:
    biases = [b if b is not None else like.new_zeros(like.shape[1]) for b in (bq, bk, bv)]
    return torch.cat(biases)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _add_projection(x, bias, left, right, gemm, gemm_) -> torch.Tensor:
    """``x + bias + left @ right`` with ``gemm(base, left, right)`` / ``gemm_`` (in place).

    Without autocast the product accumulates into a fresh ``x + bias`` inside the GEMM
    (``beta = 1``, in place). Under autocast the GEMM runs out of place in the autocast dtype
    (autocast casts no in-place op, and fp32 parameters would meet 16-bit activations), and the
    residual is added afterwards in ``x``'s dtype, as the reference's ``x + proj_out(h)``
    (rounding an fp32 ``x`` to 16 bits would lose what the reference keeps).
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        if bias is None:
            return x + gemm(x.new_zeros(()).expand_as(x), left, right, beta=0)
        return x + gemm(bias.expand_as(x), left, right)
    if bias is None:
        return gemm(x, left, right)
    return gemm_(x + bias, left, right)
