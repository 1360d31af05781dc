r"""The ``@triton.jit`` kernels of ``group_norm_silu``: group norm, affine, optional SiLU.

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
values shifted by one sample of their own row, so a mean far from zero does not cancel. The
kernels always take ``w`` and ``b`` (the launcher passes ones and zeros for a norm without them).

``fused`` kernels hold a whole group in one ``[BLOCK_C, BLOCK_S]`` tile of one program; ``split``
kernels spread it over programs: per-channel partial sums over chunks of the spatial axis, a
small kernel per group, an elementwise kernel per tile. Fixed-order reductions, no atomics.

Layouts: every kernel indexes a tensor as ``(n, c, s)`` with ``s`` the flattened spatial position.
``CHANNELS_LAST=False``: ``s`` has stride 1 (NCHW and its channel slices);
``CHANNELS_LAST=True``: ``c`` has stride 1 (channels_last). The compiler vectorises along whichever
axis has the literal unit stride. Sample and row offsets are 64-bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------
# The shared prologue: which tile a program owns, and what it loads for it


@triton.jit
def _offsets(c, s, stride_c, stride_s, CHANNELS_LAST: tl.constexpr):
    """64-bit offsets, within one sample, of channels ``c`` and spatial positions ``s``."""
    if CHANNELS_LAST:
        offs = c.to(tl.int64) + s.to(tl.int64) * stride_s
    else:
        offs = c.to(tl.int64) * stride_c + s
    return offs


@triton.jit
def _load_tile(ptr, n, c, s, stride_n, stride_c, stride_s, mask, CHANNELS_LAST: tl.constexpr):
    """The fp32 ``[len(c), len(s)]`` tile of sample ``n`` (0 where masked)."""
    offs = _offsets(c[:, None], s[None, :], stride_c, stride_s, CHANNELS_LAST)
    return tl.load(ptr + n.to(tl.int64) * stride_n + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_tile(ptr, value, n, c, s, stride_n, stride_c, stride_s, mask, CHANNELS_LAST: tl.constexpr):
    offs = _offsets(c[:, None], s[None, :], stride_c, stride_s, CHANNELS_LAST)
    tl.store(ptr + n.to(tl.int64) * stride_n + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _group_tile(pid, S, G, CPG, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Fused kernels: program ``pid = n*G + g`` holds the whole group ``(n, g)``:
    ``(n, g, c, s, cmask, mask)``."""
    n = pid // G
    g = pid % G
    cl = tl.arange(0, BLOCK_C)
    s = tl.arange(0, BLOCK_S)
    cmask = cl < CPG
    return n, g, g * CPG + cl, s, cmask, cmask[:, None] & (s < S)[None, :]


@triton.jit
def _chunk_of_program(pid, C, S, NUM_CB, NUM_CHUNKS, CHUNK, BLOCK_C: tl.constexpr):
    """Partial-sum kernels: program ``(n, cb, k)`` (chunks fastest) owns channel block ``cb`` of
    sample ``n`` over positions ``[k*CHUNK, min((k+1)*CHUNK, S))``: ``(n, k, c, cmask, lo, hi)``."""
    k = pid % NUM_CHUNKS
    rest = pid // NUM_CHUNKS
    n = rest // NUM_CB
    c = (rest % NUM_CB) * BLOCK_C + tl.arange(0, BLOCK_C)
    lo = k * CHUNK
    return n, k, c, c < C, lo, tl.minimum(lo + CHUNK, S)


@triton.jit
def _tile_of_program(pid, C, S, NUM_CB, NUM_SB, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Split elementwise kernels: the ``[BLOCK_C, BLOCK_S]`` tile of program ``pid`` (spatial
    blocks fastest, then channel blocks, then samples): ``(n, c, s, cmask, mask)``."""
    sb = pid % NUM_SB
    rest = pid // NUM_SB
    n = rest // NUM_CB
    c = (rest % NUM_CB) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = sb * BLOCK_S + tl.arange(0, BLOCK_S)
    cmask = c < C
    return n, c, s, cmask, cmask[:, None] & (s < S)[None, :]


@triton.jit
def _channel_params(w_ptr, b_ptr, c, cmask):
    """Per-channel ``(w, b)`` in fp32."""
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    return w, tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)


@triton.jit
def _group_stats(ptr_a, ptr_b, n, c, cmask, G, CPG):
    """Per-channel values of two ``(N, G)`` per-group arrays (mean and rstd, or c1 and c2)."""
    grp = n * G + c // CPG
    return tl.load(ptr_a + grp, mask=cmask, other=0.0), tl.load(ptr_b + grp, mask=cmask, other=0.0)


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
def _dz(dy, xhat, w, b, SILU: tl.constexpr):
    """The gradient before the activation: ``dz`` at ``z = w*xhat + b`` (per-channel ``w``, ``b``)."""
    if SILU:
        dy = _silu_grad(dy, xhat * w[:, None] + b[:, None])
    return dy


# ----------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _gn_fwd_fused_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
    S, G, CPG,
    stride_xn, stride_xc, stride_xs,
    stride_yn, stride_yc, stride_ys,
    eps,
    CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """One program per (n, g): the group in one tile, exact two-pass statistics."""
    pid = tl.program_id(0)
    n, g, c, s, cmask, mask = _group_tile(pid, S, G, CPG, BLOCK_C, BLOCK_S)
    x = _load_tile(x_ptr, n, c, s, stride_xn, stride_xc, stride_xs, mask, CHANNELS_LAST)
    # shift by the group's first element: sums of x - shift do not cancel when |mean| >> std
    shift = tl.load(x_ptr + n.to(tl.int64) * stride_xn
                    + _offsets(g * CPG, g * 0, stride_xc, stride_xs, CHANNELS_LAST)).to(tl.float32)
    count = _as_float(CPG) * S
    mean = shift + tl.sum(tl.sum(tl.where(mask, x - shift, 0.0), axis=1), axis=0) / count
    d = tl.where(mask, x - mean, 0.0)
    var = tl.sum(tl.sum(d * d, axis=1), axis=0) / count
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    w, b = _channel_params(w_ptr, b_ptr, c, cmask)
    z = d * rstd * w[:, None] + b[:, None]
    if SILU:
        z = z * tl.sigmoid(z)
    _store_tile(y_ptr, z, n, c, s, stride_yn, stride_yc, stride_ys, mask, CHANNELS_LAST)
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
    n, k, c, cmask, s_lo, s_hi = _chunk_of_program(tl.program_id(0), C, S, NUM_CB, NUM_CHUNKS, CHUNK, BLOCK_C)
    shift = tl.load(x_ptr + n.to(tl.int64) * stride_xn + _offsets(c, s_lo, stride_xc, stride_xs, CHANNELS_LAST),
                    mask=cmask, other=0.0).to(tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for s0 in range(s_lo, s_hi, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = cmask[:, None] & (s < s_hi)[None, :]
        x = _load_tile(x_ptr, n, c, s, stride_xn, stride_xc, stride_xs, mask, CHANNELS_LAST)
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
def _partial_means(pmean_ptr, base, j0, total, S, NUM_CHUNKS, CHUNK, BLOCK: tl.constexpr):
    """Partials ``j0 + [0, BLOCK)`` of a group (of ``total``, chunk fastest): ``(j, mask, positions
    each covers, their means)``."""
    j = j0 + tl.arange(0, BLOCK)
    m = j < total
    cnt = tl.minimum(CHUNK, S - (j % NUM_CHUNKS) * CHUNK).to(tl.float32)
    return j, m, cnt, tl.load(pmean_ptr + base + j, mask=m, other=0.0)


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
        j, m, cnt, pm = _partial_means(pmean_ptr, base, j0, total, S, NUM_CHUNKS, CHUNK, BLOCK)
        acc += tl.where(m, cnt * (pm - pivot), 0.0)
    mean = pivot + tl.sum(acc, axis=0) / count
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j0 in range(0, total, BLOCK):
        j, m, cnt, pm = _partial_means(pmean_ptr, base, j0, total, S, NUM_CHUNKS, CHUNK, BLOCK)
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
    CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Elementwise ``y = act(((x - mean) * rstd) * w + b)`` on one ``[BLOCK_C, BLOCK_S]`` tile."""
    n, c, s, cmask, mask = _tile_of_program(tl.program_id(0), C, S, NUM_CB, NUM_SB, BLOCK_C, BLOCK_S)
    mean, rstd = _group_stats(mean_ptr, rstd_ptr, n, c, cmask, G, CPG)
    w, b = _channel_params(w_ptr, b_ptr, c, cmask)
    x = _load_tile(x_ptr, n, c, s, stride_xn, stride_xc, stride_xs, mask, CHANNELS_LAST)
    z = (x - mean[:, None]) * (rstd * w)[:, None] + b[:, None]
    if SILU:
        z = z * tl.sigmoid(z)
    _store_tile(y_ptr, z, n, c, s, stride_yn, stride_yc, stride_ys, mask, CHANNELS_LAST)


# ----------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _gn_bwd_fused_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, dx_ptr, sum_dz_ptr, sum_dz_xhat_ptr,
    C, S, G, CPG,
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    stride_dxn, stride_dxc, stride_dxs,
    CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """One program per (n, g): ``dx`` of the whole group, and per-channel ``sum dz``,
    ``sum dz*xhat`` into ``[N, C]`` buffers for the weight / bias gradients."""
    pid = tl.program_id(0)
    n, g, c, s, cmask, mask = _group_tile(pid, S, G, CPG, BLOCK_C, BLOCK_S)
    mean = tl.load(mean_ptr + pid)
    rstd = tl.load(rstd_ptr + pid)
    w, b = _channel_params(w_ptr, b_ptr, c, cmask)
    x = _load_tile(x_ptr, n, c, s, stride_xn, stride_xc, stride_xs, mask, CHANNELS_LAST)
    dy = _load_tile(dy_ptr, n, c, s, stride_dyn, stride_dyc, stride_dys, mask, CHANNELS_LAST)
    xhat = (x - mean) * rstd
    dz = tl.where(mask, _dz(dy, xhat, w, b, SILU), 0.0)
    sum_dz = tl.sum(dz, axis=1)
    sum_dz_xhat = tl.sum(tl.where(mask, dz * xhat, 0.0), axis=1)
    count = _as_float(CPG) * S
    c2 = tl.sum(w * sum_dz, axis=0) / count
    c1 = tl.sum(w * sum_dz_xhat, axis=0) / count
    dx = rstd * (dz * w[:, None] - c2 - xhat * c1)
    _store_tile(dx_ptr, dx, n, c, s, stride_dxn, stride_dxc, stride_dxs, mask, CHANNELS_LAST)
    nc = n.to(tl.int64) * C + c
    tl.store(sum_dz_ptr + nc, sum_dz, mask=cmask)
    tl.store(sum_dz_xhat_ptr + nc, sum_dz_xhat, mask=cmask)


@triton.jit
def _gn_bwd_partial_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, pa_ptr, pb_ptr,
    C, S, G, CPG, NUM_CB, NUM_CHUNKS, CHUNK,
    stride_xn, stride_xc, stride_xs,
    stride_dyn, stride_dyc, stride_dys,
    CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Per-channel ``sum dz`` and ``sum dz*xhat`` over one spatial chunk (layout as the forward
    partial statistics): ``pa/pb[(n*C + c)*NUM_CHUNKS + k]``."""
    n, k, c, cmask, s_lo, s_hi = _chunk_of_program(tl.program_id(0), C, S, NUM_CB, NUM_CHUNKS, CHUNK, BLOCK_C)
    mean, rstd = _group_stats(mean_ptr, rstd_ptr, n, c, cmask, G, CPG)
    w, b = _channel_params(w_ptr, b_ptr, c, cmask)
    acc_a = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
    for s0 in range(s_lo, s_hi, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        mask = cmask[:, None] & (s < s_hi)[None, :]
        x = _load_tile(x_ptr, n, c, s, stride_xn, stride_xc, stride_xs, mask, CHANNELS_LAST)
        dy = _load_tile(dy_ptr, n, c, s, stride_dyn, stride_dyc, stride_dys, mask, CHANNELS_LAST)
        xhat = (x - mean[:, None]) * rstd[:, None]
        dz = tl.where(mask, _dz(dy, xhat, w, b, SILU), 0.0)
        acc_a += dz
        acc_b += tl.where(mask, dz * xhat, 0.0)
    out = (n.to(tl.int64) * C + c) * NUM_CHUNKS + k
    tl.store(pa_ptr + out, tl.sum(acc_a, axis=1), mask=cmask)
    tl.store(pb_ptr + out, tl.sum(acc_b, axis=1), mask=cmask)


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
    CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Elementwise ``dx = rstd * (w*dz - c2 - xhat*c1)`` on one ``[BLOCK_C, BLOCK_S]`` tile."""
    n, c, s, cmask, mask = _tile_of_program(tl.program_id(0), C, S, NUM_CB, NUM_SB, BLOCK_C, BLOCK_S)
    mean, rstd = _group_stats(mean_ptr, rstd_ptr, n, c, cmask, G, CPG)
    c1, c2 = _group_stats(c1_ptr, c2_ptr, n, c, cmask, G, CPG)
    w, b = _channel_params(w_ptr, b_ptr, c, cmask)
    x = _load_tile(x_ptr, n, c, s, stride_xn, stride_xc, stride_xs, mask, CHANNELS_LAST)
    dy = _load_tile(dy_ptr, n, c, s, stride_dyn, stride_dyc, stride_dys, mask, CHANNELS_LAST)
    xhat = (x - mean[:, None]) * rstd[:, None]
    dz = _dz(dy, xhat, w, b, SILU)
    dx = rstd[:, None] * (dz * w[:, None] - c2[:, None] - xhat * c1[:, None])
    _store_tile(dx_ptr, dx, n, c, s, stride_dxn, stride_dxc, stride_dxs, mask, CHANNELS_LAST)
