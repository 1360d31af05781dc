r"""The ``@triton.jit`` kernels around the ``codebook_argmin`` search (``codebook_argmin_jit.py``):
the code norms (and the TF32 parts of an fp32 codebook) before it, the finalize after it.

* ``_code_norms_kernel``: ``||e_k||^2`` in fp32, once per call. With ``PREPARE`` (the ``"tf32x3"``
  search) it also writes each code's TF32 parts ``e = e_big + e_small`` (both rounded to the
  nearest TF32, ties away from zero; columns zero-padded to ``stride_pk``) and sets aside the
  codes whose norm is not finite (a NaN or infinite value, or squares that overflow): their parts
  are zero and their norm ``+inf`` in the search, a per-code flag marks them, and the shared
  ``any_ptr`` slot drops from ``EMPTY_SLOT`` to 0 when there is one.
* ``_finalize_kernel`` writes the int64 indices in place of the packed slots. ``RERANK``: choose
  between the best and the runner-up by the fp32 ``sum_d (z_d - e_{k,d})^2`` (no cancellation;
  ties: the lower index). ``WITH_DISTANCE``: store the chosen code's ``sum_d (z_d - e_d)^2``.
  Without either, ``z`` and ``e`` are not read.
* ``_nonfinite_kernel`` (after the ``"tf32x3"`` search, whose split of non-finite values is
  meaningless): rows whose ``||z||^2`` is not finite are searched again over every code, and
  flagged codes are compared with every row, both with fp32 products (``||e||^2 - 2 z.e``, NaN
  the smallest, ties the lowest index) -- the results of an fp32 FMA search, whose NaN and
  infinity rules are the reference's. Blocks with neither only read their rows once.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .codebook_argmin_jit import _INT32_MAX, _row_offsets, _tile_distances


@triton.jit
def _round_tf32(x):
    """The nearest TF32 value of finite ``x`` (ties away from zero), in fp32 bits."""
    return ((x.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def _code_norms_kernel(
    e_ptr, out_ptr, eb_ptr, es_ptr, flags_ptr, any_ptr, K, D, stride_ek, stride_ed, stride_pk,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PREPARE: tl.constexpr,
):
    """``out[k] = sum_d e[k, d]^2`` in fp32, ``+inf`` for ``K <= k`` up to the grid's end (the
    padding the search reads); with ``PREPARE`` the module docstring's parts and flags (``eb``,
    ``es``: ``(K, stride_pk)`` fp32; ``flags``: int64 ``(K,)``)."""
    pid = tl.program_id(0)
    codes = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    code_mask = codes < K
    rows = codes.to(tl.int64)[:, None] * stride_ek
    dims = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        x = tl.load(e_ptr + rows + (d0 + dims)[None, :] * stride_ed,
                    mask=code_mask[:, None] & ((d0 + dims) < D)[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(x * x, axis=1)
    # every program stores all of its norms: codes past K (the padding) get +inf
    if PREPARE:
        finite = (acc - acc) == 0  # false for inf and NaN
        tl.store(out_ptr + codes, tl.where(finite & code_mask, acc, float("inf")))
        tl.store(flags_ptr + codes, (~finite).to(tl.int64), mask=code_mask)
        tl.atomic_min(any_ptr + codes * 0, 0, mask=code_mask & ~finite, sem="relaxed")
        parts = codes.to(tl.int64)[:, None] * stride_pk
        for d0 in range(0, stride_pk, BLOCK_D):
            x = tl.load(e_ptr + rows + (d0 + dims)[None, :] * stride_ed,
                        mask=code_mask[:, None] & ((d0 + dims) < D)[None, :], other=0.0).to(tl.float32)
            big = _round_tf32(x)
            small = _round_tf32(x - big)
            keep = finite[:, None]
            where = parts + (d0 + dims)[None, :]
            mask = code_mask[:, None] & ((d0 + dims) < stride_pk)[None, :]
            tl.store(eb_ptr + where, tl.where(keep, big, 0.0), mask=mask)
            tl.store(es_ptr + where, tl.where(keep, small, 0.0), mask=mask)
    else:
        tl.store(out_ptr + codes, tl.where(code_mask, acc, float("inf")))


@triton.jit
def _distances(z_ptr, e_ptr, row_off, index, D, stride_zd, stride_ek, stride_ed,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """``(sum_d (z_d - e_{index,d})^2, ||z||^2)`` per row, in fp32 (every row offset valid)."""
    dims = tl.arange(0, BLOCK_D)
    dist = tl.zeros([BLOCK_N], dtype=tl.float32)
    norm = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d_off = (d0 + dims).to(tl.int64)
        mask = ((d0 + dims) < D)[None, :]
        x = tl.load(z_ptr + row_off[:, None] + d_off[None, :] * stride_zd, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(e_ptr + (index.to(tl.int64) * stride_ek)[:, None] + d_off[None, :] * stride_ed, mask=mask,
                    other=0.0).to(tl.float32)
        dist += tl.sum((x - y) * (x - y), axis=1)
        norm += tl.sum(x * x, axis=1)
    return dist, norm


@triton.jit
def _exact_search(z_ptr, e_ptr, flags_ptr, row_off, bad_row, cur_v, cur_i, K, D, stride_zd, stride_ek,
                  stride_ed, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    """Fold the fp32 (FMA) distances of every code into the rows flagged ``bad_row``, and of the
    flagged codes into every row, starting from ``(cur_v, cur_i)`` (``cur_i`` int64); chunks of
    ``BLOCK_C`` codes with nothing to compare are skipped."""
    dims = tl.arange(0, BLOCK_D)
    local = tl.arange(0, BLOCK_C)
    any_row = tl.max(bad_row.to(tl.int32), axis=0) > 0
    for k0 in range(0, K, BLOCK_C):
        codes = k0 + local
        code_mask = codes < K
        code_bad = tl.load(flags_ptr + codes, mask=code_mask, other=0) != 0
        if any_row | (tl.max(code_bad.to(tl.int32), axis=0) > 0):
            acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
            enorm = tl.zeros([BLOCK_C], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d_off = (d0 + dims).to(tl.int64)
                d_mask = (d0 + dims) < D
                x = tl.load(z_ptr + row_off[:, None] + d_off[None, :] * stride_zd,
                            mask=d_mask[None, :], other=0.0).to(tl.float32)
                y = tl.load(e_ptr + (codes.to(tl.int64) * stride_ek)[None, :] + d_off[:, None] * stride_ed,
                            mask=d_mask[:, None] & code_mask[None, :], other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_C)
                acc = tl.dot(x, y, acc, input_precision="ieee")
                enorm += tl.sum(y * y, axis=0)
            dist = _tile_distances(acc, enorm)
            use = (bad_row[:, None] | code_bad[None, :]) & code_mask[None, :]
            tile_min = tl.min(tl.where(use, dist, float("inf")), axis=1)
            arg = tl.min(tl.where(use & (dist == tile_min[:, None]), local[None, :], _INT32_MAX), axis=1)
            take = (arg < _INT32_MAX) & ((tile_min < cur_v) | ((tile_min == cur_v) & (k0 + arg < cur_i)))
            cur_v = tl.where(take, tile_min, cur_v)
            cur_i = tl.where(take, (k0 + arg).to(tl.int64), cur_i)
    return cur_i


@triton.jit
def _finalize_kernel(
    z_ptr, e_ptr, best_ptr, second_ptr, dist_ptr,
    N, K, D, item_blocks, stride_zb, stride_zw, stride_zd, stride_ek, stride_ed,
    RERANK: tl.constexpr, WITH_DISTANCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Write the final int64 indices in place of the packed slots (the module docstring)."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    index = tl.load(best_ptr + rows, mask=row_mask, other=0) & 0xFFFFFFFF
    if RERANK or WITH_DISTANCE:
        # rows past N read row 0 (never stored): no row mask on the loads
        row_off = tl.where(row_mask, _row_offsets(pid, item_blocks, stride_zb, stride_zw, BLOCK_N), 0)
        dist, _ = _distances(z_ptr, e_ptr, row_off, index, D, stride_zd, stride_ek, stride_ed, BLOCK_N, BLOCK_D)
        if RERANK:
            other = tl.load(second_ptr + rows, mask=row_mask, other=0) & 0xFFFFFFFF
            other = tl.where(other < K, other, index)  # padding codes are never candidates
            dist_other, _ = _distances(z_ptr, e_ptr, row_off, other, D, stride_zd, stride_ek, stride_ed,
                                       BLOCK_N, BLOCK_D)
            switch = (dist_other < dist) | ((dist_other == dist) & (other < index))
            switch = switch & (dist < float("inf"))  # a best from NaN / infinite inputs stays
            index = tl.where(switch, other, index)
            dist = tl.where(switch, dist_other, dist)
        if WITH_DISTANCE:
            tl.store(dist_ptr + rows, dist, mask=row_mask)
    tl.store(best_ptr + rows, index, mask=row_mask)


@triton.jit
def _nonfinite_kernel(
    z_ptr, e_ptr, index_ptr, dist_ptr, flags_ptr, any_ptr,
    N, K, D, item_blocks, stride_zb, stride_zw, stride_zd, stride_ek, stride_ed,
    WITH_DISTANCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """After the ``"tf32x3"`` search and the finalize: rows whose ``||z||^2`` is not finite are
    searched again over every code, and the flagged codes compared with every row (the module
    docstring). A block with neither returns after one pass over its rows."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    index = tl.load(index_ptr + rows, mask=row_mask, other=0) & 0xFFFFFFFF  # (a code index: the mask bounds it)
    row_off = tl.where(row_mask, _row_offsets(pid, item_blocks, stride_zb, stride_zw, BLOCK_N), 0)
    dist, norm = _distances(z_ptr, e_ptr, row_off, index, D, stride_zd, stride_ek, stride_ed, BLOCK_N, BLOCK_D)
    bad_row = (norm - norm) != 0  # ||z||^2 is inf or NaN
    if (tl.load(any_ptr) == 0) | (tl.max(bad_row.to(tl.int32), axis=0) > 0):
        # a flagged code's distance is +inf or NaN (its norm is not finite): it takes a finite
        # row only as NaN, the smallest -- compared with the chosen code's exact distance
        cur_v = tl.where(bad_row, float("inf"), dist)
        cur_i = tl.where(bad_row, _INT32_MAX, index)
        index = _exact_search(z_ptr, e_ptr, flags_ptr, row_off, bad_row, cur_v, cur_i, K, D, stride_zd, stride_ek,
                              stride_ed, BLOCK_N, BLOCK_D, BLOCK_C) & 0xFFFFFFFF  # a code index
        tl.store(index_ptr + rows, index, mask=row_mask)
        if WITH_DISTANCE:
            dist, _ = _distances(z_ptr, e_ptr, row_off, index, D, stride_zd, stride_ek, stride_ed, BLOCK_N, BLOCK_D)
            tl.store(dist_ptr + rows, dist, mask=row_mask)
