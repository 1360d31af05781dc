"""The ``@triton.jit`` kernels of the ``spatial_attention`` backward pass.

With ``P = softmax(s Qᵀ K)`` recomputed block by block from the saved row log-sum-exp
(nothing ``N x N`` is stored), ``dO`` the gradient of the output and
``Delta_i = sum_c O[c, i] dO[c, i]``:

.. math::
    dV = dO\\,P, \\qquad dP = dO^\\top V, \\qquad dS = P \\circ (dP - \\Delta),
    \\qquad dQ = s\\,K\\,dS^\\top, \\qquad dK = s\\,Q\\,dS

all in the ``(B, HEAD, N)`` layout of the inputs (``dV = dO P`` is ``(HEAD, N)``). Three kernels:

* :func:`_delta_kernel` -- ``Delta`` (fp32, ``(B, N)``).
* :func:`_dkdv_kernel` -- one program per block of ``BLOCK_N`` keys; streams the queries and
  accumulates ``dKᵀ``, ``dVᵀ`` as ``(HEAD, BLOCK_N)`` fp32 tiles.
* :func:`_dq_kernel` -- one program per block of ``BLOCK_M`` queries (and key range); streams
  the keys and accumulates ``dQᵀ`` as a ``(HEAD, BLOCK_M)`` fp32 tile.

Both main kernels keep the head dimension as the rows of their accumulators, so the large
products (``M = HEAD``) map onto full warpgroup MMAs. Two kernels instead of atomic ``dQ``
updates: deterministic, at the price of computing ``S`` and ``dP`` twice. When the query blocks
cannot fill the GPU (batch 1), the dQ kernel also splits the keys and writes fp32 partial sums
that the launcher adds.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .spatial_attention_jit import _mm

LOG2E = tl.constexpr(1.4426950408889634)  # log2 e: natural log-sum-exp to log2


@triton.jit
def _delta_kernel(
    Out, dOut, Delta,
    stride_ob, stride_oc, stride_on, stride_db, stride_dc, stride_dn,
    N, C,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``Delta[b, n] = sum_c Out[b, c, n] dOut[b, c, n]`` in fp32. Grid ``(cdiv(N, BLOCK_P), B)``;
    ``BLOCK_C >= C``: one tile of every channel, its loads all in flight at once."""
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    lanes = tl.arange(0, BLOCK_C)
    offs_c = lanes % C  # masked lanes repeat in-range addresses; C % 16 == 0 keeps 16-wide runs
    mask = (lanes[:, None] < C) & (offs_p[None, :] < N)
    o = tl.load(Out + pid_b * stride_ob + offs_c[:, None] * stride_oc + offs_p[None, :] * stride_on, mask=mask, other=0.0)
    do = tl.load(dOut + pid_b * stride_db + offs_c[:, None] * stride_dc + offs_p[None, :] * stride_dn, mask=mask,
                 other=0.0)
    tl.store(Delta + pid_b * N + offs_p, tl.sum(o.to(tl.float32) * do.to(tl.float32), 0), mask=offs_p < N)


@triton.jit
def _dkdv_step(
    dk, dv, k, v, q_base, do_base, q_offs, do_offs, Lse, Delta, m0, offs_m, N, qk_scale,
    stride_qn, stride_dn,
    MASK_ROWS: tl.constexpr,
):
    """Add the contribution of queries ``m0 + offs_m`` to ``dKᵀ`` and ``dVᵀ`` (``(HEAD, BLOCK_N)``)."""
    rows = m0 + offs_m
    if MASK_ROWS:
        qt = tl.load(q_base + (q_offs + m0 * stride_qn), mask=rows[None, :] < N, other=0.0)  # (HEAD, BLOCK_M)
        dot = tl.load(do_base + (do_offs + m0 * stride_dn), mask=rows[None, :] < N, other=0.0)
        lse2 = tl.load(Lse + rows, mask=rows < N, other=float("inf")) * LOG2E
        delta = tl.load(Delta + rows, mask=rows < N, other=0.0)
    else:
        qt = tl.load(q_base + (q_offs + m0 * stride_qn))
        dot = tl.load(do_base + (do_offs + m0 * stride_dn))
        lse2 = tl.load(Lse + rows) * LOG2E
        delta = tl.load(Delta + rows)
    s = _mm(tl.trans(qt), k, None)  # (BLOCK_M, BLOCK_N) logits / scale
    p = tl.math.exp2(s * qk_scale - lse2[:, None])  # rows past N: lse2 = inf, p = 0
    dv = _mm(dot, p.to(dot.dtype), dv)  # += dO P, (HEAD, BLOCK_N)
    dp = _mm(tl.trans(dot), v, None)  # (BLOCK_M, BLOCK_N)
    ds = p * (dp - delta[:, None])
    dk = _mm(qt, ds.to(qt.dtype), dk)  # += Q dS, (HEAD, BLOCK_N)
    return dk, dv


@triton.jit
def _dkdv_kernel(
    Q, K, V, dOut, Lse, Delta, dK, dV,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_db, stride_dc, stride_dn,
    stride_dkb, stride_dkc, stride_dkn,
    stride_dvb, stride_dvc, stride_dvn,
    N, scale, qk_scale,
    HEAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid ``(cdiv(N, BLOCK_N), B)``: ``dK``, ``dV`` for one block of keys of one image."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, HEAD)
    keys_ok = offs_n[None, :] < N
    k = tl.load(K + pid_b * stride_kb + offs_c[:, None] * stride_kc + offs_n[None, :] * stride_kn, mask=keys_ok, other=0.0)
    v = tl.load(V + pid_b * stride_vb + offs_c[:, None] * stride_vc + offs_n[None, :] * stride_vn, mask=keys_ok, other=0.0)
    q_base = Q + pid_b * stride_qb
    do_base = dOut + pid_b * stride_db
    q_offs = offs_c[:, None] * stride_qc + offs_m[None, :] * stride_qn  # (HEAD, BLOCK_M)
    do_offs = offs_c[:, None] * stride_dc + offs_m[None, :] * stride_dn
    lse = Lse + pid_b * N
    delta = Delta + pid_b * N

    dk = tl.zeros([HEAD, BLOCK_N], dtype=tl.float32)
    dv = tl.zeros([HEAD, BLOCK_N], dtype=tl.float32)
    full_stop = (N // BLOCK_M) * BLOCK_M
    for m0 in range(0, full_stop, BLOCK_M):
        dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, q_offs, do_offs, lse, delta, m0, offs_m, N,
                            qk_scale, stride_qn, stride_dn, False)
    if full_stop < N:
        dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, q_offs, do_offs, lse, delta, full_stop, offs_m, N,
                            qk_scale, stride_qn, stride_dn, True)

    dk = dk * scale
    tl.store(dK + pid_b * stride_dkb + offs_c[:, None] * stride_dkc + offs_n[None, :] * stride_dkn,
             dk.to(dK.dtype.element_ty), mask=keys_ok)
    tl.store(dV + pid_b * stride_dvb + offs_c[:, None] * stride_dvc + offs_n[None, :] * stride_dvn,
             dv.to(dV.dtype.element_ty), mask=keys_ok)


@triton.jit
def _dq_step(
    dq, qt, dot, lse2, delta, k_base, v_base, k_offs, v_offs, n0, offs_n, N, qk_scale, stride_kn, stride_vn,
    MASK_KEYS: tl.constexpr,
):
    """Add the contribution of keys ``n0 + offs_n`` to ``dQᵀ`` (``(HEAD, BLOCK_M)``, unscaled)."""
    cols = n0 + offs_n
    if MASK_KEYS:
        k = tl.load(k_base + (k_offs + n0 * stride_kn), mask=cols[None, :] < N, other=0.0)  # (HEAD, BLOCK_N)
        v = tl.load(v_base + (v_offs + n0 * stride_vn), mask=cols[None, :] < N, other=0.0)
    else:
        k = tl.load(k_base + (k_offs + n0 * stride_kn))
        v = tl.load(v_base + (v_offs + n0 * stride_vn))
    s = _mm(tl.trans(qt), k, None)  # (BLOCK_M, BLOCK_N)
    p = tl.math.exp2(s * qk_scale - lse2[:, None])
    if MASK_KEYS:
        p = tl.where(cols[None, :] < N, p, 0.0)
    dp = _mm(tl.trans(dot), v, None)  # (BLOCK_M, BLOCK_N)
    ds = p * (dp - delta[:, None])
    return _mm(k, tl.trans(ds.to(k.dtype)), dq)  # += K dSᵀ


@triton.jit
def _dq_kernel(
    Q, K, V, dOut, Lse, Delta, dQ,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_db, stride_dc, stride_dn,
    stride_dqb, stride_dqc, stride_dqn,  # dQ: (B, HEAD, N), or fp32 partial sums (SPLITS, B, HEAD, N)
    stride_dqs,
    N, keys_per_split, scale, qk_scale,
    HEAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid ``(cdiv(N, BLOCK_M), B, SPLITS)``: the contribution of key range ``pid_s`` to ``dQ``
    for one block of queries of one image (with ``SPLITS > 1`` into partial sums the launcher
    adds up: at batch 1 the query blocks alone leave most of the GPU idle)."""
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, HEAD)
    rows_ok = offs_m < N
    qt = tl.load(Q + pid_b * stride_qb + offs_c[:, None] * stride_qc + offs_m[None, :] * stride_qn,
                 mask=rows_ok[None, :], other=0.0)
    dot = tl.load(dOut + pid_b * stride_db + offs_c[:, None] * stride_dc + offs_m[None, :] * stride_dn,
                  mask=rows_ok[None, :], other=0.0)
    lse2 = tl.load(Lse + pid_b * N + offs_m, mask=rows_ok, other=float("inf")) * LOG2E
    delta = tl.load(Delta + pid_b * N + offs_m, mask=rows_ok, other=0.0)
    k_base = K + pid_b * stride_kb
    v_base = V + pid_b * stride_vb
    k_offs = offs_c[:, None] * stride_kc + offs_n[None, :] * stride_kn  # (HEAD, BLOCK_N)
    v_offs = offs_c[:, None] * stride_vc + offs_n[None, :] * stride_vn

    dq = tl.zeros([HEAD, BLOCK_M], dtype=tl.float32)
    start = pid_s * keys_per_split
    stop = tl.minimum(start + keys_per_split, N)
    full_stop = start + ((stop - start) // BLOCK_N) * BLOCK_N  # keys_per_split is a BLOCK_N multiple
    for n0 in range(start, full_stop, BLOCK_N):
        dq = _dq_step(dq, qt, dot, lse2, delta, k_base, v_base, k_offs, v_offs, n0, offs_n, N, qk_scale,
                      stride_kn, stride_vn, False)
    if full_stop < stop:
        dq = _dq_step(dq, qt, dot, lse2, delta, k_base, v_base, k_offs, v_offs, full_stop, offs_n, N, qk_scale,
                      stride_kn, stride_vn, True)
    dq = dq * scale
    dq_ptrs = dQ + pid_s.to(tl.int64) * stride_dqs + pid_b * stride_dqb
    tl.store(dq_ptrs + offs_c[:, None] * stride_dqc + offs_m[None, :] * stride_dqn,
             dq.to(dQ.dtype.element_ty), mask=rows_ok[None, :])

