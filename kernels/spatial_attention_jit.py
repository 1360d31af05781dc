"""The ``@triton.jit`` kernels of the ``spatial_attention`` forward pass (flash attention over
spatial positions; the flash kernels of heads 64 and 128).

``out[b, :, i] = sum_j softmax_j(s q[b, :, i] . k[b, :, j]) v[b, :, j]`` for ``q, k, v`` of shape
``(B, HEAD, N)`` read through their strides, never materialising the ``N x N`` logits. The
launcher hands the kernels ``HEAD`` channels (a power of two; smaller heads arrive zero-padded).

One program owns ``BLOCK_M`` queries of one image and streams the keys in blocks of ``BLOCK_N``
with the online softmax: running row maximum ``m`` and sum ``l`` in fp32, the output
accumulator ``(BLOCK_M, HEAD)`` in fp32, rescaled by ``exp2(m_old - m_new)`` when the
maximum grows. The logits ``q . k`` accumulate in fp32 (``tl.dot``), so they cannot overflow
even for fp16 inputs; the scale (times ``log2 e``, for ``exp2``) is applied to those fp32
logits inside the exponent's multiply-add, without rounding ``s q`` to the input dtype first.

With ``SPLIT`` the keys are split across programs too; each writes a partial result normalised by
its own sum with its log-sum-exp, and :func:`_combine_kernel` merges them. Heads 256 and 512 run
by blocks of query rows instead (``spatial_attention_rows_jit.py``).

Saved for the backward pass: the natural-log log-sum-exp of every row, ``lse = log sum_j
exp(s q_i . k_j)`` (fp32, ``(B, N)``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from vqvae_fast._device import interpreting

#: Triton's CPU interpreter mishandles bf16 ``tl.dot``; there the operands are widened to fp32
#: first (exact: products of 16-bit values are exact in fp32, as on the tensor cores).
_INTERPRETED = tl.constexpr(interpreting())
LN2 = tl.constexpr(0.6931471805599453)  # ln 2: log2-sum-exp to natural


@triton.jit
def _mm(a, b, acc):
    """``acc + a @ b`` with fp32 accumulation on the tensor cores (16-bit operands)."""
    if _INTERPRETED:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def _attend_block(
    acc, m_i, l_i, q, k_base, v_base, k_offs, v_offs, offs_n, key0, N, qk_scale, stride_kn, stride_vn,
    MASK_KEYS: tl.constexpr,
):
    """One step of the online softmax (log2 units): keys ``key0 + offs_n`` into ``m``, ``l`` and
    the accumulator."""
    keys = key0 + offs_n
    if MASK_KEYS:
        k = tl.load(k_base + (k_offs + key0 * stride_kn), mask=keys[None, :] < N, other=0.0)
    else:
        k = tl.load(k_base + (k_offs + key0 * stride_kn))
    s = _mm(q, k, None) * qk_scale  # (BLOCK_M, BLOCK_N) fp32
    if MASK_KEYS:
        s = tl.where(keys[None, :] < N, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if MASK_KEYS:
        v = tl.load(v_base + (v_offs + key0 * stride_vn), mask=keys[:, None] < N, other=0.0)
    else:
        v = tl.load(v_base + (v_offs + key0 * stride_vn))
    acc = _mm(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _forward_kernel(
    Q, K, V, Out, Lse,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_ob, stride_oc, stride_on,  # Out: (B, HEAD, N), or the fp32 partials (SPLITS, B, HEAD, N)
    stride_os,
    N, keys_per_split, qk_scale,
    HEAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
):
    """Grid ``(cdiv(N, BLOCK_M), B, SPLITS)``: queries ``pid_m`` of image ``b``, key range
    ``pid_s``. Without ``SPLIT``: ``Out`` gets the attention output and ``Lse`` (``(B, N)``) the
    natural log-sum-exp. With ``SPLIT``: ``Out`` is the fp32 partial
    output of key range ``pid_s`` (normalised by its own sum) and ``Lse`` (``(SPLITS, B, N)``)
    its log2-sum-exp, for :func:`_combine_kernel`."""
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    batch = tl.num_programs(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, HEAD)
    rows_ok = offs_m < N

    q_ptrs = Q + pid_b * stride_qb + offs_m[:, None] * stride_qn + offs_c[None, :] * stride_qc
    q = tl.load(q_ptrs, mask=rows_ok[:, None], other=0.0)  # (BLOCK_M, HEAD)
    # 64-bit image offsets in the scalar base; 32-bit offsets inside an image (fewer registers)
    k_base = K + pid_b * stride_kb
    v_base = V + pid_b * stride_vb
    k_offs = offs_c[:, None] * stride_kc + offs_n[None, :] * stride_kn  # (HEAD, BLOCK_N)
    v_offs = offs_n[:, None] * stride_vn + offs_c[None, :] * stride_vc  # (BLOCK_N, HEAD)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD], dtype=tl.float32)

    start = pid_s * keys_per_split
    stop = tl.minimum(start + keys_per_split, N)
    full_stop = start + ((stop - start) // BLOCK_N) * BLOCK_N  # keys_per_split is a BLOCK_N multiple
    for key0 in range(start, full_stop, BLOCK_N):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k_base, v_base, k_offs, v_offs, offs_n, key0, N,
                                      qk_scale, stride_kn, stride_vn, False)
    if full_stop < stop:  # the ragged last block of keys
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k_base, v_base, k_offs, v_offs, offs_n, full_stop, N,
                                      qk_scale, stride_kn, stride_vn, True)

    out = acc / l_i[:, None]
    lse2 = m_i + tl.math.log2(l_i)
    o_ptrs = Out + pid_b * stride_ob + offs_m[:, None] * stride_on + offs_c[None, :] * stride_oc
    if SPLIT:
        o_ptrs += pid_s.to(tl.int64) * stride_os
        tl.store(o_ptrs, out, mask=rows_ok[:, None])
        tl.store(Lse + (pid_s * batch + pid_b) * N + offs_m, lse2, mask=rows_ok)
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=rows_ok[:, None])
        tl.store(Lse + pid_b * N + offs_m, lse2 * LN2, mask=rows_ok)


@triton.jit
def _combine_kernel(
    Part, PartLse, Out, Lse,
    stride_ps, stride_pb, stride_pc, stride_pn,
    stride_ob, stride_oc, stride_on,
    N, C, SPLITS,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Merge ``SPLITS`` partial results: ``out = sum_s w_s o_s`` with ``w_s = 2^(lse_s - lse)``,
    ``lse = log2 sum_s 2^lse_s``. Grid ``(cdiv(N, BLOCK_P), B)``; partial lse ``(SPLITS, B, N)``;
    ``BLOCK_C >= C``: every channel of ``BLOCK_P`` positions per program."""
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    batch = tl.num_programs(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    lanes = tl.arange(0, BLOCK_C)
    offs_c = lanes % C  # masked lanes repeat in-range addresses; C % 16 == 0 keeps 16-wide runs
    p_ok = offs_p < N
    mask = (lanes[:, None] < C) & p_ok[None, :]
    m = tl.full([BLOCK_P], float("-inf"), dtype=tl.float32)
    for s in range(0, SPLITS):
        m = tl.maximum(m, tl.load(PartLse + (s * batch + pid_b) * N + offs_p, mask=p_ok, other=0.0))
    total = tl.zeros([BLOCK_P], dtype=tl.float32)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for s in range(0, SPLITS):  # s * stride_ps < 2^31: splitting needs B * N < 132 * BLOCK_M
        w = tl.math.exp2(tl.load(PartLse + (s * batch + pid_b) * N + offs_p, mask=p_ok, other=0.0) - m)
        part = tl.load(Part + s * stride_ps + pid_b * stride_pb + offs_c[:, None] * stride_pc
                       + offs_p[None, :] * stride_pn, mask=mask, other=0.0)
        total += w
        acc += part * w[None, :]
    tl.store(Lse + pid_b * N + offs_p, (m + tl.math.log2(total)) * LN2, mask=p_ok)
    o_ptrs = Out + pid_b * stride_ob + offs_c[:, None] * stride_oc + offs_p[None, :] * stride_on
    tl.store(o_ptrs, (acc / total[None, :]).to(Out.dtype.element_ty), mask=mask)
