"""Triton flash attention over spatial positions: the backward pass.

With ``P = softmax(s Qᵀ K)`` recomputed block by block from the saved row log-sum-exp
(nothing ``N x N`` is stored), ``dO`` the gradient of the output and
``Delta_i = sum_c O[c, i] dO[c, i]``:

.. math::
    dV = dO\\,P, \\qquad dP = dO^\\top V, \\qquad dS = P \\circ (dP - \\Delta),
    \\qquad dQ = s\\,K\\,dS^\\top, \\qquad dK = s\\,Q\\,dS

all in the ``(B, C, N)`` layout of the inputs (``dV = dO P`` is ``(C, N)``). Three kernels:

* :func:`_delta_kernel` -- ``Delta`` (fp32, ``(B, N)``).
* :func:`_dkdv_kernel` -- one program per block of ``BLOCK_N`` keys; streams the queries and
  accumulates ``dKᵀ``, ``dVᵀ`` as ``(HEAD, BLOCK_N)`` fp32 tiles.
* :func:`_dq_kernel` -- one program per block of ``BLOCK_M`` queries (and key range); streams
  the keys and accumulates ``dQᵀ`` as a ``(HEAD, BLOCK_M)`` fp32 tile.

Both main kernels keep the head dimension as the rows of their accumulators, so the large
products (``M = HEAD``) map onto full warpgroup MMAs. Two kernels instead of atomic ``dQ``
updates: deterministic, at the price of computing ``S`` and ``dP`` twice. When the query blocks
cannot fill the GPU (batch 1), the dQ kernel also splits the keys and writes fp32 partial sums
that the launcher adds. Head sizes up to 256 (128 on sm_80): head 512 takes the chunked
PyTorch backward (see :func:`backward_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .gate import GateConfig
from .spatial_attention import (
    _GATE_ARCHS, GATE_HEADS, GATE_LAYOUTS, LOG2E, _mm, _strides, check_image_offsets, choose_splits, device_facts,
    gate_config, gate_signature, head_size, kernel_input, kernel_output, needs_upcast, padded_channels,
)


@triton.jit
def _delta_kernel(
    Out, dOut, Delta,
    stride_ob, stride_oc, stride_on, stride_db, stride_dc, stride_dn,
    N, C,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``Delta[b, n] = sum_c Out[b, c, n] dOut[b, c, n]`` in fp32. Grid ``(cdiv(N, BLOCK_P), B)``."""
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < N
    total = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask = (offs_c[:, None] < C) & p_ok[None, :]
        o = tl.load(Out + pid_b * stride_ob + offs_c[:, None] * stride_oc + offs_p[None, :] * stride_on, mask=mask, other=0.0)
        do = tl.load(dOut + pid_b * stride_db + offs_c[:, None] * stride_dc + offs_p[None, :] * stride_dn, mask=mask, other=0.0)
        total += tl.sum(o.to(tl.float32) * do.to(tl.float32), 0)
    tl.store(Delta + pid_b * N + offs_p, total, mask=p_ok)


@triton.jit
def _dkdv_step(
    dk, dv, k, v, q_base, do_base, q_offs, do_offs, Lse, Delta, m0, offs_m, offs_c, N, C, qk_scale,
    stride_qn, stride_dn,
    EVEN_C: tl.constexpr, MASK_ROWS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Add the contribution of queries ``m0 + offs_m`` to ``dKᵀ`` and ``dVᵀ`` (``(HEAD, BLOCK_N)``)."""
    rows = m0 + offs_m
    if MASK_ROWS:
        mask = (offs_c[:, None] < C) & (rows[None, :] < N)
        qt = tl.load(q_base + (q_offs + m0 * stride_qn), mask=mask, other=0.0)  # (HEAD, BLOCK_M)
        dot = tl.load(do_base + (do_offs + m0 * stride_dn), mask=mask, other=0.0)  # (HEAD, BLOCK_M)
        lse2 = tl.load(Lse + rows, mask=rows < N, other=float("inf")) * 1.4426950408889634
        delta = tl.load(Delta + rows, mask=rows < N, other=0.0)
    else:
        if EVEN_C:
            qt = tl.load(q_base + (q_offs + m0 * stride_qn))
            dot = tl.load(do_base + (do_offs + m0 * stride_dn))
        else:
            qt = tl.load(q_base + (q_offs + m0 * stride_qn), mask=offs_c[:, None] < C, other=0.0)
            dot = tl.load(do_base + (do_offs + m0 * stride_dn), mask=offs_c[:, None] < C, other=0.0)
        lse2 = tl.load(Lse + rows) * 1.4426950408889634
        delta = tl.load(Delta + rows)
    s = _mm(tl.trans(qt), k, None, PRECISION, UPCAST)  # (BLOCK_M, BLOCK_N) logits / scale
    p = tl.math.exp2(s * qk_scale - lse2[:, None])  # rows past N: lse2 = inf, p = 0
    dv = _mm(dot, p.to(dot.dtype), dv, PRECISION, UPCAST)  # += dO P, (HEAD, BLOCK_N)
    dp = _mm(tl.trans(dot), v, None, PRECISION, UPCAST)  # (BLOCK_M, BLOCK_N)
    ds = p * (dp - delta[:, None])
    dk = _mm(qt, ds.to(qt.dtype), dk, PRECISION, UPCAST)  # += Q dS, (HEAD, BLOCK_N)
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
    N, C, scale, qk_scale,
    HEAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_C: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Grid ``(cdiv(N, BLOCK_N), B)``: ``dK``, ``dV`` for one block of keys of one image."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, HEAD)
    kv_mask = (offs_c[:, None] < C) & (offs_n[None, :] < N)
    k = tl.load(K + pid_b * stride_kb + offs_c[:, None] * stride_kc + offs_n[None, :] * stride_kn, mask=kv_mask, other=0.0)
    v = tl.load(V + pid_b * stride_vb + offs_c[:, None] * stride_vc + offs_n[None, :] * stride_vn, mask=kv_mask, other=0.0)
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
        dk, dv = _dkdv_step(
            dk, dv, k, v, q_base, do_base, q_offs, do_offs, lse, delta, m0, offs_m, offs_c, N, C,
            qk_scale, stride_qn, stride_dn, EVEN_C, False, PRECISION, UPCAST,
        )
    if full_stop < N:
        dk, dv = _dkdv_step(
            dk, dv, k, v, q_base, do_base, q_offs, do_offs, lse, delta, full_stop, offs_m, offs_c, N, C,
            qk_scale, stride_qn, stride_dn, EVEN_C, True, PRECISION, UPCAST,
        )

    dk = dk * scale
    tl.store(dK + pid_b * stride_dkb + offs_c[:, None] * stride_dkc + offs_n[None, :] * stride_dkn,
             dk.to(dK.dtype.element_ty), mask=kv_mask)
    tl.store(dV + pid_b * stride_dvb + offs_c[:, None] * stride_dvc + offs_n[None, :] * stride_dvn,
             dv.to(dV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_step(
    dq, qt, dot, lse2, delta, k_base, v_base, k_offs, v_offs, n0, offs_n, offs_c, N, C, qk_scale,
    stride_kn, stride_vn,
    EVEN_C: tl.constexpr, MASK_KEYS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Add the contribution of keys ``n0 + offs_n`` to ``dQᵀ`` (``(HEAD, BLOCK_M)``, unscaled)."""
    cols = n0 + offs_n
    if MASK_KEYS:
        mask = (offs_c[:, None] < C) & (cols[None, :] < N)
        k = tl.load(k_base + (k_offs + n0 * stride_kn), mask=mask, other=0.0)  # (HEAD, BLOCK_N)
        v = tl.load(v_base + (v_offs + n0 * stride_vn), mask=mask, other=0.0)
    elif EVEN_C:
        k = tl.load(k_base + (k_offs + n0 * stride_kn))
        v = tl.load(v_base + (v_offs + n0 * stride_vn))
    else:
        k = tl.load(k_base + (k_offs + n0 * stride_kn), mask=offs_c[:, None] < C, other=0.0)
        v = tl.load(v_base + (v_offs + n0 * stride_vn), mask=offs_c[:, None] < C, other=0.0)
    s = _mm(tl.trans(qt), k, None, PRECISION, UPCAST)  # (BLOCK_M, BLOCK_N)
    p = tl.math.exp2(s * qk_scale - lse2[:, None])
    if MASK_KEYS:
        p = tl.where(cols[None, :] < N, p, 0.0)
    dp = _mm(tl.trans(dot), v, None, PRECISION, UPCAST)  # (BLOCK_M, BLOCK_N)
    ds = p * (dp - delta[:, None])
    return _mm(k, tl.trans(ds.to(k.dtype)), dq, PRECISION, UPCAST)  # += K dSᵀ


@triton.jit
def _dq_kernel(
    Q, K, V, dOut, Lse, Delta, dQ,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_db, stride_dc, stride_dn,
    stride_dqb, stride_dqc, stride_dqn,  # dQ: (B, C, N), or fp32 partial sums (SPLITS, B, C, N)
    stride_dqs,
    N, C, keys_per_split, scale, qk_scale,
    HEAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_C: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
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
    q_mask = (offs_c[:, None] < C) & rows_ok[None, :]
    qt = tl.load(Q + pid_b * stride_qb + offs_c[:, None] * stride_qc + offs_m[None, :] * stride_qn, mask=q_mask, other=0.0)
    dot = tl.load(dOut + pid_b * stride_db + offs_c[:, None] * stride_dc + offs_m[None, :] * stride_dn, mask=q_mask, other=0.0)
    lse2 = tl.load(Lse + pid_b * N + offs_m, mask=rows_ok, other=float("inf")) * 1.4426950408889634
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
        dq = _dq_step(
            dq, qt, dot, lse2, delta, k_base, v_base, k_offs, v_offs, n0, offs_n, offs_c, N, C,
            qk_scale, stride_kn, stride_vn, EVEN_C, False, PRECISION, UPCAST,
        )
    if full_stop < stop:
        dq = _dq_step(
            dq, qt, dot, lse2, delta, k_base, v_base, k_offs, v_offs, full_stop, offs_n, offs_c, N, C,
            qk_scale, stride_kn, stride_vn, EVEN_C, True, PRECISION, UPCAST,
        )
    dq = dq * scale
    dq_ptrs = dQ + pid_s.to(tl.int64) * stride_dqs + pid_b * stride_dqb
    tl.store(dq_ptrs + offs_c[:, None] * stride_dqc + offs_m[None, :] * stride_dqn,
             dq.to(dQ.dtype.element_ty), mask=q_mask)


# ----------------------------------------------------------------------------------------------
# Launch configuration


@dataclass(frozen=True)
class BackwardConfig:
    block_m: int  # queries per step (dK/dV kernel) or per program (dQ kernel)
    block_n: int  # keys per program (dK/dV kernel) or per step (dQ kernel)
    num_warps: int
    num_stages: int


def backward_configs(head: int, capability: int) -> tuple[BackwardConfig, BackwardConfig] | None:
    """``(dK/dV config, dQ config)`` for padded head size ``head`` on compute capability
    ``capability``, or None where none fits (the caller then takes the chunked PyTorch path).

    Head 512 has none: the dK/dV program needs ``dKᵀ`` and ``dVᵀ`` in registers (``2 x 512 x
    BLOCK_N`` fp32, so ``BLOCK_N <= 32``) and streams ``q`` and ``dO`` blocks (``2 x 512 x
    BLOCK_M`` 16-bit values per pipeline stage, so ``BLOCK_M <= 32`` in 227 KB with two stages);
    a 32 x 32 logits tile is below the 64 rows of a warpgroup MMA, and the register-operand MMA
    it falls back to spills at ``K = 512``.

    ``BLOCK_M`` is the row count of the logits tiles ``S`` and ``dP``; Triton gives each warp
    16 of those rows (the tiles feed further products), so 8 warps want ``BLOCK_M = 128``: at 64
    both warpgroups compute the same logits. Head 256 dK/dV accepts that (128 queries per step
    of ``q`` and ``dO`` would need 256 KB of shared memory for two stages).
    """
    if capability >= 90:
        table = {64: (BackwardConfig(64, 64, 4, 3), BackwardConfig(64, 64, 4, 3)),
                 128: (BackwardConfig(128, 64, 8, 2), BackwardConfig(128, 64, 8, 3)),
                 256: (BackwardConfig(64, 32, 8, 2), BackwardConfig(128, 32, 8, 2))}
    elif capability >= 80:
        table = {64: (BackwardConfig(64, 32, 4, 3), BackwardConfig(64, 64, 4, 3)),
                 128: (BackwardConfig(128, 16, 8, 3), BackwardConfig(128, 32, 8, 3))}
    else:
        return None
    return table.get(max(head, 64))


# ----------------------------------------------------------------------------------------------
# Launcher


def backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
    scale: float,
) -> None:
    """Write the gradients of the attention of ``(B, C, N)`` fp16/bf16 tensors into ``dq``,
    ``dk``, ``dv`` (any strides); ``lse`` is the forward's fp32 ``(B, N)`` log-sum-exp. Needs
    :func:`backward_configs` to give configurations for this head size and device."""
    batch, channels, n = q.shape
    if dq.numel() == 0:
        return
    head = head_size(channels)
    capability, processors = device_facts(q.device)
    configs = backward_configs(head, capability)
    if configs is None:
        raise ValueError(f"no backward kernel configuration for head size {channels} on sm_{capability}")
    kv_cfg, q_cfg = configs
    check_image_offsets(head, out=out, grad_out=grad_out)
    delta = torch.empty((batch, n), device=q.device, dtype=torch.float32)
    block_p = 64
    _delta_kernel[(triton.cdiv(n, block_p), batch)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), n, channels,
        BLOCK_P=block_p, BLOCK_C=32, num_warps=4,
    )
    lse = lse.contiguous()
    channels = padded_channels(channels)
    q, k, v, grad_out = (kernel_input(t, channels) for t in (q, k, v, grad_out))
    targets = [kernel_output(t, channels) for t in (dq, dk, dv)]
    check_image_offsets(head, q=q, k=k, v=v, grad_out=grad_out, dq=targets[0], dk=targets[1], dv=targets[2])
    common = dict(HEAD=head, EVEN_C=channels == head, PRECISION="tf32", UPCAST=needs_upcast(q))
    inputs = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
    _dkdv_kernel[(triton.cdiv(n, kv_cfg.block_n), batch)](
        q, k, v, grad_out, lse, delta, targets[1], targets[2], *inputs, *_strides(targets[1]), *_strides(targets[2]),
        n, channels, scale, scale * LOG2E, BLOCK_M=kv_cfg.block_m, BLOCK_N=kv_cfg.block_n,
        num_warps=kv_cfg.num_warps, num_stages=kv_cfg.num_stages, **common,
    )
    m_blocks, key_blocks = triton.cdiv(n, q_cfg.block_m), triton.cdiv(n, q_cfg.block_n)
    splits = choose_splits(m_blocks * batch, key_blocks, processors)
    keys_per_split = triton.cdiv(key_blocks, splits) * q_cfg.block_n
    splits = triton.cdiv(n, keys_per_split)
    dq_out = targets[0]
    if splits > 1:  # fp32 partial sums over key ranges, added below
        dq_out = q.new_empty((splits, batch, n, channels), dtype=torch.float32).transpose(2, 3)
        check_image_offsets(head, dq=dq_out[0])
    _dq_kernel[(m_blocks, batch, splits)](
        q, k, v, grad_out, lse, delta, dq_out, *inputs, *_strides(dq_out[0] if splits > 1 else dq_out),
        dq_out.stride(0) if splits > 1 else 0, n, channels, keys_per_split, scale, scale * LOG2E,
        BLOCK_M=q_cfg.block_m, BLOCK_N=q_cfg.block_n,
        num_warps=q_cfg.num_warps, num_stages=q_cfg.num_stages, **common,
    )
    if splits > 1:
        targets[0].copy_(dq_out.sum(0))
    for target, result in zip(targets, (dq, dk, dv)):
        if target is not result:
            result.copy_(target[:, : result.shape[1]])


def gate_configs() -> list:
    """Every backward configuration the launchers choose, compiled for the architecture that
    chooses it: the dK/dV and dQ kernels at each head size with a kernel configuration, in both
    gate layouts, the dQ kernel writing fp32 partial sums (split keys), and the ``Delta`` kernel."""
    configs = []
    for arch, capability in _GATE_ARCHS.items():
        for layout, (suffix, even_c, unaligned) in GATE_LAYOUTS.items():
            for head in GATE_HEADS:
                backward = backward_configs(head, capability)
                if backward is None:
                    continue
                common = dict(HEAD=head, EVEN_C=even_c, PRECISION="tf32", UPCAST=False)
                pointers = {a: "bf16" for a in ("Q", "K", "V", "dOut", "dK", "dV", "dQ")}
                pointers.update(Lse="fp32", Delta="fp32")
                for name, kernel, bc in (("dkdv", _dkdv_kernel, backward[0]), ("dq", _dq_kernel, backward[1])):
                    configs.append(gate_config(
                        f"{name} head {head} {layout} {bc}", kernel, pointers, ("scale", "qk_scale"),
                        dict(common, BLOCK_M=bc.block_m, BLOCK_N=bc.block_n), suffix, unaligned, bc, arch))
                if suffix == "n" and head == (256 if capability >= 90 else 128):  # dQ in fp32 partial sums
                    bc = backward[1]
                    units = ("stride_qn", "stride_kn", "stride_vn", "stride_dn", "stride_dqc")
                    configs.append(gate_config(
                        f"dq split head {head} {layout} {bc}", _dq_kernel, dict(pointers, dQ="fp32"),
                        ("scale", "qk_scale"), dict(common, BLOCK_M=bc.block_m, BLOCK_N=bc.block_n),
                        suffix, unaligned, bc, arch, units))
    sig, cx, aligned = gate_signature(
        _delta_kernel, {"Out": "bf16", "dOut": "bf16", "Delta": "fp32"}, (),
        dict(BLOCK_P=64, BLOCK_C=32), ("stride_on", "stride_dn"),
    )
    configs.append(GateConfig("delta", _delta_kernel, sig, cx, aligned, 4, 3, wide_loads=True))
    return configs
