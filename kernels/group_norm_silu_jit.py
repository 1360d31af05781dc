r"""The forward ``@triton.jit`` kernels of ``group_norm_silu`` and the pieces the backward shares.

For sample ``n`` and group ``g`` (channels ``c`` with ``c // (C/G) == g``; ``M = (C/G)*S`` elements
over the group's channels and the ``S`` spatial positions):

.. math::
    \mu = \frac1M \sum x, \quad r = \Big(\frac1M \sum (x-\mu)^2 + \epsilon\Big)^{-1/2}, \quad
    z = (x-\mu)\, r\, \gamma_c + \beta_c, \quad y = z\,\sigma(z) \ \text{(or } y = z\text{)}

**Tiles.** A program works on ``[BLOCK_C, BLOCK_S]`` tiles: ``BLOCK_C`` channels by ``BLOCK_S``
positions of one sample, with unit stride on the positions (``CHANNELS_LAST=False``: NCHW and its
channel slices; a tile with ``BLOCK_C = 1`` is a 1-D run of one channel) or on the channels
(``CHANNELS_LAST=True``). It walks a range of positions tile by tile: full tiles load without a
position mask (so they vectorise), the remainder is one masked tile.

**Statistics in one pass.** Each lane accumulates ``d = x - p`` and ``d*d`` in fp32, where the
pivot ``p`` is its channel's mean over the range's first tile; the lanes are reduced once, at
the end (no reduction, hence no barrier, per tile). Shifting by a value of the data's own scale
keeps ``sum d^2 - (sum d)^2 / n`` free of the cancellation that ruins ``E[x^2] - E[x]^2`` when
``|mean| >> std``; per-channel results are merged exactly with Chan's formula
(``M2 = sum M2_i + sum n_i (mean_i - mean)^2``).

**Second pass.** Whatever reads a range twice reads it the second time backwards, last tile
first: the tiles the first pass read last are the likeliest to still be in L2.

Kernels: ``fused`` (one program per block of whole groups, persistent over the grid: statistics,
then the normalisation, reading the group twice with the second read served by L2 when the
programs' working set fits there) and ``split`` (per-channel partial moments over chunks of the
positions spread over the whole GPU, a small kernel that merges them per group and folds in the
affine parameters, then an elementwise kernel). Fixed-order reductions, no atomics: results are
bit-identical run to run. Sample and row offsets are 64-bit; ``SILU`` is a runtime flag.
"""

from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------
# Shared pieces: addressing, the two passes over a range of positions


@triton.jit
def _tile_offsets(c, s, stride_c, stride_s, CHANNELS_LAST: tl.constexpr):
    """64-bit offsets ``[len(c), len(s)]`` of channels ``c`` at positions ``s`` of one sample."""
    if CHANNELS_LAST:
        offs = c.to(tl.int64)[:, None] + s.to(tl.int64)[None, :] * stride_s
    else:
        offs = c.to(tl.int64)[:, None] * stride_c + s[None, :]
    return offs


@triton.jit
def _range_pointers(ptr, n, c, lo, C, stride_n, stride_c, stride_s,
                    CHANNELS_LAST: tl.constexpr, BLOCK_S: tl.constexpr, LOADS: tl.constexpr = True):
    """``(pointers of the tile at position lo, 64-bit step from one tile to the next)``.

    The middle tiles of a range load without a mask (a masked load in a loop keeps ptxas from
    issuing a tile's loads together), so every lane must address memory of this sample: NCHW
    rows past the last channel read the last channel instead; channels-last rows past ``C`` read
    the next position's first channels, which exist while a masked tile follows (the last).
    Stores (``LOADS=False``) are always masked and address the lanes' own channels."""
    if LOADS and not CHANNELS_LAST:
        c = tl.minimum(c, C - 1)
    base = ptr + n.to(tl.int64) * stride_n + lo.to(tl.int64) * stride_s
    step = tl.full([], BLOCK_S, tl.int64) * stride_s  # stride_s may be the constant 1
    return base + _tile_offsets(c, tl.arange(0, BLOCK_S), stride_c, stride_s, CHANNELS_LAST), step


@triton.jit
def _edge_mask(cmask, t, length, BLOCK_S: tl.constexpr):
    """The mask of a range's first or last tile ``t``: its channels, positions before ``length``."""
    s = t * BLOCK_S + tl.arange(0, BLOCK_S)
    return cmask[:, None] & (s < length)[None, :]


@triton.jit
def _moments(x_ptr, n, c, cmask, lo, hi, C, stride_n, stride_c, stride_s,
             CHANNELS_LAST: tl.constexpr, BLOCK_S: tl.constexpr):
    """Per-channel ``(mean, M2)`` of ``x[n, c, lo:hi]`` (``[BLOCK_C]`` each, fp32), one pass.
    Lanes of masked channels hold garbage: their results are for no one."""
    px, step = _range_pointers(x_ptr, n, c, lo, C, stride_n, stride_c, stride_s, CHANNELS_LAST, BLOCK_S)
    length = hi - lo
    tiles = (length + BLOCK_S - 1) // BLOCK_S
    mask = _edge_mask(cmask, 0, length, BLOCK_S)
    x = tl.load(px, mask=mask, other=0.0).to(tl.float32)
    pivot = tl.sum(x, axis=1) / tl.minimum(length, BLOCK_S).to(tl.float32)
    d = tl.where(mask, x - pivot[:, None], 0.0)
    acc1 = d
    acc2 = d * d
    for t in range(1, tiles - 1):
        d = tl.load(px + t * step).to(tl.float32) - pivot[:, None]
        acc1 += d
        acc2 += d * d
    if tiles > 1:
        mask = _edge_mask(cmask, tiles - 1, length, BLOCK_S)
        x = tl.load(px + (tiles - 1) * step, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - pivot[:, None], 0.0)
        acc1 += d
        acc2 += d * d
    s1 = tl.sum(acc1, axis=1)
    count = length.to(tl.float32)
    return pivot + s1 / count, tl.maximum(tl.sum(acc2, axis=1) - s1 * (s1 / count), 0.0)


@triton.jit
def _normalize(x, mean, scale, shift, SILU):
    """``act((x - mean) * scale + shift)`` with per-channel ``[BLOCK_C]`` constants."""
    z = (x - mean[:, None]) * scale[:, None] + shift[:, None]
    if SILU:
        z = z * tl.sigmoid(z)
    return z


@triton.jit
def _apply_tile(px, py, load_mask, store_mask, mean, scale, shift, SILU):
    x = tl.load(px, mask=load_mask).to(tl.float32)
    y = _normalize(x, mean, scale, shift, SILU)
    tl.store(py, y.to(py.dtype.element_ty), mask=store_mask)


@triton.jit
def _apply(x_ptr, y_ptr, n, c, cmask, lo, hi, C, mean, scale, shift, SILU,
           stride_xn, stride_xc, stride_xs, stride_yn, stride_yc, stride_ys,
           CHANNELS_LAST: tl.constexpr, BLOCK_S: tl.constexpr):
    """``y[n, c, lo:hi] = act((x - mean) * scale + shift)``, last tile first."""
    px, step_x = _range_pointers(x_ptr, n, c, lo, C, stride_xn, stride_xc, stride_xs, CHANNELS_LAST, BLOCK_S)
    py, step_y = _range_pointers(y_ptr, n, c, lo, C, stride_yn, stride_yc, stride_ys, CHANNELS_LAST, BLOCK_S, False)
    length = hi - lo
    tiles = (length + BLOCK_S - 1) // BLOCK_S
    if tiles > 1:
        t = tiles - 1
        mask = _edge_mask(cmask, t, length, BLOCK_S)
        _apply_tile(px + t * step_x, py + t * step_y, mask, mask, mean, scale, shift, SILU)
    for i in range(1, tiles - 1):
        t = tiles - 1 - i
        _apply_tile(px + t * step_x, py + t * step_y, None, cmask[:, None], mean, scale, shift, SILU)
    mask = _edge_mask(cmask, 0, length, BLOCK_S)
    _apply_tile(px, py, mask, mask, mean, scale, shift, SILU)


@triton.jit
def _group_block(u, C, G, CPG, UNIT_C, NUM_GB, BLOCK_C: tl.constexpr):
    """Fused kernels: unit ``u = n * NUM_GB + gb`` holds the ``UNIT_C <= BLOCK_C`` channels of
    whole groups from ``gb * UNIT_C`` on, of sample ``n``: ``(n, c, cl, valid, grp)`` with ``cl``
    the channel's index in the unit and ``grp = n*G + c // CPG`` its group's index in the
    ``(N, G)`` statistics. (A 16-divisible ``UNIT_C`` keeps channels-last rows aligned.)"""
    n = u // NUM_GB
    cl = tl.arange(0, BLOCK_C)
    c = (u % NUM_GB) * UNIT_C + cl
    valid = (cl < UNIT_C) & (c < C)
    return n, c, cl, valid, n * G + c // CPG


@triton.jit
def _group_sum(v, cl, valid, CPG):
    """For each channel ``i`` of a block of whole groups: ``sum_j v[i, j]`` over the channels
    ``j`` of its group (``v`` is ``[BLOCK_C, BLOCK_C]``, or ``[1, BLOCK_C]`` for a per-channel
    value)."""
    gl = cl // CPG
    same = (gl[:, None] == gl[None, :]) & valid[None, :]
    return tl.sum(tl.where(same, v, 0.0), axis=1)


@triton.jit
def _as_float(n):
    """``n`` as fp32 (integer arguments equal to 1 arrive as constexprs, which have no ``.to``)."""
    return n * 1.0


# ----------------------------------------------------------------------------------------------
# Fused: one program per block of groups, persistent


@triton.jit(do_not_specialize=["SILU"])
def _gn_fwd_fused_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
    C, S, G, CPG, UNIT_C, NUM_GB, NUM_UNITS,
    stride_xn, stride_xc, stride_xs,
    stride_yn, stride_yc, stride_ys,
    eps, SILU,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Program ``p`` normalises units ``p, p + programs, ...``; a unit is ``UNIT_C / CPG`` whole
    groups of one sample (``UNIT_C <= BLOCK_C`` channels). Pass 1: per-channel moments, merged per
    group; pass 2 (backwards): the output. Writes the groups' fp32 ``mean`` and ``rstd``."""
    for u in range(tl.program_id(0), NUM_UNITS, tl.num_programs(0)):
        n, c, cl, valid, grp = _group_block(u, C, G, CPG, UNIT_C, NUM_GB, BLOCK_C)
        lo = u * 0  # positions [0, S) as tensors (S may arrive as the constant 1)
        hi = lo + S
        mean_c, m2_c = _moments(x_ptr, n, c, valid, lo, hi, C, stride_xn, stride_xc, stride_xs, CHANNELS_LAST, BLOCK_S)
        # Chan over the channels of each group: equal counts, so the group mean is their average,
        # taken as deviations from the group's first channel mean (no cancellation far from zero)
        first = valid & (cl % CPG == 0)
        pivot = _group_sum(tl.where(first, mean_c, 0.0)[None, :], cl, valid, CPG)
        mean = pivot + _group_sum(mean_c[None, :] - pivot[:, None], cl, valid, CPG) / _as_float(CPG)
        d = mean_c[None, :] - mean[:, None]
        m2 = _group_sum(m2_c[None, :] + _as_float(S) * d * d, cl, valid, CPG)
        rstd = 1.0 / tl.sqrt_rn(m2 / (_as_float(CPG) * S) + eps)
        tl.store(mean_ptr + grp, mean, mask=first)
        tl.store(rstd_ptr + grp, rstd, mask=first)
        w = tl.load(w_ptr + c, mask=valid, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=valid, other=0.0).to(tl.float32)
        _apply(x_ptr, y_ptr, n, c, valid, lo, hi, C, mean, rstd * w, b, SILU, stride_xn, stride_xc, stride_xs,
               stride_yn, stride_yc, stride_ys, CHANNELS_LAST, BLOCK_S)


# ----------------------------------------------------------------------------------------------
# Split: partial moments per (sample, channel, chunk), merged per group, then elementwise


@triton.jit
def _chunk_bounds(k, S, NUM_CHUNKS, TILES, TILE_S):
    """Positions ``[lo, hi)`` of chunk ``k``: the ``TILES`` tiles of ``TILE_S`` positions that cover
    ``S`` are shared out as evenly as whole tiles allow (so any chunk count works, and grids can
    be whole waves); chunk ``k`` holds tiles ``[k*TILES // NUM_CHUNKS, (k+1)*TILES // NUM_CHUNKS)``."""
    first = (k.to(tl.int64) * TILES // NUM_CHUNKS).to(tl.int32)
    last = ((k + 1).to(tl.int64) * TILES // NUM_CHUNKS).to(tl.int32)
    return first * TILE_S, tl.minimum(last * TILE_S, S)


@triton.jit
def _chunk_of_program(pid, C, S, NUM_CB, NUM_CHUNKS, TILES, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Program ``pid = (n*NUM_CB + cb)*NUM_CHUNKS + k`` owns channel block ``cb`` of sample ``n``
    over the positions of chunk ``k`` (:func:`_chunk_bounds`): ``(n, k, c, cmask, lo, hi)``."""
    k = pid % NUM_CHUNKS
    rest = pid // NUM_CHUNKS
    n = rest // NUM_CB
    c = (rest % NUM_CB) * BLOCK_C + tl.arange(0, BLOCK_C)
    lo, hi = _chunk_bounds(k, S, NUM_CHUNKS, TILES, BLOCK_S)
    return n, k, c, c < C, lo, hi


@triton.jit
def _second_pass_program():
    """The program id of a split kernel's second pass, highest first: the chunks the first pass
    finished last are the likeliest to still be in L2."""
    return tl.num_programs(0) - 1 - tl.program_id(0)


@triton.jit
def _gn_fwd_partial_stats_kernel(
    x_ptr, pmean_ptr, pm2_ptr,
    C, S, NUM_CB, NUM_CHUNKS, TILES,
    stride_xn, stride_xc, stride_xs,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Per-channel mean and M2 of one chunk: ``pmean/pm2[(n*C + c)*NUM_CHUNKS + k]``."""
    n, k, c, cmask, lo, hi = _chunk_of_program(tl.program_id(0), C, S, NUM_CB, NUM_CHUNKS, TILES, BLOCK_C, BLOCK_S)
    mean, m2 = _moments(x_ptr, n, c, cmask, lo, hi, C, stride_xn, stride_xc, stride_xs, CHANNELS_LAST, BLOCK_S)
    out = (n.to(tl.int64) * C + c) * NUM_CHUNKS + k
    tl.store(pmean_ptr + out, mean, mask=cmask)
    tl.store(pm2_ptr + out, m2, mask=cmask)


@triton.jit
def _partial_means(pmean_ptr, base, j0, total, S, NUM_CHUNKS, TILES, TILE_S, BLOCK: tl.constexpr):
    """Partials ``j0 + [0, BLOCK)`` of a group (of ``total``, chunks fastest): ``(j, mask,
    positions each covers, their means)``."""
    j = j0 + tl.arange(0, BLOCK)
    m = j < total
    lo, hi = _chunk_bounds(j % NUM_CHUNKS, S, NUM_CHUNKS, TILES, TILE_S)
    return j, m, (hi - lo).to(tl.float32), tl.load(pmean_ptr + base + j, mask=m, other=0.0)


@triton.jit
def _gn_fwd_combine_kernel(
    pmean_ptr, pm2_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, cmean_ptr, cscale_ptr, cshift_ptr,
    S, G, CPG, NUM_CHUNKS, TILES, TILE_S, eps,
    BLOCK: tl.constexpr,
):
    """Program ``n*G + g`` merges the ``CPG * NUM_CHUNKS`` partials of its group (contiguous):
    the group's ``mean``/``rstd``, and per channel ``(mean, rstd * w, b)`` in fp32 for the
    elementwise kernel, at ``n*C + c``."""
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * CPG * NUM_CHUNKS
    total = CPG * NUM_CHUNKS
    count = _as_float(CPG) * S
    # pivot on the first partial mean: the sum of count-weighted deviations does not cancel
    pivot = tl.load(pmean_ptr + base)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j0 in range(0, total, BLOCK):
        j, m, cnt, pm = _partial_means(pmean_ptr, base, j0, total, S, NUM_CHUNKS, TILES, TILE_S, BLOCK)
        acc += tl.where(m, cnt * (pm - pivot), 0.0)
    mean = pivot + tl.sum(acc, axis=0) / count
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j0 in range(0, total, BLOCK):
        j, m, cnt, pm = _partial_means(pmean_ptr, base, j0, total, S, NUM_CHUNKS, TILES, TILE_S, BLOCK)
        d = pm - mean
        acc += tl.where(m, tl.load(pm2_ptr + base + j, mask=m, other=0.0) + cnt * d * d, 0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(acc, axis=0) / count + eps)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)
    nc = pid.to(tl.int64) * CPG  # n*C + g*CPG: the group's first channel
    c = (pid % G) * CPG
    for c0 in range(0, CPG, BLOCK):
        cl = c0 + tl.arange(0, BLOCK)
        m = cl < CPG
        w = tl.load(w_ptr + c + cl, mask=m, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c + cl, mask=m, other=0.0).to(tl.float32)
        tl.store(cmean_ptr + nc + cl, tl.zeros([BLOCK], dtype=tl.float32) + mean, mask=m)
        tl.store(cscale_ptr + nc + cl, rstd * w, mask=m)
        tl.store(cshift_ptr + nc + cl, b, mask=m)


@triton.jit(do_not_specialize=["SILU"])
def _gn_fwd_apply_kernel(
    x_ptr, cmean_ptr, cscale_ptr, cshift_ptr, y_ptr,
    C, S, NUM_CB, NUM_CHUNKS, TILES,
    stride_xn, stride_xc, stride_xs,
    stride_yn, stride_yc, stride_ys,
    SILU,
    CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """``y = act((x - mean) * scale + shift)`` over one chunk, with the per-channel fp32
    constants of :func:`_gn_fwd_combine_kernel` (so its code does not depend on the parameters'
    dtype). Its own chunking of the positions; programs and tiles in reverse order."""
    pid = _second_pass_program()
    n, k, c, cmask, lo, hi = _chunk_of_program(pid, C, S, NUM_CB, NUM_CHUNKS, TILES, BLOCK_C, BLOCK_S)
    nc = n.to(tl.int64) * C + c
    mean = tl.load(cmean_ptr + nc, mask=cmask, other=0.0)
    scale = tl.load(cscale_ptr + nc, mask=cmask, other=0.0)
    shift = tl.load(cshift_ptr + nc, mask=cmask, other=0.0)
    _apply(x_ptr, y_ptr, n, c, cmask, lo, hi, C, mean, scale, shift, SILU, stride_xn, stride_xc, stride_xs,
           stride_yn, stride_yc, stride_ys, CHANNELS_LAST, BLOCK_S)
