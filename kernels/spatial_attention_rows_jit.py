r"""The ``@triton.jit`` kernels of ``spatial_attention`` by blocks of query rows, forward and
backward (launch planning in ``spatial_attention_rows.py``): the large heads, where a flash
program's register-held accumulator (at most about 64 positions x 512 channels) would make
every program stream all of the other side's 2 KB positions from L2 for 64 of its own. Here the
products read their operands in 128 x 128 (or 128 x 256) tiles. ``Q``, ``K``, ``V``, ``dO`` are
``(B, HEAD, N)`` read through their strides; ``R`` query rows ``r`` at a time, their 16-bit
scratch of ``(B, R, N)`` bounded by the launcher.

Forward (log2 units, ``S = s log2(e) Qᵀ K``):

* :func:`_scores_kernel` -- per tile ``t`` of ``BLOCK_N`` keys (128 or 256): ``m_t = max_j S``,
  ``P~ = 2^(S - m_t)`` (16-bit, into the scratch) and ``l_t = sum_j P~`` (fp32, before rounding).
* :func:`_attend_kernel` -- ``m = max_t m_t``, ``l = sum_t l_t 2^(m_t - m)``, and
  ``O_r = (sum_t V_t P~_tᵀ 2^(m_t - m)) / l`` in steps of ``KEY_TILE`` keys (a divisor of the
  tile): each step's product is scaled as it is added, so ``P`` is rounded to 16 bits once, as
  in a flash kernel; ``lse = (m + log2 l) ln 2``.

Backward, with ``P = exp(s Qᵀ K - lse)`` and ``dS = P (dP - Delta)``, ``dP = dOᵀ V``:

.. math::
    dV \mathrel{+}= dO_r\,P_r, \qquad dK \mathrel{+}= s\,Q_r\,dS_r, \qquad
    dQ_r = s\,K\,dS_r^\top

:func:`_score_grads_kernel` writes ``P_r`` and ``dS_r`` (16-bit) in tiles of 128 x 128 whose two
fp32 accumulators take their ``HEAD``-long contractions in steps of ``BLOCK_K`` channels;
:func:`_bmm_kernel` runs the three products as batched matrix products with fp32 accumulation
and an epilogue that scales, adds an fp32 partial result and rounds.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .spatial_attention_jit import _mm

LOG2E = tl.constexpr(1.4426950408889634)  # log2 e: natural log-sum-exp to log2
LN2 = tl.constexpr(0.6931471805599453)  # ln 2: log2-sum-exp to natural


@triton.jit
def _logits_tile(Q, K, stride_qb, stride_qc, stride_qn, stride_kb, stride_kc, stride_kn, pid_b, offs_m, offs_n,
                 rows_ok, keys_ok, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``Qᵀ K`` ``(BLOCK_M, BLOCK_N)`` in fp32 for queries ``offs_m`` and keys ``offs_n``."""
    offs_k = tl.arange(0, BLOCK_K)
    q_ptrs = Q + pid_b * stride_qb + offs_k[:, None] * stride_qc + offs_m[None, :] * stride_qn  # (BLOCK_K, BLOCK_M)
    k_ptrs = K + pid_b * stride_kb + offs_k[:, None] * stride_kc + offs_n[None, :] * stride_kn  # (BLOCK_K, BLOCK_N)
    s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        qt = tl.load(q_ptrs + c0 * stride_qc, mask=rows_ok[None, :], other=0.0)
        s = _mm(tl.trans(qt), tl.load(k_ptrs + c0 * stride_kc, mask=keys_ok[None, :], other=0.0), s)
    return s


@triton.jit
def _scores_kernel(
    Q, K, P, Stats,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_pb, stride_pm, stride_pn,  # P~: (B, cdiv(rows, BLOCK_M) BLOCK_M, cdiv(N, BLOCK_N) BLOCK_N)
    stride_sb, stride_sm,  # Stats: (B, rows, tiles, 2) fp32: m_t, l_t
    N, C, row0, rows, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid ``(cdiv(rows, BLOCK_M), cdiv(N, BLOCK_N), B)``: ``P~`` of queries ``row0 + [pid_m
    BLOCK_M, ...)`` and key tile ``t = pid_n`` of image ``b`` (whole tiles, zero past ``N``), and
    ``m_t``, ``l_t`` of its rows."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    local = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ok = local < rows
    keys_ok = offs_n < N
    s = _logits_tile(Q, K, stride_qb, stride_qc, stride_qn, stride_kb, stride_kc, stride_kn, pid_b, row0 + local,
                     offs_n, rows_ok, keys_ok, C, BLOCK_M, BLOCK_N, BLOCK_K)
    s = tl.where(keys_ok[None, :], s * qk_scale, float("-inf"))
    m = tl.max(s, 1)
    p = tl.math.exp2(s - m[:, None])
    tl.store(P + pid_b * stride_pb + local[:, None] * stride_pm + offs_n[None, :] * stride_pn, p.to(P.dtype.element_ty))
    stats = Stats + pid_b * stride_sb + local * stride_sm + pid_n * 2
    tl.store(stats, m, mask=rows_ok)
    tl.store(stats + 1, tl.sum(p, 1), mask=rows_ok)


@triton.jit
def _attend_kernel(
    V, P, Stats, Out, Lse,
    stride_vb, stride_vc, stride_vn,
    stride_pb, stride_pm, stride_pn,
    stride_sb, stride_sm,
    stride_ob, stride_oc, stride_on,
    N, C, row0, rows, tiles,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KEY_TILE: tl.constexpr, STATS_TILE: tl.constexpr,
):
    """Grid ``(C // BLOCK_M, cdiv(rows, BLOCK_N), B)``: ``Oᵀ`` ``(BLOCK_M, BLOCK_N)`` for channels
    ``[pid_m BLOCK_M, ...)`` and queries ``row0 + [pid_n BLOCK_N, ...)``, from ``P~`` and the
    statistics of the ``tiles`` key tiles of ``STATS_TILE`` keys (the scores kernel's), in steps
    of ``KEY_TILE`` keys (a divisor of ``STATS_TILE``: smaller steps leave shared memory for more
    of them in flight); ``lse`` from the first channel block's programs."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_c = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    local = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, KEY_TILE)
    rows_ok = local < rows
    stats = Stats + pid_b * stride_sb + local * stride_sm
    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    for t in range(0, tiles):
        m = tl.maximum(m, tl.load(stats + 2 * t, mask=rows_ok, other=0.0))
    l = tl.zeros([BLOCK_N], dtype=tl.float32)
    for t in range(0, tiles):
        l += tl.load(stats + 2 * t + 1, mask=rows_ok, other=1.0) * tl.math.exp2(
            tl.load(stats + 2 * t, mask=rows_ok, other=0.0) - m)
    v_ptrs = V + pid_b * stride_vb + offs_c[:, None] * stride_vc + offs_k[None, :] * stride_vn  # (BLOCK_M, KEY_TILE)
    p_ptrs = P + pid_b * stride_pb + offs_k[:, None] * stride_pn + local[None, :] * stride_pm  # P~ᵀ: (KEY_TILE, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for key0 in range(0, tiles * STATS_TILE, KEY_TILE):
        v = tl.load(v_ptrs + key0 * stride_vn, mask=(key0 + offs_k)[None, :] < N, other=0.0)
        part = _mm(v, tl.load(p_ptrs + key0 * stride_pn), None)
        m_t = tl.load(stats + 2 * (key0 // STATS_TILE), mask=rows_ok, other=0.0)
        acc += part * tl.math.exp2(m_t - m)[None, :]
    acc = acc / l[None, :]
    tl.store(Out + pid_b * stride_ob + offs_c[:, None] * stride_oc + (row0 + local)[None, :] * stride_on,
             acc.to(Out.dtype.element_ty), mask=rows_ok[None, :])
    tl.store(Lse + pid_b * N + row0 + local, (m + tl.math.log2(l)) * LN2, mask=rows_ok & (pid_m == 0))


@triton.jit
def _score_grads_kernel(
    Q, K, V, dOut, Lse, Delta, P, dS,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_db, stride_dc, stride_dn,
    stride_pb, stride_pm, stride_pn,  # P and dS: (B, cdiv(rows, BLOCK_M) BLOCK_M, cdiv(N, BLOCK_N) BLOCK_N)
    N, C, row0, rows, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid ``(cdiv(rows, BLOCK_M), cdiv(N, BLOCK_N), B)``: ``P`` and ``dS`` of queries
    ``row0 + [pid_m BLOCK_M, (pid_m + 1) BLOCK_M)`` and keys ``[pid_n BLOCK_N, ...)`` of image
    ``b``, stored at row ``query - row0``: whole tiles, zero past ``rows`` and ``N`` (the
    products then read them unmasked). ``C`` is a multiple of ``BLOCK_K`` (padded heads)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    local = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # rows of the block
    offs_m = row0 + local  # query positions
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_ok = local < rows
    keys_ok = offs_n < N
    q_ptrs = Q + pid_b * stride_qb + offs_k[:, None] * stride_qc + offs_m[None, :] * stride_qn  # (BLOCK_K, BLOCK_M)
    do_ptrs = dOut + pid_b * stride_db + offs_k[:, None] * stride_dc + offs_m[None, :] * stride_dn
    k_ptrs = K + pid_b * stride_kb + offs_k[:, None] * stride_kc + offs_n[None, :] * stride_kn  # (BLOCK_K, BLOCK_N)
    v_ptrs = V + pid_b * stride_vb + offs_k[:, None] * stride_vc + offs_n[None, :] * stride_vn

    s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    dp = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        qt = tl.load(q_ptrs + c0 * stride_qc, mask=rows_ok[None, :], other=0.0)
        k = tl.load(k_ptrs + c0 * stride_kc, mask=keys_ok[None, :], other=0.0)
        s = _mm(tl.trans(qt), k, s)
        dot = tl.load(do_ptrs + c0 * stride_dc, mask=rows_ok[None, :], other=0.0)
        v = tl.load(v_ptrs + c0 * stride_vc, mask=keys_ok[None, :], other=0.0)
        dp = _mm(tl.trans(dot), v, dp)

    lse2 = tl.load(Lse + pid_b * N + offs_m, mask=rows_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta + pid_b * N + offs_m, mask=rows_ok, other=0.0)
    p = tl.where(keys_ok[None, :], tl.math.exp2(s * qk_scale - lse2[:, None]), 0.0)  # rows past: lse2 = inf
    ds = p * (dp - delta[:, None])
    where = pid_b * stride_pb + local[:, None] * stride_pm + offs_n[None, :] * stride_pn
    tl.store(P + where, p.to(P.dtype.element_ty))
    tl.store(dS + where, ds.to(dS.dtype.element_ty))


@triton.jit
def _bmm_kernel(
    A, B, Acc, Out,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn,  # Acc: an fp32 partial result added when ADD
    stride_ob, stride_om, stride_on,
    M, N, K, alpha,
    ADD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid ``(cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), batch)``: ``Out = alpha A B (+ Acc)`` for
    ``A`` ``(batch, M, K)`` and ``B`` ``(batch, K, N)`` 16-bit, the product in fp32. ``M`` is a
    multiple of ``BLOCK_M``; ``B`` is readable, and zero past ``K``, up to whole tiles (the score
    gradients' scratch). ``Out`` may be ``Acc`` itself (each program reads its tile first)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = A + pid_b * stride_ab + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = B + pid_b * stride_bb + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs + k0 * stride_ak, mask=(k0 + offs_k)[None, :] < K, other=0.0)
        acc = _mm(a, tl.load(b_ptrs + k0 * stride_bk), acc)
    acc = acc * alpha
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if ADD:
        acc += tl.load(Acc + pid_b * stride_cb + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, mask=mask,
                       other=0.0)
    tl.store(Out + pid_b * stride_ob + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             acc.to(Out.dtype.element_ty), mask=mask)
