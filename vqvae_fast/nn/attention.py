"""Fast drop-in for taming's ``AttnBlock``: same parameters and state_dict keys, fewer passes."""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import _validation as V
from .. import ops
from ..reference import blocks as reference_blocks
from ._derived import DerivedWeightsMixin, cacheable, derived


def projection_weights(module: nn.Module, wq, bq, wk, bk, wv, bv, wo, bo) -> tuple:
    r"""The attention block's GEMM operands from its ``q, k, v, proj_out`` weights ``(C, C)`` or
    ``(C, C, 1, 1)`` and biases ``(C,)`` or ``None``: ``(w_qkv (3C, C), b_qkv (3C,), w_o, b_o)``.

    In training (autograd must reach the parameters) and under ``torch.compile``: the three
    weights concatenated on every call, and the output projection as it is.

    Otherwise the value projection is folded into the output projection. Softmax rows sum to 1,
    so with ``A`` the attention probabilities and ``V = W_v h + b_v``,

    .. math::
        W_o V A^\top + b_o = (W_o W_v h + W_o b_v + b_o) A^\top,

    i.e. attention over ``v' = (W_o W_v) h + (W_o b_v + b_o)`` already is the block's projected
    output: one ``C x C`` GEMM fewer per call. ``w_qkv = [W_q; W_k; W_o W_v]`` (the product
    formed in fp64, fp32 for 16-bit weights, then rounded once), ``b_qkv = [b_q; b_k; W_o b_v +
    b_o]`` and ``w_o = b_o = None``; cached per parameter version (:mod:`._derived`).
    """
    sources = (wq, bq, wk, bk, wv, bv, wo, bo)
    if cacheable(*sources):
        w_qkv, b_qkv = derived(module, "folded_qkv", _folded_qkv, *sources)
        return w_qkv, b_qkv, None, None
    channels = wq.shape[0]
    w_qkv = torch.cat([wq, wk, wv]).view(3 * channels, channels)
    biases = [b if b is not None else w_qkv.new_zeros(channels) for b in (bq, bk, bv)]
    return w_qkv, torch.cat(biases), wo.view(channels, channels), bo


def _folded_qkv(wq, bq, wk, bk, wv, bv, wo, bo) -> tuple[torch.Tensor, torch.Tensor]:
    channels = wq.shape[0]
    dtype = wq.dtype
    wide = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
    wv, wo = wv.reshape(channels, channels).to(wide), wo.reshape(channels, channels).to(wide)
    zeros = wq.new_zeros(channels, dtype=wide)
    b_v = wo @ (zeros if bv is None else bv.to(wide)) + (zeros if bo is None else bo.to(wide))
    w_qkv = torch.cat([wq.reshape(channels, channels), wk.reshape(channels, channels), (wo @ wv).to(dtype)])
    biases = [zeros.to(dtype) if b is None else b for b in (bq, bk)]
    return w_qkv, torch.cat([*biases, b_v.to(dtype)])


class AttnBlock(DerivedWeightsMixin, nn.Module):
    r"""Single-head self-attention over spatial positions with a residual connection.

    .. math::
        h = \mathrm{GroupNorm}(x), \quad q, k, v = W_{q,k,v} h + b_{q,k,v}, \quad
        y = x + W_p\, v\, \mathrm{softmax}(C^{-1/2} q^\top k)^\top + b_p

    Computes what the reference ``AttnBlock`` computes, with the reference's submodules
    (``norm``, ``q``, ``k``, ``v``, ``proj_out``) and state_dict keys, as:

    * the group norm through :func:`vqvae_fast.group_norm_silu` (``activation=None``);
    * ``q``, ``k``, ``v`` as one GEMM with the three weights concatenated (the parameters stay
      ``q.weight``, ``k.weight``, ``v.weight``), bias in the GEMM;
    * :func:`vqvae_fast.spatial_attention` reading ``q``, ``k``, ``v`` as channel slices of that
      one ``(B, 3C, N)`` result;
    * in training, ``proj_out`` as a GEMM that accumulates into the residual ``x + b_p``
      (``beta = 1``); in inference ``proj_out`` is folded into the value projection (see
      :func:`projection_weights`) and the attention's output is added to ``x``. The folded and
      concatenated weights are cached while the parameters are unchanged.

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
        q, k, v, o = self.q, self.k, self.v, self.proj_out
        w_qkv, b_qkv, w_proj, b_proj = projection_weights(
            self, q.weight, q.bias, k.weight, k.bias, v.weight, v.bias, o.weight, o.bias
        )
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
            if w_proj is None:  # folded: a is the projected output already
                y_tok = x_tok + a_tok
            else:
                y_tok = _add_projection(x_tok, b_proj, a_tok, w_proj.t(), torch.addmm, torch.Tensor.addmm_)
            return y_tok.view(batch, height, width, channels).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)
        x3 = x.reshape(batch, channels, n)  # (B, C, N)
        if w_proj is None:
            y3 = x3 + a
            if not y3.is_contiguous():  # a laid out (B, N, C) may lead the sum's layout
                y3 = y3.contiguous()
        else:
            bias3 = None if b_proj is None else b_proj.view(channels, 1)
            y3 = _add_projection(x3, bias3, w_proj.expand(batch, -1, -1), a, torch.baddbmm, torch.Tensor.baddbmm_)
        return y3.view(batch, channels, height, width)


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
