"""Triton flash attention over spatial positions, head size up to 512: the forward pass.

``out[b, :, i] = sum_j softmax_j(s q[b, :, i] . k[b, :, j]) v[b, :, j]`` for ``q, k, v`` of shape
``(B, C, N)`` read in place through their strides (NCHW, channels-last, or channel slices of one
fused ``(B, 3C, N)`` projection), never materialising the ``N x N`` logits.

One program owns ``BLOCK_M`` queries of one image and streams the keys in blocks of ``BLOCK_N``
with the online softmax: running row maximum ``m`` and sum ``l`` in fp32, the output
accumulator ``(BLOCK_M, HEAD)`` in fp32, rescaled by ``exp2(m_old - m_new)`` when the maximum
grows. The logits ``q . k`` accumulate in fp32 (``tl.dot``), so they cannot overflow even for
fp16 inputs; the scale (times ``log2 e``, for ``exp2``) is applied to those fp32 logits inside
the exponent's multiply-add, which is where a pre-scaled ``q`` would put it, without rounding
``s q`` to the input dtype first.

Head size 512: a ``(BLOCK_M, 512)`` fp32 accumulator does not fit in registers at a useful
``BLOCK_M``, so the output channels are split over programs (``BLOCK_CO = 256``): each program
computes the full logits (all 512 channels of ``q . k``) and accumulates ``P V`` for its half of
the channels, 128 accumulator registers per thread at ``BLOCK_M = 128`` over 8 warps. When the
programs cannot fill the GPU, the keys are split across programs too; each writes a partial
result normalised by its own sum with its log-sum-exp, and :func:`_combine_kernel` merges them.

Saved for the backward pass: the natural-log log-sum-exp of every row, ``lse = log sum_j
exp(s q_i . k_j)`` (fp32, ``(B, N)``). The backward kernels are in
``spatial_attention_backward.py``.

Inputs are fp16 or bf16 (tensor-core MMAs, fp32 accumulation). fp32 attention is left to cuBLAS
(``vqvae_fast.ops.spatial_attention`` runs it in query chunks), which follows PyTorch's fp32
matmul precision setting; an fp32 flash kernel would need TF32 or three-pass TF32 products and
twice the registers and shared memory per tile.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from .gate import GateConfig

LOG2E = math.log2(math.e)


# ----------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _mm(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` with fp32 accumulation. ``UPCAST`` (set only under Triton's CPU
    interpreter, whose ``tl.dot`` mishandles bf16) widens the operands to fp32 first: exact,
    since products of bf16 values are exact in fp32 as on the tensor cores."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _attend_block(
    acc, m_i, l_i, q, k_base, v_base, k_offs, v_offs, offs_c, offs_co, offs_n, key0, N, C, qk_scale,
    stride_kn, stride_vn,
    EVEN_C: tl.constexpr, MASK_KEYS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """One step of the online softmax (log2 units): keys ``key0 + offs_n`` into ``m``, ``l`` and
    the accumulator of output channels ``offs_co``."""
    c_ok = offs_c < C
    co_ok = offs_co < C
    keys = key0 + offs_n
    if MASK_KEYS:
        k = tl.load(k_base + (k_offs + key0 * stride_kn), mask=c_ok[:, None] & (keys[None, :] < N), other=0.0)
    elif EVEN_C:
        k = tl.load(k_base + (k_offs + key0 * stride_kn))
    else:
        k = tl.load(k_base + (k_offs + key0 * stride_kn), mask=c_ok[:, None], other=0.0)
    s = _mm(q, k, None, PRECISION, UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N) fp32
    if MASK_KEYS:
        s = tl.where(keys[None, :] < N, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if MASK_KEYS:
        v = tl.load(v_base + (v_offs + key0 * stride_vn), mask=(keys[:, None] < N) & co_ok[None, :], other=0.0)
    elif EVEN_C:
        v = tl.load(v_base + (v_offs + key0 * stride_vn))
    else:
        v = tl.load(v_base + (v_offs + key0 * stride_vn), mask=co_ok[None, :], other=0.0)
    acc = _mm(p.to(v.dtype), v, acc, PRECISION, UPCAST)
    return acc, m_new, l_i


@triton.jit
def _forward_kernel(
    Q, K, V, Out, Lse,
    stride_qb, stride_qc, stride_qn,
    stride_kb, stride_kc, stride_kn,
    stride_vb, stride_vc, stride_vn,
    stride_ob, stride_oc, stride_on,  # Out: (B, C, N), or the fp32 partials (SPLITS, B, C, N)
    stride_os,
    N, C, keys_per_split, qk_scale,
    HEAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_CO: tl.constexpr,
    EVEN_C: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Grid ``(cdiv(N, BLOCK_M), B * HEAD // BLOCK_CO, SPLITS)``: queries ``pid_m``, image ``b``,
    output channels ``[co * BLOCK_CO, (co + 1) * BLOCK_CO)`` (the logits always use all ``C``),
    key range ``pid_s``. Without ``SPLIT``: ``Out`` gets the attention output and ``Lse``
    (``(B, N)``) the natural log-sum-exp. With ``SPLIT``: ``Out`` is the fp32 partial output of
    key range ``pid_s`` (normalised by its own sum) and ``Lse`` (``(SPLITS, B, N)``) its
    log2-sum-exp, for :func:`_combine_kernel`."""
    pid_m = tl.program_id(0)
    pid_b = (tl.program_id(1) // (HEAD // BLOCK_CO)).to(tl.int64)
    pid_co = tl.program_id(1) % (HEAD // BLOCK_CO)
    pid_s = tl.program_id(2)
    batch = tl.num_programs(1) // (HEAD // BLOCK_CO)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, HEAD)
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    rows_ok = offs_m < N
    c_ok = offs_c < C

    q_ptrs = Q + pid_b * stride_qb + offs_m[:, None] * stride_qn + offs_c[None, :] * stride_qc
    q = tl.load(q_ptrs, mask=rows_ok[:, None] & c_ok[None, :], other=0.0)  # (BLOCK_M, HEAD)
    # 64-bit image offsets in the scalar base; 32-bit offsets inside an image (fewer registers)
    k_base = K + pid_b * stride_kb
    v_base = V + pid_b * stride_vb
    k_offs = offs_c[:, None] * stride_kc + offs_n[None, :] * stride_kn  # (HEAD, BLOCK_N)
    v_offs = offs_n[:, None] * stride_vn + offs_co[None, :] * stride_vc  # (BLOCK_N, BLOCK_CO)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_CO], dtype=tl.float32)

    start = pid_s * keys_per_split
    stop = tl.minimum(start + keys_per_split, N)
    full_stop = start + ((stop - start) // BLOCK_N) * BLOCK_N  # keys_per_split is a BLOCK_N multiple
    for key0 in range(start, full_stop, BLOCK_N):
        acc, m_i, l_i = _attend_block(
            acc, m_i, l_i, q, k_base, v_base, k_offs, v_offs, offs_c, offs_co, offs_n, key0, N, C,
            qk_scale, stride_kn, stride_vn, EVEN_C, False, PRECISION, UPCAST,
        )
    if full_stop < stop:  # the ragged last block of keys
        acc, m_i, l_i = _attend_block(
            acc, m_i, l_i, q, k_base, v_base, k_offs, v_offs, offs_c, offs_co, offs_n, full_stop, N, C,
            qk_scale, stride_kn, stride_vn, EVEN_C, True, PRECISION, UPCAST,
        )

    out = acc / l_i[:, None]
    lse2 = m_i + tl.math.log2(l_i)
    out_mask = rows_ok[:, None] & (offs_co[None, :] < C)
    lse_mask = rows_ok & (pid_co == 0)  # every channel chunk has the same statistics
    o_ptrs = Out + pid_b * stride_ob + offs_m[:, None] * stride_on + offs_co[None, :] * stride_oc
    if SPLIT:
        o_ptrs += pid_s.to(tl.int64) * stride_os
        tl.store(o_ptrs, out, mask=out_mask)
        tl.store(Lse + (pid_s * batch + pid_b) * N + offs_m, lse2, mask=lse_mask)
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=out_mask)
        tl.store(Lse + pid_b * N + offs_m, lse2 * 0.6931471805599453, mask=lse_mask)


@triton.jit
def _combine_kernel(
    Part, PartLse, Out, Lse,
    stride_ps, stride_pb, stride_pc, stride_pn,
    stride_ob, stride_oc, stride_on,
    N, C, SPLITS,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Merge ``SPLITS`` partial results: ``out = sum_s w_s o_s`` with ``w_s = 2^(lse_s - lse)``,
    ``lse = log2 sum_s 2^lse_s``. Grid ``(cdiv(N, BLOCK_P), B)``; partial lse ``(SPLITS, B, N)``."""
    pid_p = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    batch = tl.num_programs(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < N
    m = tl.full([BLOCK_P], float("-inf"), dtype=tl.float32)
    for s in range(0, SPLITS):
        m = tl.maximum(m, tl.load(PartLse + (s * batch + pid_b) * N + offs_p, mask=p_ok, other=0.0))
    total = tl.zeros([BLOCK_P], dtype=tl.float32)
    for s in range(0, SPLITS):
        total += tl.math.exp2(tl.load(PartLse + (s * batch + pid_b) * N + offs_p, mask=p_ok, other=0.0) - m)
    lse2 = m + tl.math.log2(total)
    tl.store(Lse + pid_b * N + offs_p, lse2 * 0.6931471805599453, mask=p_ok)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask = (offs_c[:, None] < C) & p_ok[None, :]
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for s in range(0, SPLITS):  # s * stride_ps < 2^31: splitting needs B * N < 132 * BLOCK_M
            w = tl.math.exp2(tl.load(PartLse + (s * batch + pid_b) * N + offs_p, mask=p_ok, other=0.0) - lse2)
            part = tl.load(
                Part + s * stride_ps + pid_b * stride_pb + offs_c[:, None] * stride_pc + offs_p[None, :] * stride_pn,
                mask=mask, other=0.0,
            )
            acc += part * w[None, :]
        o_ptrs = Out + pid_b * stride_ob + offs_c[:, None] * stride_oc + offs_p[None, :] * stride_on
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launch configuration


@dataclass(frozen=True)
class ForwardConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    block_co: int | None = None  # output channels per program; None: the whole head


def head_size(channels: int) -> int:
    """The padded head size ``HEAD``: a power of two, at least 16 (``tl.dot`` needs K >= 16)."""
    return max(16, triton.next_power_of_2(channels))


def forward_configs(head: int, capability: int) -> tuple[ForwardConfig, ...]:
    """Tiles for padded head size ``head`` on compute capability ``capability`` (major*10+minor),
    best first (the launcher takes the next where the device refuses one's shared memory), or
    none where nothing fits (the caller then takes the chunked PyTorch path).

    Shared memory holds ``q`` (BLOCK_M x HEAD) and ``num_stages`` buffers of a key block
    (HEAD x BLOCK_N) and a value block (BLOCK_N x BLOCK_CO); registers hold the fp32 accumulator
    (BLOCK_M x BLOCK_CO) -- on sm_80, whose MMAs read their operands from registers, also ``q``
    itself, which is why heads above 128 have no sm_80 configuration.

    Head 512 on sm_90 splits the output channels over two programs (``BLOCK_CO = 256``, each
    recomputing the logits): a 128 x 512 fp32 accumulator does not fit in registers, and the
    alternative, 64 queries per program with the full head, makes both warpgroups compute the
    same logits (each warpgroup's MMA covers 64 rows and needs all of them for its half of
    ``P V``) with narrower key blocks -- the same recomputation at lower MMA efficiency. Its
    first configuration uses 224 of the 227 KB of shared memory; the second, 200 KB.
    """
    if capability >= 90:
        table = {
            64: (ForwardConfig(128, 64, 4, 3),),
            128: (ForwardConfig(128, 64, 8, 3),),
            256: (ForwardConfig(128, 64, 8, 2),),
            512: (ForwardConfig(128, 32, 8, 2, block_co=256), ForwardConfig(128, 16, 8, 3, block_co=256)),
        }
    elif capability >= 80:
        table = {64: (ForwardConfig(128, 64, 8, 3),), 128: (ForwardConfig(128, 64, 8, 3),)}
    else:
        return ()
    return table.get(max(head, 64), ())


def supported_dtype(dtype: torch.dtype) -> bool:
    """The kernels take fp16 and bf16 (fp32 takes cuBLAS, see the module docstring)."""
    return dtype in (torch.float16, torch.bfloat16)


def needs_upcast(t: torch.Tensor) -> bool:
    """bf16 ``tl.dot`` operands are widened only in the CPU interpreter (see :func:`_mm`)."""
    return t.dtype == torch.bfloat16 and t.device.type == "cpu"


@functools.lru_cache(maxsize=None)
def _device_facts(index: int) -> tuple[int, int]:
    props = torch.cuda.get_device_properties(index)
    return props.major * 10 + props.minor, props.multi_processor_count


def device_facts(device: torch.device) -> tuple[int, int]:
    """(compute capability, multiprocessor count); for CPU tensors (the interpreter) an H100's."""
    if device.type != "cuda":
        return 90, 132
    return _device_facts(device.index if device.index is not None else torch.cuda.current_device())


#: Fewest key blocks one split may get: below this the fp32 partial output and the combine pass
#: cost more than the idle multiprocessors they put to work (e.g. at (8, 512, 256)).
MIN_KEY_BLOCKS_PER_SPLIT = 4


def choose_splits(programs: int, key_blocks: int, processors: int) -> int:
    """How many key ranges to split each query block's work into.

    Split only when the ``programs`` query blocks fill less than 85% of one wave, into the
    fewest ranges that reach 85%, each keeping at least :data:`MIN_KEY_BLOCKS_PER_SPLIT` blocks.
    """
    most = key_blocks // MIN_KEY_BLOCKS_PER_SPLIT
    if programs >= 0.85 * processors or most < 2:
        return 1
    best = 1
    for splits in range(2, most + 1):
        best = splits
        if programs * splits >= 0.85 * processors:
            break
    return best


# ----------------------------------------------------------------------------------------------
# Launchers


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides for a launch; 0 for a dimension of size 1 (never stepped along), so that a batch
    of one keeps the other arguments' 16-divisibility, which the compiled code relies on."""
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride()))


def in_kernel_layout(t: torch.Tensor) -> bool:
    """Whether the kernels read ``t`` (``(B, C, N)``) in place with 16-byte copies. Triton
    specialises on 16-divisible integers, so: ``C`` a multiple of 16, a 16-byte-aligned start,
    and either positions innermost with ``N`` and the other strides multiples of 16 (NCHW, the
    attention block's projection) or channels innermost with the other strides multiples of 16
    (channels-last, token-major projections; any ``N``)."""
    channels, n = t.shape[1], t.shape[2]
    sb, sc, sn = _strides(t)
    if channels % 16 or t.data_ptr() % 16 or sb % 16:
        return False
    if sn == 1:
        return n % 16 == 0 and sc % 16 == 0
    return sc == 1 and sn % 16 == 0


#: Most rows past ``N`` any kernel forms before masking them: its largest block of queries or keys.
MAX_BLOCK = 128


def check_image_offsets(head: int, **tensors: torch.Tensor) -> None:
    """Refuse ``(B, C, N)`` tensors whose offsets within one image do not fit in 32 bits.

    The kernels keep the image offset (``b * stride_b``) 64-bit in the scalar base pointer and
    form offsets inside an image in 32 bits (fewer registers), up to
    ``(max(HEAD, 32) - 1) * stride_c + (N + MAX_BLOCK) * stride_n`` counting the masked rows and
    channel blocks past the ends; past 2^31 they would wrap and address another image's data.
    """
    for name, t in tensors.items():
        _, stride_c, stride_n = _strides(t)
        reach = (max(head, 32) - 1) * abs(stride_c) + (t.shape[2] + MAX_BLOCK) * abs(stride_n)
        if reach >= 2**31:
            raise ValueError(
                f"spatial_attention kernels address one image of {name} with 32-bit offsets: shape "
                f"{tuple(t.shape)} with strides {tuple(t.stride())} reaches offset {reach} >= 2^31 "
                "(keep channels x positions of one image below about 2^31)"
            )


def padded_channels(channels: int) -> int:
    return -(-channels // 16) * 16


def kernel_empty(like: torch.Tensor, channels: int) -> torch.Tensor:
    """An empty ``(B, channels, N)`` tensor in the kernels' layout (channels innermost)."""
    return like.new_empty((like.shape[0], like.shape[2], channels)).transpose(1, 2)


def kernel_input(t: torch.Tensor, channels: int) -> torch.Tensor:
    """``t`` itself when the kernels can read it in place with ``channels`` channels, else a
    copy with channels innermost, zero-padded to ``channels`` -- only for layouts that would
    force scalar loads (an odd number of positions with positions innermost, a channel count
    that is not a multiple of 16, other strides): O(N C) against the attention's O(N^2 C)."""
    if t.shape[1] == channels and in_kernel_layout(t):
        return t
    copy = kernel_empty(t, channels)
    if channels != t.shape[1]:
        copy[:, t.shape[1]:].zero_()  # zero channels add nothing to q . k and are never stored
    copy[:, :t.shape[1]].copy_(t)
    return copy


def kernel_output(t: torch.Tensor, channels: int) -> torch.Tensor:
    """``t`` itself, or an empty stand-in in the kernels' layout (copied back by the caller)."""
    return t if t.shape[1] == channels and in_kernel_layout(t) else kernel_empty(t, channels)


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    scale: float, splits: int | None = None,
) -> None:
    """Write the attention of ``(B, C, N)`` fp16/bf16 tensors into ``out`` (``(B, C, N)``, any
    strides) and the natural log-sum-exp of every query into ``lse`` (fp32, contiguous
    ``(B, N)``). Needs :func:`forward_configs` to give a configuration for this head size and
    device. ``splits`` overrides the number of key ranges (tests use it to reach the combine).
    """
    if out.numel() == 0:
        return
    head = head_size(q.shape[1])
    capability, processors = device_facts(q.device)
    configs = forward_configs(head, capability)
    if not configs:
        raise ValueError(f"no forward kernel configuration for head size {q.shape[1]} on sm_{capability}")
    channels = padded_channels(q.shape[1])
    q, k, v = (kernel_input(t, channels) for t in (q, k, v))
    target = kernel_output(out, channels)
    check_image_offsets(head, q=q, k=k, v=v, out=target)
    key = (head, capability)
    for index in range(_FIRST_WORKING.get(key, 0), len(configs)):
        try:
            _launch_forward(configs[index], q, k, v, target, lse, scale, splits, processors)
        except OutOfResources:
            if index == len(configs) - 1:
                raise
            continue
        _FIRST_WORKING[key] = index
        break
    if target is not out:
        out.copy_(target[:, : out.shape[1]])


_FIRST_WORKING: dict = {}  # (head, capability) -> index of the first configuration that launched


def _launch_forward(cfg: ForwardConfig, q, k, v, out, lse, scale, splits, processors) -> None:
    batch, channels, n = q.shape
    head = head_size(channels)
    block_co = cfg.block_co or head
    co_chunks = head // block_co
    m_blocks = triton.cdiv(n, cfg.block_m)
    key_blocks = triton.cdiv(n, cfg.block_n)
    if splits is None:
        splits = choose_splits(m_blocks * batch * co_chunks, key_blocks, processors)
    splits = max(1, min(splits, key_blocks))
    keys_per_split = triton.cdiv(key_blocks, splits) * cfg.block_n
    splits = triton.cdiv(n, keys_per_split)  # no empty ranges
    common = dict(
        HEAD=head, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_CO=block_co, EVEN_C=channels == head,
        PRECISION="tf32", UPCAST=needs_upcast(q), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    grid = (m_blocks, batch * co_chunks, splits)
    qk_scale = scale * LOG2E
    if splits == 1:
        _forward_kernel[grid](
            q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out), 0,
            n, channels, keys_per_split, qk_scale, SPLIT=False, **common,
        )
        return
    part = q.new_empty((splits, batch, n, channels), dtype=torch.float32).transpose(2, 3)
    check_image_offsets(head, out=part[0])
    part_lse = torch.empty((splits, batch, n), device=q.device, dtype=torch.float32)
    _forward_kernel[grid](
        q, k, v, part, part_lse, *_strides(q), *_strides(k), *_strides(v),
        *_strides(part[0]), part.stride(0), n, channels, keys_per_split, qk_scale, SPLIT=True, **common,
    )
    block_p = 64
    _combine_kernel[(triton.cdiv(n, block_p), batch)](
        part, part_lse, out, lse, part.stride(0), *_strides(part[0]), *_strides(out), n, channels, splits,
        BLOCK_P=block_p, BLOCK_C=32, num_warps=4,
    )


# ----------------------------------------------------------------------------------------------
# Compile gate

_GATE_ARCHS = {"sm_80": 80, "sm_90a": 90}


def gate_signature(
    kernel, pointers: dict, floats: tuple, constexprs: dict, unit_strides: tuple, unaligned: tuple = ()
) -> tuple[dict, dict, tuple]:
    """``(signature, constexprs, aligned)`` as the runtime would specialise a launch at aligned
    shapes: the strides in ``unit_strides`` equal 1 (constexpr), every other integer and every
    pointer 16-divisible."""
    constexprs = dict(constexprs, **{name: 1 for name in unit_strides})
    signature, aligned = {}, []
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
            aligned.append(name)
        elif name in floats:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name not in unaligned:
                aligned.append(name)
    return signature, constexprs, tuple(aligned)


#: gate layouts: name -> (unit-stride suffix, EVEN_C, integers not 16-divisible). The two layouts
#: :func:`friendly` lets through: positions innermost at aligned sizes (the attention block's
#: NCHW projection), and channels innermost with a ragged number of positions and channels.
GATE_LAYOUTS = {
    "positions innermost": ("n", True, ()),
    "channels innermost, ragged": ("c", False, ("N",)),
}
GATE_HEADS = (64, 128, 256, 512)  # the largest padded head size of each tile configuration


def gate_config(name, kernel, pointers, floats, constexprs, suffix, unaligned, cfg, arch, units=None) -> GateConfig:
    """One tensor-core kernel configuration, compiled for ``arch`` only (the one that picks it)."""
    if units is None:
        units = tuple(a for a in kernel.arg_names if a.startswith("stride_") and a.endswith(suffix))
    sig, cx, aligned = gate_signature(kernel, pointers, floats, constexprs, units, unaligned)
    return GateConfig(name, kernel, sig, cx, aligned, cfg.num_warps, cfg.num_stages,
                      tensor_cores=True, archs=(arch,))


def gate_configs() -> list:
    """Every forward configuration the launcher chooses, compiled for the architecture that
    chooses it: the forward kernel at each head size of :data:`GATE_HEADS` in bf16 (fp16 compiles
    to the same code with F16 MMAs) in both :data:`GATE_LAYOUTS`, the split-key forward and its
    combine step. The backward kernels' configurations are in
    ``spatial_attention_backward.gate_configs``."""
    configs = []
    for arch, capability in _GATE_ARCHS.items():
        for layout, (suffix, even_c, unaligned) in GATE_LAYOUTS.items():
            for head in GATE_HEADS:
                common = dict(HEAD=head, EVEN_C=even_c, PRECISION="tf32", UPCAST=False)
                for number, cfg in enumerate(forward_configs(head, capability)):
                    for split in (False, True) if head == 512 and number == 0 else (False,):
                        out = "fp32" if split else "bf16"
                        constexprs = dict(common, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                          BLOCK_CO=cfg.block_co or head, SPLIT=split)
                        name = f"forward{' split' if split else ''} head {head} {layout} {cfg}"
                        configs.append(gate_config(
                            name, _forward_kernel, {"Q": "bf16", "K": "bf16", "V": "bf16", "Out": out, "Lse": "fp32"},
                            ("qk_scale",), constexprs, suffix, unaligned, cfg, arch))
    sig, cx, aligned = gate_signature(
        _combine_kernel, {"Part": "fp32", "PartLse": "fp32", "Out": "bf16", "Lse": "fp32"}, (),
        dict(BLOCK_P=64, BLOCK_C=32), ("stride_pc", "stride_on"), unaligned=("SPLITS",),
    )
    configs.append(GateConfig("combine", _combine_kernel, sig, cx, aligned, 4, 3, wide_loads=True))
    return configs
