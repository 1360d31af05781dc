r"""Triton kernels for ``group_norm_silu``: group norm, optional affine, optional SiLU.

Forward, for sample ``n`` and group ``g`` (channels ``c`` with ``c // (C/G) == g``, ``M = (C/G)*S``
elements over the group's channels and the ``S`` spatial positions):

.. math::
    \mu = \frac1M \sum x, \quad r = \Big(\frac1M \sum (x-\mu)^2 + \epsilon\Big)^{-1/2}, \quad
    \hat x = (x-\mu) r, \quad z = \gamma_c \hat x + \beta_c, \quad y = z\,\sigma(z)

Backward (``dz = dy \cdot \sigma(z)(1 + z(1-\sigma(z)))``, or ``dz = dy`` without SiLU):

.. math::
    d\beta_c = \sum_{n,s} dz, \quad d\gamma_c = \sum_{n,s} dz\,\hat x, \quad
    dx = r\Big(\gamma_c dz - \frac1M\sum_{\text{group}}\gamma dz
                - \hat x \frac1M\sum_{\text{group}}\gamma dz\,\hat x\Big)

``z`` is recomputed from ``x`` and the saved per-group ``mean``/``rstd``; nothing of size ``x`` is
saved. Statistics are fp32: per-tile two-pass moments merged with Chan's parallel formula, on
values shifted by one sample of their own row, so a mean far from zero does not cancel.

Two paths, chosen by :func:`forward` / :func:`backward` from the shape:

* ``fused``: one program per (sample, group) holds the whole group in registers (groups of at
  most ``FUSED_MAX_*`` elements after padding): one read of ``x``, one write, one launch.
* ``split``: the group reduction is spread over many programs, so that batch 1 fills the GPU:
  per-channel partial moments over chunks of the spatial axis, a small kernel that combines
  them per group, then an elementwise kernel. Fixed-order reductions, no atomics: the result
  is bit-identical run to run. Two reads of ``x`` and one write.

The backward has the same two paths (groups of at most ``FUSED_MAX_BWD``): ``fused`` reads ``x``
and ``dy`` once and writes ``dx`` in one program per group; ``split`` sums ``dz`` and ``dz*xhat``
per channel over spatial chunks, finishes them per group, then writes ``dx`` elementwise (two
reads of ``x`` and ``dy``). Both leave per-(sample, channel) sums that a last small kernel adds
over the batch, in a fixed order, into ``dweight`` and ``dbias``.

Layouts: every kernel indexes ``x`` as ``(n, c, s)`` with ``s`` the flattened spatial position.
``CHANNELS_LAST=False``: ``s`` has stride 1 (NCHW and its channel slices);
``CHANNELS_LAST=True``: ``c`` has stride 1 (channels_last). Tiles are ``[BLOCK_C, BLOCK_S]`` in
both; the compiler vectorises along whichever axis has the literal unit stride. Sample and row
offsets are 64-bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from vqvae_fast.ops.group_norm_silu import output_memory_format

from .gate import GateConfig

# ----------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _offsets(c, s, stride_c, stride_s, CHANNELS_LAST: tl.constexpr):
    """64-bit offsets, within one sample, of channels ``c`` and spatial positions ``s``."""
    if CHANNELS_LAST:
        offs = c.to(tl.int64) + s.to(tl.int64) * stride_s
    else:
        offs = c.to(tl.int64) * stride_c + s
    return offs


@triton.jit
def _as_float(n):
    """``n`` as fp32 (or a Python float): integer arguments equal to 1 arrive as constexprs, which
    have no ``.to``."""
    return n * 1.0


@triton.jit
def _silu_grad(dy, z):
    """d(z * sigmoid(z))/dz times ``dy``."""
    sig = tl.sigmoid(z)
    return dy * sig * (1.0 + z * (1.0 - sig))


@triton.jit
def _tile_of_program(pid, C, S, NUM_CB, NUM_SB, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """The ``[BLOCK_C, BLOCK_S]`` tile of program ``pid`` in the split elementwise kernels
    (spatial blocks fastest, then channel blocks, then samples): ``(n, c, s, cmask, mask)``."""
    sb = pid % NUM_SB
    rest = pid // NUM_SB
    cb = rest % NUM_CB
    n = rest // NUM_CB
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    cmask = c < C
    mask = cmask[:, None] & (s < S)[None, :]
    return n, c, s, cmask, mask


@triton.jit
def _gn_fwd_fused_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
    S, G, CPG,
    stride_xn, stride_xc, stride_xs,
    stride_yn, stride_yc, stride_ys,
    eps,
    CHANNELS_LAST: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """One program per (n, g): the group in one tile, exact two-pass statistics."""
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    cl = tl.arange(0, BLOCK_C)
    s = tl.arange(0, BLOCK_S)
    c = g * CPG + cl
    mask = (cl < CPG)[:, None] & (s < S)[None, :]
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    x = tl.load(x_base + _offsets(c[:, None], s[None, :], stride_xc, stride_xs, CHANNELS_LAST),
                mask=mask, other=0.0).to(tl.float32)
    # shift by the group's first element: sums of x - shift do not cancel when |mean| >> std
    shift = tl.load(x_base + _offsets(g * CPG, g * 0, stride_xc, stride_xs, CHANNELS_LAST)).to(tl.float32)
    count = _as_float(CPG) * S
    mean = shift + tl.sum(tl.sum(tl.where(mask, x - shift, 0.0), axis=1), axis=0) / count
    d = tl.where(mask, x - mean, 0.0)
    var = tl.sum(tl.sum(d * d, axis=1), axis=0) / count
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    z = d * rstd
    if HAS_WEIGHT:
        z = z * tl.load(w_ptr + c, mask=cl < CPG, other=0.0).to(tl.float32)[:, None]
    if HAS_BIAS:
        z = z + tl.load(b_ptr + c, mask=cl < CPG, other=0.0).to(tl.float32)[:, None]
    if SILU:
        z = z * tl.sigmoid(z)
    y_base = y_ptr + n.to(tl.int64) * stride_yn
    tl.store(y_base + _offsets(c[:, None], s[None, :], stride_yc, stride_ys, CHANNELS_LAST),
             z.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)


@triton.jit
def _gn_fwd_partial_stats_kernel(
    x_ptr, pmean_ptr, pm2_ptr,
    C, S, NUM_CB, NUM_CHUNKS, CHUNK,
    stride_xn, stride_xc, stride_xs,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Per-channel mean and M2 of ``x[n, c, k*CHUNK : (k+1)*CHUNK]`` for a block of channels.

    Program ``(n, cb, k)`` writes ``pmean/pm2[(n*C + c)*NUM_CHUNKS + k]``. ``CHUNK`` is a multiple
    of ``BLOCK_S``; tiles are merged with Chan's formula (exact for the full tiles before the last).
    """
    pid = tl.program_id(0)
    k = pid % NUM_CHUNKS
    rest = pid // NUM_CHUNKS
    cb = rest % NUM_CB
    n = rest // NUM_CB
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    s_lo = k * CHUNK
    s_hi = tl.minimum(s_lo + CHUNK, S)
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    shift = tl.load(x_base + _offsets(c, s_lo, stride_xc, stride_xs, CHANNELS_LAST),
                    mask=cmask, other=0.0).to(tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for s0 in range(s_lo, s_hi, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = cmask[:, None] & (s < s_hi)[None, :]
        x = tl.load(x_base + _offsets(c[:, None], s[None, :], stride_xc, stride_xs, CHANNELS_LAST),
                    mask=mask, other=0.0).to(tl.float32)
        v = tl.where(mask, x - shift[:, None], 0.0)
        n_a = (s0 - s_lo).to(tl.float32)
        n_b = tl.minimum(s_hi - s0, BLOCK_S).to(tl.float32)
        tile_mean = tl.sum(v, axis=1) / n_b
        dv = tl.where(mask, v - tile_mean[:, None], 0.0)
        tile_m2 = tl.sum(dv * dv, axis=1)
        delta = tile_mean - mean
        n_ab = n_a + n_b
        mean += delta * (n_b / n_ab)
        m2 += tile_m2 + delta * delta * (n_a * n_b / n_ab)
    out = (n.to(tl.int64) * C + c) * NUM_CHUNKS + k
    tl.store(pmean_ptr + out, shift + mean, mask=cmask)
    tl.store(pm2_ptr + out, m2, mask=cmask)


@triton.jit
def _gn_fwd_combine_kernel(
    pmean_ptr, pm2_ptr, mean_ptr, rstd_ptr,
    S, CPG, NUM_CHUNKS, CHUNK, eps,
    BLOCK: tl.constexpr,
):
    """Program ``n*G + g`` merges the ``CPG * NUM_CHUNKS`` partials of its group (contiguous)."""
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * CPG * NUM_CHUNKS
    total = CPG * NUM_CHUNKS
    count = _as_float(CPG) * S
    # pivot on the first partial mean: the sum of count-weighted deviations does not cancel
    pivot = tl.load(pmean_ptr + base)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j0 in range(0, total, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        m = j < total
        cnt = tl.minimum(CHUNK, S - (j % NUM_CHUNKS) * CHUNK).to(tl.float32)
        pm = tl.load(pmean_ptr + base + j, mask=m, other=0.0)
        acc += tl.where(m, cnt * (pm - pivot), 0.0)
    mean = pivot + tl.sum(acc, axis=0) / count
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j0 in range(0, total, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        m = j < total
        cnt = tl.minimum(CHUNK, S - (j % NUM_CHUNKS) * CHUNK).to(tl.float32)
        pm = tl.load(pmean_ptr + base + j, mask=m, other=0.0)
        p2 = tl.load(pm2_ptr + base + j, mask=m, other=0.0)
        d = pm - mean
        acc += tl.where(m, p2 + cnt * d * d, 0.0)
    var = tl.sum(acc, axis=0) / count
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, 1.0 / tl.sqrt_rn(var + eps))


@triton.jit
def _gn_fwd_apply_kernel(
    x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, y_ptr,
    C, S, G, CPG, NUM_CB, NUM_SB,
    stride_xn, stride_xc, stride_xs,
    stride_yn, stride_yc, stride_ys,
    CHANNELS_LAST: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Elementwise ``y = act(((x - mean) * rstd) * w + b)`` on one ``[BLOCK_C, BLOCK_S]`` tile."""
    n, c, s, cmask, mask = _tile_of_program(tl.program_id(0), C, S, NUM_CB, NUM_SB, BLOCK_C, BLOCK_S)
    grp = n * G + c // CPG
    mean = tl.load(mean_ptr + grp, mask=cmask, other=0.0)
    scale = tl.load(rstd_ptr + grp, mask=cmask, other=0.0)
    if HAS_WEIGHT:
        scale = scale * tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    x = tl.load(x_base + _offsets(c[:, None], s[None, :], stride_xc, stride_xs, CHANNELS_LAST),
                mask=mask, other=0.0).to(tl.float32)
    z = (x - mean[:, None]) * scale[:, None]
    if HAS_BIAS:
        z = z + tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)[:, None]
    if SILU:
        z = z * tl.sigmoid(z)
    y_base = y_ptr + n.to(tl.int64) * stride_yn
    tl.store(y_base + _offsets(c[:, None], s[None, :], stride_yc, stride_ys, CHANNELS_LAST),
             z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gn_bwd_fused_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, dx_ptr, sum_dz_ptr, sum_dz_xhat_ptr,
    C, S, G, CPG,
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    stride_dxn, stride_dxc, stride_dxs,
    CHANNELS_LAST: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """One program per (n, g): ``dx`` of the whole group, and per-channel ``sum dz``,
    ``sum dz*xhat`` into ``[N, C]`` buffers for the weight / bias gradients."""
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    cl = tl.arange(0, BLOCK_C)
    s = tl.arange(0, BLOCK_S)
    c = g * CPG + cl
    cmask = cl < CPG
    mask = cmask[:, None] & (s < S)[None, :]
    mean = tl.load(mean_ptr + pid)
    rstd = tl.load(rstd_ptr + pid)
    x = tl.load(x_ptr + n.to(tl.int64) * stride_xn
                + _offsets(c[:, None], s[None, :], stride_xc, stride_xs, CHANNELS_LAST),
                mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + n.to(tl.int64) * stride_dyn
                 + _offsets(c[:, None], s[None, :], stride_dyc, stride_dys, CHANNELS_LAST),
                 mask=mask, other=0.0).to(tl.float32)
    xhat = (x - mean) * rstd
    if HAS_WEIGHT:
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_C], 1.0, tl.float32)
    dz = dy
    if SILU:
        z = xhat * w[:, None]
        if HAS_BIAS:
            z = z + tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)[:, None]
        dz = _silu_grad(dy, z)
    dz = tl.where(mask, dz, 0.0)
    sum_dz = tl.sum(dz, axis=1)
    sum_dz_xhat = tl.sum(tl.where(mask, dz * xhat, 0.0), axis=1)
    count = _as_float(CPG) * S
    c2 = tl.sum(w * sum_dz, axis=0) / count
    c1 = tl.sum(w * sum_dz_xhat, axis=0) / count
    dx = rstd * (dz * w[:, None] - c2 - xhat * c1)
    tl.store(dx_ptr + n.to(tl.int64) * stride_dxn
             + _offsets(c[:, None], s[None, :], stride_dxc, stride_dxs, CHANNELS_LAST),
             dx.to(dx_ptr.dtype.element_ty), mask=mask)
    nc = n.to(tl.int64) * C + c
    tl.store(sum_dz_ptr + nc, sum_dz, mask=cmask)
    tl.store(sum_dz_xhat_ptr + nc, sum_dz_xhat, mask=cmask)


@triton.jit
def _gn_bwd_partial_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, pa_ptr, pb_ptr,
    C, S, G, CPG, NUM_CB, NUM_CHUNKS, CHUNK,
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    CHANNELS_LAST: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Per-channel ``sum dz`` and ``sum dz*xhat`` over one spatial chunk (layout as the forward
    partial statistics): ``pa/pb[(n*C + c)*NUM_CHUNKS + k]``."""
    pid = tl.program_id(0)
    k = pid % NUM_CHUNKS
    rest = pid // NUM_CHUNKS
    cb = rest % NUM_CB
    n = rest // NUM_CB
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    grp = n * G + c // CPG
    mean = tl.load(mean_ptr + grp, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + grp, mask=cmask, other=0.0)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_BIAS:
        b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    else:
        b = tl.zeros([BLOCK_C], dtype=tl.float32)
    s_lo = k * CHUNK
    s_hi = tl.minimum(s_lo + CHUNK, S)
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    dy_base = dy_ptr + n.to(tl.int64) * stride_dyn
    acc_a = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    for s0 in range(s_lo, s_hi, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = cmask[:, None] & (s < s_hi)[None, :]
        x = tl.load(x_base + _offsets(c[:, None], s[None, :], stride_xc, stride_xs, CHANNELS_LAST),
                    mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_base + _offsets(c[:, None], s[None, :], stride_dyc, stride_dys, CHANNELS_LAST),
                     mask=mask, other=0.0).to(tl.float32)
        xhat = (x - mean[:, None]) * rstd[:, None]
        dz = dy
        if SILU:
            dz = _silu_grad(dy, xhat * w[:, None] + b[:, None])
        dz = tl.where(mask, dz, 0.0)
        acc_a += dz
        acc_b += tl.where(mask, dz * xhat, 0.0)
    out = (n.to(tl.int64) * C + c) * NUM_CHUNKS + k
    tl.store(pa_ptr + out, tl.sum(acc_a, axis=1), mask=cmask)
    tl.store(pb_ptr + out, tl.sum(acc_b, axis=1), mask=cmask)


@triton.jit
def _gn_bwd_group_kernel(
    pa_ptr, pb_ptr, w_ptr, sum_dz_ptr, sum_dz_xhat_ptr, c1_ptr, c2_ptr,
    S, G, CPG, NUM_CHUNKS,
    HAS_WEIGHT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program ``n*G + g``: per-channel totals of the partials (into ``[N, C]``), and the group's
    ``c2 = mean(w*dz)``, ``c1 = mean(w*dz*xhat)``."""
    pid = tl.program_id(0)
    g = pid % G
    nc_first = pid.to(tl.int64) * CPG  # = n*C + g*CPG
    acc1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for c0 in range(0, CPG, BLOCK_C):
        cl = c0 + tl.arange(0, BLOCK_C)
        cmask = cl < CPG
        a = tl.zeros([BLOCK_C, BLOCK_K], dtype=tl.float32)
        b = tl.zeros([BLOCK_C, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, NUM_CHUNKS, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            m = cmask[:, None] & (kk < NUM_CHUNKS)[None, :]
            idx = (nc_first + cl)[:, None] * NUM_CHUNKS + kk[None, :]
            a += tl.load(pa_ptr + idx, mask=m, other=0.0)
            b += tl.load(pb_ptr + idx, mask=m, other=0.0)
        sum_a = tl.sum(a, axis=1)
        sum_b = tl.sum(b, axis=1)
        tl.store(sum_dz_ptr + nc_first + cl, sum_a, mask=cmask)
        tl.store(sum_dz_xhat_ptr + nc_first + cl, sum_b, mask=cmask)
        if HAS_WEIGHT:
            w = tl.load(w_ptr + g * CPG + cl, mask=cmask, other=0.0).to(tl.float32)
            sum_a = sum_a * w
            sum_b = sum_b * w
        acc2 += sum_a
        acc1 += sum_b
    count = _as_float(CPG) * S
    tl.store(c2_ptr + pid, tl.sum(acc2, axis=0) / count)
    tl.store(c1_ptr + pid, tl.sum(acc1, axis=0) / count)


@triton.jit
def _gn_bwd_affine_kernel(
    sum_dz_ptr, sum_dz_xhat_ptr, dw_ptr, db_ptr,
    N, C,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``db[c] = sum_n sum_dz[n, c]``, ``dw[c] = sum_n sum_dz_xhat[n, c]`` (fixed order)."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    acc_b = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    acc_w = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        m = (nn < N)[:, None] & cmask[None, :]
        idx = nn.to(tl.int64)[:, None] * C + c[None, :]
        acc_b += tl.load(sum_dz_ptr + idx, mask=m, other=0.0)
        acc_w += tl.load(sum_dz_xhat_ptr + idx, mask=m, other=0.0)
    tl.store(db_ptr + c, tl.sum(acc_b, axis=0).to(db_ptr.dtype.element_ty), mask=cmask)
    tl.store(dw_ptr + c, tl.sum(acc_w, axis=0).to(dw_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _gn_bwd_dx_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, c1_ptr, c2_ptr, dx_ptr,
    C, S, G, CPG, NUM_CB, NUM_SB,
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    stride_dxn, stride_dxc, stride_dxs,
    CHANNELS_LAST: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Elementwise ``dx = rstd * (w*dz - c2 - xhat*c1)`` on one ``[BLOCK_C, BLOCK_S]`` tile."""
    n, c, s, cmask, mask = _tile_of_program(tl.program_id(0), C, S, NUM_CB, NUM_SB, BLOCK_C, BLOCK_S)
    grp = n * G + c // CPG
    mean = tl.load(mean_ptr + grp, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + grp, mask=cmask, other=0.0)
    c1 = tl.load(c1_ptr + grp, mask=cmask, other=0.0)
    c2 = tl.load(c2_ptr + grp, mask=cmask, other=0.0)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_C], 1.0, tl.float32)
    x = tl.load(x_ptr + n.to(tl.int64) * stride_xn
                + _offsets(c[:, None], s[None, :], stride_xc, stride_xs, CHANNELS_LAST),
                mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + n.to(tl.int64) * stride_dyn
                 + _offsets(c[:, None], s[None, :], stride_dyc, stride_dys, CHANNELS_LAST),
                 mask=mask, other=0.0).to(tl.float32)
    xhat = (x - mean[:, None]) * rstd[:, None]
    dz = dy
    if SILU:
        z = xhat * w[:, None]
        if HAS_BIAS:
            z = z + tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)[:, None]
        dz = _silu_grad(dy, z)
    dx = rstd[:, None] * (dz * w[:, None] - c2[:, None] - xhat * c1[:, None])
    tl.store(dx_ptr + n.to(tl.int64) * stride_dxn
             + _offsets(c[:, None], s[None, :], stride_dxc, stride_dxs, CHANNELS_LAST),
             dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers

#: largest padded group (``next_pow2(C/G) * next_pow2(S)``) the fused kernels hold in registers
FUSED_MAX_FWD = 16384
FUSED_MAX_BWD = 8192
#: elements per tile of the split kernels
TILE = 4096
#: rows of a channels_last tile (channels, contiguous) at most
CL_BLOCK_C = 256
#: split kernels aim for this many programs per SM so that batch 1 fills the GPU
PROGRAMS_PER_SM = 8


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _warps(elements: int) -> int:
    """4 warps up to 2048 elements per tile, 8 up to 8192, then 16 (16-32 fp32 per thread)."""
    return 4 if elements <= 2048 else 8 if elements <= 8192 else 16


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4  # the interpreter runs programs one after another: few, larger programs


_SM_COUNTS: dict[int, int] = {}


def _cuda_sm_count(index: int) -> int:
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def _spatial_stride(t: torch.Tensor):
    """The one stride of ``t``'s flattened spatial dims; ``None`` if they hold one element or
    fewer; ``False`` if they cannot be flattened without a copy."""
    dims = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    if not dims:
        return None
    for (size_a, stride_a), (size_b, stride_b) in zip(dims, dims[1:]):
        if stride_a != stride_b * size_b:
            return False
    return dims[-1][1]


def _view(t: torch.Tensor, channels_last: bool):
    """``(stride_n, stride_c, stride_s)`` of ``t`` as an ``(N, C, S)`` tensor whose unit stride
    lies on the spatial axis (``channels_last=False``) or the channel axis; ``None`` if ``t`` is
    not laid out that way."""
    ss = _spatial_stride(t)
    if ss is False:
        return None
    sn, sc = t.stride(0), t.stride(1)
    if channels_last:
        if sc != 1 and t.shape[1] != 1:
            return None
        return sn, 1, (ss if ss is not None else t.shape[1])
    if ss is not None and ss != 1:
        return None
    return sn, sc, 1


def _prepare(x: torch.Tensor, memory_format: torch.memory_format | None):
    """``(x, channels_last, memory_format)``: the kernel layout that writes ``memory_format``
    (default: :func:`output_memory_format`), with ``x`` copied once if it cannot be read in it."""
    if memory_format is None:
        memory_format = output_memory_format(x)
    S = math.prod(x.shape[2:])
    if S <= 1:
        # one spatial position: NCHW and channels-last coincide; vectorise along the channels
        channels_last = x.stride(1) == 1 or x.shape[1] == 1
    else:
        channels_last = memory_format != torch.contiguous_format
    if _view(x, channels_last) is None:
        x = x.contiguous(memory_format=memory_format)  # the one explicit copy: unreadable strides
    return x, channels_last, memory_format


def _empty(x: torch.Tensor, memory_format: torch.memory_format, dtype=None) -> torch.Tensor:
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format)


def _split_tile(C: int, S: int, channels_last: bool, tile: int) -> tuple[int, int]:
    """``(BLOCK_C, BLOCK_S)`` of a split-path tile: long along the contiguous axis."""
    if channels_last:
        block_c = min(_pow2(C), CL_BLOCK_C, tile)
        return block_c, min(_pow2(S), max(tile // block_c, 1))
    block_s = min(_pow2(S), tile)
    return min(_pow2(C), max(tile // block_s, 1)), block_s


def _chunking(N: int, C: int, S: int, block_c: int, block_s: int, num_sms: int, chunk_tiles: int | None):
    """``(CHUNK, NUM_CHUNKS)``: split the spatial axis until the reduction has enough programs."""
    s_tiles = triton.cdiv(S, block_s)
    if chunk_tiles is None:
        programs = N * triton.cdiv(C, block_c)
        chunks = max(1, min(s_tiles, triton.cdiv(PROGRAMS_PER_SM * num_sms, programs)))
        chunk_tiles = triton.cdiv(s_tiles, chunks)
    chunk = chunk_tiles * block_s
    return chunk, triton.cdiv(S, chunk)


def _check_sizes(N: int, C: int, S: int, G: int) -> None:
    """The kernels index samples, channels and positions with 32 bits and step up to one block
    or chunk past the last (loop increments, the last chunk's end), so each must stay below
    2^30; programs ``n * G + g`` and group indices are 32-bit too, so ``N * G < 2^31``."""
    if max(N, C, S) >= 2**30 or N * G >= 2**31:
        raise ValueError(
            f"group_norm_silu kernels index with 32 bits: need N, C and S below 2^30 and "
            f"N * num_groups below 2^31, got (N, C, S) = {(N, C, S)}, num_groups = {G}"
        )


@dataclass
class Launch:
    """One kernel launch of a plan: what :func:`run` passes to ``kernel[grid]``."""

    kernel: object
    grid: tuple
    args: tuple
    constexprs: dict
    num_warps: int
    num_stages: int = 1


def run(launches: list[Launch]) -> None:
    for launch in launches:
        launch.kernel[launch.grid](
            *launch.args, **launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages
        )


def plan_forward(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    silu: bool,
    *,
    memory_format: torch.memory_format | None = None,
    path: str | None = None,
    tile: int = TILE,
    chunk_tiles: int | None = None,
    num_sms: int | None = None,
):
    """``((y, mean, rstd), launches)``: the outputs (allocated, not yet written) and the kernel
    launches that compute them. See :func:`forward`."""
    N, C = x.shape[0], x.shape[1]
    S = math.prod(x.shape[2:])
    G = num_groups
    CPG = C // G
    _check_sizes(N, C, S, G)
    x, channels_last, memory_format = _prepare(x, memory_format)
    y = _empty(x, memory_format)
    mean = torch.zeros((N, G), dtype=torch.float32, device=x.device)
    rstd = torch.zeros((N, G), dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return (y, mean, rstd), []
    sx, sy = _view(x, channels_last), _view(y, channels_last)
    flags = dict(CHANNELS_LAST=channels_last, HAS_WEIGHT=weight is not None,
                 HAS_BIAS=bias is not None, SILU=silu)
    w = weight if weight is not None else x  # placeholder pointer, never read
    b = bias if bias is not None else x
    block_c, block_s = _pow2(CPG), _pow2(S)
    if path is None:
        path = "fused" if block_c * block_s <= FUSED_MAX_FWD else "split"
    if path == "fused":
        return (y, mean, rstd), [Launch(
            _gn_fwd_fused_kernel, (N * G,), (x, w, b, y, mean, rstd, S, G, CPG, *sx, *sy, eps),
            dict(**flags, BLOCK_C=block_c, BLOCK_S=block_s), _warps(block_c * block_s),
        )]
    block_c, block_s = _split_tile(C, S, channels_last, tile)
    num_cb = triton.cdiv(C, block_c)
    chunk, num_chunks = _chunking(N, C, S, block_c, block_s, num_sms or _num_sms(x.device), chunk_tiles)
    pmean = torch.empty((N, C, num_chunks), dtype=torch.float32, device=x.device)
    pm2 = torch.empty_like(pmean)
    warps = _warps(block_c * block_s)
    num_sb = triton.cdiv(S, block_s)
    return (y, mean, rstd), [
        Launch(_gn_fwd_partial_stats_kernel, (N * num_cb * num_chunks,),
               (x, pmean, pm2, C, S, num_cb, num_chunks, chunk, *sx),
               dict(CHANNELS_LAST=channels_last, BLOCK_C=block_c, BLOCK_S=block_s), warps),
        Launch(_gn_fwd_combine_kernel, (N * G,),
               (pmean, pm2, mean, rstd, S, CPG, num_chunks, chunk, eps),
               dict(BLOCK=min(_pow2(CPG * num_chunks), 1024)), 4),
        Launch(_gn_fwd_apply_kernel, (N * num_cb * num_sb,),
               (x, w, b, mean, rstd, y, C, S, G, CPG, num_cb, num_sb, *sx, *sy),
               dict(**flags, BLOCK_C=block_c, BLOCK_S=block_s), warps),
    ]


def forward(x, num_groups, weight, bias, eps, silu, **choices):
    """``(y, mean, rstd)``: ``y`` of ``x``'s shape and dtype in ``memory_format`` (default
    :func:`output_memory_format`); fp32 ``mean, rstd`` of shape ``(N, G)``.

    ``x`` is ``(N, C, *)`` in fp32/fp16/bf16 with any strides (NCHW, its channel slices and
    channels_last are read in place); ``weight``/``bias`` ``(C,)`` in ``x``'s dtype or fp32, or
    ``None``. Keywords ``path`` (``"fused"``/``"split"``), ``tile`` and ``chunk_tiles`` override
    the launcher's choices (tests use them to reach every path on small shapes).
    """
    outputs, launches = plan_forward(x, num_groups, weight, bias, eps, silu, **choices)
    run(launches)
    return outputs


def plan_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    num_groups: int,
    silu: bool,
    *,
    memory_format: torch.memory_format | None = None,
    path: str | None = None,
    tile: int = TILE,
    chunk_tiles: int | None = None,
    num_sms: int | None = None,
):
    """``((dx, dweight, dbias), launches)``; see :func:`backward`."""
    N, C = x.shape[0], x.shape[1]
    S = math.prod(x.shape[2:])
    G = num_groups
    CPG = C // G
    _check_sizes(N, C, S, G)
    x, channels_last, memory_format = _prepare(x, memory_format)
    sdy = _view(dy, channels_last)
    if sdy is None:  # the one explicit copy: dy laid out unlike x (e.g. expanded by a sum)
        dy = _empty(x, memory_format, dy.dtype).copy_(dy)
        sdy = _view(dy, channels_last)
    dx = _empty(x, memory_format)
    param = weight if weight is not None else bias
    dweight = None if weight is None else torch.zeros_like(weight)
    dbias = None if bias is None else torch.zeros_like(bias)
    if x.numel() == 0:
        return (dx, dweight, dbias), []
    sx, sdx = _view(x, channels_last), _view(dx, channels_last)
    flags = dict(CHANNELS_LAST=channels_last, HAS_WEIGHT=weight is not None,
                 HAS_BIAS=bias is not None, SILU=silu)
    w = weight if weight is not None else x  # placeholder pointer, never read
    b = bias if bias is not None else x
    sum_dz = torch.empty((N, C), dtype=torch.float32, device=x.device)
    sum_dz_xhat = torch.empty_like(sum_dz)
    block_c, block_s = _pow2(CPG), _pow2(S)
    if path is None:
        path = "fused" if block_c * block_s <= FUSED_MAX_BWD else "split"
    if path == "fused":
        launches = [Launch(
            _gn_bwd_fused_kernel, (N * G,),
            (x, dy, w, b, mean, rstd, dx, sum_dz, sum_dz_xhat, C, S, G, CPG, *sx, *sdy, *sdx),
            dict(**flags, BLOCK_C=block_c, BLOCK_S=block_s), _warps(block_c * block_s),
        )]
    else:
        block_c, block_s = _split_tile(C, S, channels_last, tile)
        num_cb = triton.cdiv(C, block_c)
        chunk, num_chunks = _chunking(N, C, S, block_c, block_s, num_sms or _num_sms(x.device), chunk_tiles)
        pa = torch.empty((N, C, num_chunks), dtype=torch.float32, device=x.device)
        pb = torch.empty_like(pa)
        c1 = torch.empty((N, G), dtype=torch.float32, device=x.device)
        c2 = torch.empty_like(c1)
        warps = _warps(block_c * block_s)
        group_block_c = min(_pow2(CPG), 64)
        num_sb = triton.cdiv(S, block_s)
        launches = [
            Launch(_gn_bwd_partial_kernel, (N * num_cb * num_chunks,),
                   (x, dy, w, b, mean, rstd, pa, pb, C, S, G, CPG, num_cb, num_chunks, chunk, *sx, *sdy),
                   dict(**flags, BLOCK_C=block_c, BLOCK_S=block_s), warps),
            Launch(_gn_bwd_group_kernel, (N * G,),
                   (pa, pb, w, sum_dz, sum_dz_xhat, c1, c2, S, G, CPG, num_chunks),
                   dict(HAS_WEIGHT=weight is not None, BLOCK_C=group_block_c,
                        BLOCK_K=min(_pow2(num_chunks), max(2048 // group_block_c, 1))), 4),
            Launch(_gn_bwd_dx_kernel, (N * num_cb * num_sb,),
                   (x, dy, w, b, mean, rstd, c1, c2, dx, C, S, G, CPG, num_cb, num_sb, *sx, *sdy, *sdx),
                   dict(**flags, BLOCK_C=block_c, BLOCK_S=block_s), warps),
        ]
    if param is not None:
        affine_block_c = min(_pow2(C), 128)
        dw = dweight if dweight is not None else torch.empty_like(param)
        db = dbias if dbias is not None else torch.empty_like(param)
        launches.append(Launch(
            _gn_bwd_affine_kernel, (triton.cdiv(C, affine_block_c),),
            (sum_dz, sum_dz_xhat, dw, db, N, C),
            dict(BLOCK_N=min(_pow2(N), 16), BLOCK_C=affine_block_c), 4,
        ))
    return (dx, dweight, dbias), launches


def backward(dy, x, mean, rstd, weight, bias, num_groups, silu, **choices):
    """``(dx, dweight, dbias)`` from the forward's fp32 ``mean, rstd``: ``dx`` in ``x``'s dtype
    and the forward's output layout, ``dweight``/``dbias`` in the parameters' dtype (``None`` where a parameter is
    ``None``). ``dy`` may have any strides (copied once when unlike ``x``'s layout)."""
    outputs, launches = plan_backward(dy, x, mean, rstd, weight, bias, num_groups, silu, **choices)
    run(launches)
    return outputs


# ----------------------------------------------------------------------------------------------
# Compile gate

_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

#: (shape, num_groups, layouts, dtypes, aligned, backward) the gate plans launches for.
#: ``aligned``: 128-bit loads are required of the streaming kernels for 16-bit dtypes. The
#: default set (about 20 configurations) reaches every kernel, both layouts, the largest tile of
#: each kernel, fp16, bf16 and fp32, and the arguments the JIT turns into constants when they
#: equal 1 (C/G, S); ``full=True`` plans every VQGAN shape in every dtype and layout (about 110
#: configurations, several minutes on two cores).
_GATE_PROBLEMS = [
    ((1, 128, 256, 256), 32, ("nchw", "channels_last"), (torch.float16,), True, True),  # split
    ((8, 512, 32, 32), 32, ("nchw",), (torch.float16,), True, False),  # fused forward, 16 warps
    ((8, 512, 16, 16), 32, ("channels_last",), (torch.bfloat16,), True, True),  # fused
    # G == C on the split path, and N = C/G = S = 1: arguments equal to 1 become constants
    ((1, 32, 256, 256), 32, ("nchw",), (torch.float16,), True, True),
    ((1, 8), 8, ("nchw",), (torch.float32,), False, True),
    # 2^32 elements per sample (planned on meta tensors): 64-bit strides
    ((2, 64, 8192, 8192), 32, ("nchw",), (torch.float16,), True, True),
]
_VQGAN_SHAPES = [(1, 128, 256, 256), (1, 256, 128, 128), (1, 512, 64, 64), (8, 512, 32, 32), (8, 512, 16, 16)]
_GATE_PROBLEMS_FULL = _GATE_PROBLEMS + [
    (shape, 32, ("nchw", "channels_last"), (torch.float16, torch.bfloat16, torch.float32), True, True)
    for shape in _VQGAN_SHAPES
] + [((2, 64, 8192, 8192), 32, ("channels_last",), (torch.float16,), True, True)]


#: kernels that stream x (and dy) and so must use 128-bit loads at aligned 16-bit shapes
_STREAMING = ("_gn_fwd_fused_kernel", "_gn_fwd_partial_stats_kernel", "_gn_fwd_apply_kernel",
              "_gn_bwd_fused_kernel", "_gn_bwd_partial_kernel", "_gn_bwd_dx_kernel")


def _gate_config(launch: Launch, aligned_shape: bool) -> GateConfig:
    """What the JIT would compile for ``launch``: pointer types, ints marked 16-divisible where
    their value is (as the runtime specialises them), the launch's constexprs and warps."""
    fn = launch.kernel
    signature, aligned, constexprs = {}, [], dict(launch.constexprs)
    for name, value in zip(fn.arg_names, launch.args):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
            aligned.append(name)  # fresh allocations and parameters: 16-byte aligned
        elif isinstance(value, bool) or not isinstance(value, int):
            signature[name] = "fp32"
        elif value == 1:
            signature[name] = "constexpr"  # the JIT turns integer arguments equal to 1 into constants
            constexprs[name] = 1
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                aligned.append(name)
    for name in launch.constexprs:
        signature[name] = "constexpr"
    flags = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in launch.constexprs.items())
    ones = [name for name in constexprs if name not in launch.constexprs]
    data_type = signature[fn.arg_names[0]][1:]  # x (or the partials) names the configuration
    wide = ",i64" if "i64" in signature.values() else ""
    return GateConfig(
        name=f"{fn.__name__}[{data_type},{flags},w{launch.num_warps}{wide}]"
        + (f"({'='.join(ones)}=1)" if ones else ""),
        kernel=fn, signature=signature, constexprs=constexprs, aligned=tuple(aligned),
        num_warps=launch.num_warps, num_stages=launch.num_stages,
        wide_loads=aligned_shape and fn.__name__ in _STREAMING and data_type != "fp32",
    )


def gate_configs(full: bool = False) -> list:
    """The distinct kernel configurations the launchers choose for the gate's problems (affine
    and SiLU on), planned on meta tensors. Unless ``full``, the small reduction kernels (which do
    not stream ``x``) are compiled in one configuration each."""
    configs, seen = [], set()
    problems = _GATE_PROBLEMS_FULL if full else _GATE_PROBLEMS
    for shape, groups, layouts, dtypes, aligned_shape, with_backward in problems:
        for layout in layouts:
            for dtype in dtypes:
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                x = torch.empty(shape, dtype=dtype, device="meta", memory_format=fmt)
                w = torch.empty(shape[1], dtype=dtype, device="meta")
                sms = 132  # plan as for an H100
                (_, mean, rstd), launches = plan_forward(x, groups, w, w, 1e-6, True, num_sms=sms)
                if with_backward:
                    dy = torch.empty_like(x)
                    launches += plan_backward(dy, x, mean, rstd, w, w, groups, True, num_sms=sms)[1]
                for launch in launches:
                    cfg = _gate_config(launch, aligned_shape)
                    streaming = launch.kernel.__name__ in _STREAMING
                    base, _, ones = cfg.name.partition("(")  # ones: arguments specialised to 1
                    key = cfg.name if full else base if streaming else launch.kernel.__name__ + ones
                    if key not in seen:  # the name holds everything but the weight's dtype
                        seen.add(key)
                        configs.append(cfg)
    return configs
