r"""The backward ``@triton.jit`` kernels of ``group_norm_silu`` (tiles, passes and paths as the
forward's, ``group_norm_silu_jit.py``).

With ``\hat x = (x-\mu) r``, ``z = \gamma_c \hat x + \beta_c`` recomputed from ``x`` and the saved
per-group ``mean``/``rstd``, and ``dz = dy \cdot \sigma(z)(1 + z(1-\sigma(z)))`` (``dz = dy``
without SiLU):

.. math::
    d\beta_c = \sum_{n,s} dz, \quad d\gamma_c = \sum_{n,s} dz\,\hat x, \quad
    dx = r\Big(\gamma_c dz - \frac1M\sum_{\text{group}}\gamma dz
                - \hat x \frac1M\sum_{\text{group}}\gamma dz\,\hat x\Big)

Pass 1 accumulates ``dz`` and ``dz * xhat`` per lane and reduces them per channel once; pass 2
(backwards) writes ``dx``. ``fused``: one program per block of whole groups, persistent;
``split``: per-channel partial sums over chunks, a small kernel per group, an elementwise kernel.
Both leave per-(sample, channel) sums that :func:`_gn_bwd_affine_kernel` adds over the batch, in
a fixed order, into ``dweight`` and ``dbias``. The split kernels of a channels-last ``x`` also read
an NCHW ``dy`` in place (``DY_CHANNELS_LAST=False``: ``dy`` addressed with its unit stride on the
positions, its channel rows clamped like NCHW loads; the compiler transposes the tile through
shared memory).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .group_norm_silu_jit import (_as_float, _chunk_of_program, _edge_mask, _group_block, _group_sum, _range_pointers,
                                  _second_pass_program)


@triton.jit
def _dz_xhat(x, dy, mean, rstd, w, b, SILU, SLOPE_FIRST: tl.constexpr = False):
    """``(dz, xhat)`` of a tile from per-channel ``[BLOCK_C]`` constants. ``SLOPE_FIRST``: the
    activation's derivative (a function of ``x`` alone) is formed in the branch and ``dy`` meets
    it once, after it -- fewer layout conversions where ``dy`` is laid out unlike ``x``, more
    registers where it is not."""
    xhat = (x - mean[:, None]) * rstd[:, None]
    if SLOPE_FIRST:
        slope = tl.full(xhat.shape, 1.0, tl.float32)
        if SILU:
            sig = tl.sigmoid(xhat * w[:, None] + b[:, None])
            slope = sig * (1.0 + (xhat * w[:, None] + b[:, None]) * (1.0 - sig))
        dy = dy * slope
    elif SILU:
        sig = tl.sigmoid(xhat * w[:, None] + b[:, None])
        dy = dy * sig * (1.0 + (xhat * w[:, None] + b[:, None]) * (1.0 - sig))
    return dy, xhat


@triton.jit
def _dz_sums(x_ptr, dy_ptr, n, c, cmask, lo, hi, C, mean, rstd, w, b, SILU,
             stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys,
             CHANNELS_LAST: tl.constexpr, BLOCK_S: tl.constexpr, DY_CHANNELS_LAST: tl.constexpr):
    """Per channel ``(sum dz, sum dz * xhat)`` over positions ``lo:hi``; first and last tile
    masked (their masked lanes zeroed: an infinite rstd makes 0 * inf there), the middle ones
    not (lanes of masked channels hold garbage: their sums are for no one)."""
    px, step_x = _range_pointers(x_ptr, n, c, lo, C, stride_xn, stride_xc, stride_xs, CHANNELS_LAST, BLOCK_S)
    pdy, step_dy = _range_pointers(dy_ptr, n, c, lo, C, stride_dyn, stride_dyc, stride_dys, DY_CHANNELS_LAST, BLOCK_S)
    length = hi - lo
    tiles = (length + BLOCK_S - 1) // BLOCK_S
    mask = _edge_mask(cmask, 0, length, BLOCK_S)
    x = tl.load(px, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(pdy, mask=mask, other=0.0).to(tl.float32)
    dz, xhat = _dz_xhat(x, dy, mean, rstd, w, b, SILU)
    acc_a = tl.where(mask, dz, 0.0)
    acc_b = tl.where(mask, dz * xhat, 0.0)
    for t in range(1, tiles - 1):
        x = tl.load(px + t * step_x).to(tl.float32)
        dy = tl.load(pdy + t * step_dy).to(tl.float32)
        dz, xhat = _dz_xhat(x, dy, mean, rstd, w, b, SILU)
        acc_a += dz
        acc_b += dz * xhat
    if tiles > 1:
        t = tiles - 1
        mask = _edge_mask(cmask, t, length, BLOCK_S)
        x = tl.load(px + t * step_x, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(pdy + t * step_dy, mask=mask, other=0.0).to(tl.float32)
        dz, xhat = _dz_xhat(x, dy, mean, rstd, w, b, SILU)
        acc_a += tl.where(mask, dz, 0.0)
        acc_b += tl.where(mask, dz * xhat, 0.0)
    return tl.sum(acc_a, axis=1), tl.sum(acc_b, axis=1)


@triton.jit
def _dx_tile(px, pdy, pdx, load_mask, store_mask, mean, rstd, w, b, c1, c2, SILU, MIXED: tl.constexpr):
    x = tl.load(px, mask=load_mask).to(tl.float32)
    dy = tl.load(pdy, mask=load_mask).to(tl.float32)
    dz, xhat = _dz_xhat(x, dy, mean, rstd, w, b, SILU, MIXED)
    dx = rstd[:, None] * (dz * w[:, None] - c2[:, None] - xhat * c1[:, None])
    tl.store(pdx, dx.to(pdx.dtype.element_ty), mask=store_mask)


@triton.jit
def _dx(x_ptr, dy_ptr, dx_ptr, n, c, cmask, lo, hi, C, mean, rstd, w, b, c1, c2, SILU,
        stride_xn, stride_xc, stride_xs, stride_dyn, stride_dyc, stride_dys, stride_dxn, stride_dxc, stride_dxs,
        CHANNELS_LAST: tl.constexpr, BLOCK_S: tl.constexpr, DY_CHANNELS_LAST: tl.constexpr):
    """``dx[n, c, lo:hi] = rstd * (w*dz - c2 - xhat*c1)``, last tile first."""
    px, step_x = _range_pointers(x_ptr, n, c, lo, C, stride_xn, stride_xc, stride_xs, CHANNELS_LAST, BLOCK_S)
    pdy, step_dy = _range_pointers(dy_ptr, n, c, lo, C, stride_dyn, stride_dyc, stride_dys, DY_CHANNELS_LAST, BLOCK_S)
    pdx, step_dx = _range_pointers(dx_ptr, n, c, lo, C, stride_dxn, stride_dxc, stride_dxs, CHANNELS_LAST, BLOCK_S,
                                   False)
    length = hi - lo
    tiles = (length + BLOCK_S - 1) // BLOCK_S
    if tiles > 1:
        t = tiles - 1
        mask = _edge_mask(cmask, t, length, BLOCK_S)
        _dx_tile(px + t * step_x, pdy + t * step_dy, pdx + t * step_dx, mask, mask, mean, rstd, w, b, c1, c2, SILU,
                 CHANNELS_LAST != DY_CHANNELS_LAST)
    for i in range(1, tiles - 1):
        t = tiles - 1 - i
        _dx_tile(px + t * step_x, pdy + t * step_dy, pdx + t * step_dx, None, cmask[:, None], mean, rstd, w, b, c1,
                 c2, SILU, CHANNELS_LAST != DY_CHANNELS_LAST)
    mask = _edge_mask(cmask, 0, length, BLOCK_S)
    _dx_tile(px, pdy, pdx, mask, mask, mean, rstd, w, b, c1, c2, SILU, CHANNELS_LAST != DY_CHANNELS_LAST)


@triton.jit
def _channel_constants(mean_ptr, rstd_ptr, w_ptr, b_ptr, grp, c, cmask):
    """Per channel ``(mean, rstd, w, b)`` in fp32: the group statistics at ``grp``, the
    parameters at ``c``."""
    mean = tl.load(mean_ptr + grp, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + grp, mask=cmask, other=0.0)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    return mean, rstd, w, tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)


# ----------------------------------------------------------------------------------------------
# Fused


@triton.jit(do_not_specialize=["SILU"])
def _gn_bwd_fused_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, dx_ptr, sum_dz_ptr, sum_dz_xhat_ptr,
    C, S, G, CPG, UNIT_C, NUM_GB, NUM_UNITS,
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    stride_dxn, stride_dxc, stride_dxs,
    SILU,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Units as the fused forward's: ``dx`` of whole groups, and their per-channel
    ``sum dz``, ``sum dz*xhat`` into ``[N, C]`` buffers for the parameter gradients."""
    for u in range(tl.program_id(0), NUM_UNITS, tl.num_programs(0)):
        n, c, cl, valid, grp = _group_block(u, C, G, CPG, UNIT_C, NUM_GB, BLOCK_C)
        mean, rstd, w, b = _channel_constants(mean_ptr, rstd_ptr, w_ptr, b_ptr, grp, c, valid)
        lo = u * 0  # positions [0, S) as tensors (S may arrive as the constant 1)
        hi = lo + S
        sum_a, sum_b = _dz_sums(x_ptr, dy_ptr, n, c, valid, lo, hi, C, mean, rstd, w, b, SILU, stride_xn, stride_xc,
                                stride_xs, stride_dyn, stride_dyc, stride_dys, CHANNELS_LAST, BLOCK_S, CHANNELS_LAST)
        nc = n.to(tl.int64) * C + c
        tl.store(sum_dz_ptr + nc, sum_a, mask=valid)
        tl.store(sum_dz_xhat_ptr + nc, sum_b, mask=valid)
        count = _as_float(CPG) * S
        c2 = _group_sum((w * sum_a)[None, :], cl, valid, CPG) / count
        c1 = _group_sum((w * sum_b)[None, :], cl, valid, CPG) / count
        _dx(x_ptr, dy_ptr, dx_ptr, n, c, valid, lo, hi, C, mean, rstd, w, b, c1, c2, SILU, stride_xn, stride_xc,
            stride_xs, stride_dyn, stride_dyc, stride_dys, stride_dxn, stride_dxc, stride_dxs, CHANNELS_LAST,
            BLOCK_S, CHANNELS_LAST)


# ----------------------------------------------------------------------------------------------
# Split


@triton.jit(do_not_specialize=["SILU"])
def _gn_bwd_partial_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, pa_ptr, pb_ptr,
    C, S, G, CPG, NUM_CB, NUM_CHUNKS, TILES,
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    SILU,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, DY_CHANNELS_LAST: tl.constexpr,
):
    """Per-channel ``sum dz`` and ``sum dz*xhat`` over one chunk (layout as the forward partial
    statistics): ``pa/pb[(n*C + c)*NUM_CHUNKS + k]``. ``dy`` may be laid out unlike ``x``
    (``DY_CHANNELS_LAST``: its unit stride on the channels or on the positions)."""
    n, k, c, cmask, lo, hi = _chunk_of_program(tl.program_id(0), C, S, NUM_CB, NUM_CHUNKS, TILES, BLOCK_C, BLOCK_S)
    mean, rstd, w, b = _channel_constants(mean_ptr, rstd_ptr, w_ptr, b_ptr, n * G + c // CPG, c, cmask)
    sum_a, sum_b = _dz_sums(x_ptr, dy_ptr, n, c, cmask, lo, hi, C, mean, rstd, w, b, SILU, stride_xn, stride_xc,
                            stride_xs, stride_dyn, stride_dyc, stride_dys, CHANNELS_LAST, BLOCK_S, DY_CHANNELS_LAST)
    out = (n.to(tl.int64) * C + c) * NUM_CHUNKS + k
    tl.store(pa_ptr + out, sum_a, mask=cmask)
    tl.store(pb_ptr + out, sum_b, mask=cmask)


@triton.jit
def _gn_bwd_group_kernel(
    pa_ptr, pb_ptr, w_ptr, sum_dz_ptr, sum_dz_xhat_ptr, c1_ptr, c2_ptr,
    S, G, CPG, NUM_CHUNKS,
    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
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
        w = tl.load(w_ptr + g * CPG + cl, mask=cmask, other=0.0).to(tl.float32)
        acc2 += sum_a * w
        acc1 += sum_b * w
    count = _as_float(CPG) * S
    tl.store(c2_ptr + pid, tl.sum(acc2, axis=0) / count)
    tl.store(c1_ptr + pid, tl.sum(acc1, axis=0) / count)


@triton.jit(do_not_specialize=["SILU"])
def _gn_bwd_dx_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, c1_ptr, c2_ptr, dx_ptr,
    C, S, G, CPG, NUM_CB, NUM_CHUNKS, TILES,
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    stride_dxn, stride_dxc, stride_dxs,
    SILU,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, DY_CHANNELS_LAST: tl.constexpr,
):
    """``dx`` over one chunk (its own chunking; programs and tiles in reverse order;
    ``dy`` laid out as ``DY_CHANNELS_LAST`` says)."""
    pid = _second_pass_program()
    n, k, c, cmask, lo, hi = _chunk_of_program(pid, C, S, NUM_CB, NUM_CHUNKS, TILES, BLOCK_C, BLOCK_S)
    grp = n * G + c // CPG
    mean, rstd, w, b = _channel_constants(mean_ptr, rstd_ptr, w_ptr, b_ptr, grp, c, cmask)
    c1 = tl.load(c1_ptr + grp, mask=cmask, other=0.0)
    c2 = tl.load(c2_ptr + grp, mask=cmask, other=0.0)
    _dx(x_ptr, dy_ptr, dx_ptr, n, c, cmask, lo, hi, C, mean, rstd, w, b, c1, c2, SILU, stride_xn, stride_xc, stride_xs,
        stride_dyn, stride_dyc, stride_dys, stride_dxn, stride_dxc, stride_dxs, CHANNELS_LAST, BLOCK_S,
        DY_CHANNELS_LAST)


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
