"""Launch planning for the ``spatial_attention`` forward pass, and the operand layouts both passes use.

The kernels (``spatial_attention_jit.py``) read ``(B, C, N)`` operands through their strides.
Before a launch every operand is brought to one of the two layouts of the table
(``spatial_attention_table.py``): positions innermost (``"n"``: NCHW and the attention block's
projection, read in place when ``N`` and the other strides are 16-divisible) or channels
innermost (``"c"``: channels-last and token-major projections read in place; every other
operand is copied once into it, channels zero-padded to the head size). The copy is O(N C)
against the attention's O(N^2 C).

A launch plan (table entries, grid, key splits) depends only on sizes, dtype, layout and the
device, and is cached per such key (:func:`forward_plan`).

Inputs are fp16 or bf16 (tensor-core MMAs, fp32 accumulation). fp32 attention is left to cuBLAS
(``vqvae_fast.ops.spatial_attention`` runs it in query chunks), which follows PyTorch's fp32
matmul precision setting.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
from triton.runtime.errors import OutOfResources

from vqvae_fast._device import capability, device_guard, sm_count

from . import spatial_attention_jit as jit
from . import spatial_attention_table as T
from ._table import Launch, launch_strides, run
from .spatial_attention_table import backward_configs, forward_configs  # noqa: F401  (the launchers' API)

LOG2E = math.log2(math.e)
TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
#: Fewest key blocks one split may get: below this the fp32 partial output and the combine pass
#: cost more than the idle multiprocessors they put to work (e.g. at (8, 512, 256)).
MIN_KEY_BLOCKS_PER_SPLIT = 4
#: Most rows past ``N`` any kernel forms before masking them: its largest block of queries or keys.
MAX_BLOCK = 128


def head_size(channels: int) -> int:
    """The head size ``HEAD`` the kernels run at: the next of the table's :data:`HEADS`."""
    return max(T.HEADS[0], triton.next_power_of_2(channels))


def supported_dtype(dtype: torch.dtype) -> bool:
    """The kernels take fp16 and bf16 (fp32 takes cuBLAS, see the module docstring)."""
    return dtype in TRITON_TYPES


def device_facts(device: torch.device) -> tuple[int, int]:
    """(compute capability, multiprocessor count); off CUDA (the interpreter) an H100's."""
    return capability(device), sm_count(device)


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


def key_ranges(n: int, block_n: int, splits: int) -> tuple[int, int]:
    """``(splits, keys_per_split)``: at most ``splits`` ranges of whole key blocks, none empty."""
    key_blocks = triton.cdiv(n, block_n)
    keys_per_split = triton.cdiv(key_blocks, max(1, min(splits, key_blocks))) * block_n
    return triton.cdiv(n, keys_per_split), keys_per_split


# ----------------------------------------------------------------------------------------------
# Operand layouts


def in_kernel_layout(t: torch.Tensor, layout: str | None = None) -> bool:
    """Whether the kernels read ``t`` (``(B, C, N)``) in place with 16-byte copies, in ``layout``
    (either, if ``None``). Triton specialises on 16-divisible integers, so: ``C`` a multiple of
    16, a 16-byte-aligned start, and either positions innermost with ``N`` and the other strides
    multiples of 16 (``"n"``) or channels innermost with the other strides multiples of 16
    (``"c"``; any ``N``)."""
    channels, n = t.shape[1], t.shape[2]
    sb, sc, sn = launch_strides(t)
    if channels % 16 or t.data_ptr() % 16 or sb % 16:
        return False
    if sn == 1:
        return layout in (None, "n") and n % 16 == 0 and sc % 16 == 0
    return layout in (None, "c") and sc == 1 and sn % 16 == 0


def choose_layout(channels: int, *tensors: torch.Tensor) -> str:
    """``"n"`` when every operand can be read in place with positions innermost and
    ``channels`` channels; ``"c"`` otherwise (operands not already so laid out are copied)."""
    if all(t.shape[1] == channels and in_kernel_layout(t, "n") for t in tensors):
        return "n"
    return "c"


def kernel_empty(like: torch.Tensor, channels: int) -> torch.Tensor:
    """An empty ``(B, channels, N)`` tensor with channels innermost (layout ``"c"``)."""
    return like.new_empty((like.shape[0], like.shape[2], channels)).transpose(1, 2)


def kernel_input(t: torch.Tensor, channels: int, layout: str) -> torch.Tensor:
    """``t`` itself when the kernels can read it in place in ``layout`` with ``channels``
    channels, else a copy with channels innermost, zero-padded to ``channels``."""
    if t.shape[1] == channels and in_kernel_layout(t, layout):
        return t
    copy = kernel_empty(t, channels)
    if channels != t.shape[1]:
        copy[:, t.shape[1]:].zero_()  # zero channels add nothing to q . k and are never stored
    copy[:, :t.shape[1]].copy_(t)
    return copy


def kernel_output(t: torch.Tensor, channels: int, layout: str) -> torch.Tensor:
    """``t`` itself, or an empty stand-in in layout ``"c"`` (copied back by the caller)."""
    return t if t.shape[1] == channels and in_kernel_layout(t, layout) else kernel_empty(t, channels)


def check_image_offsets(head: int, **tensors: torch.Tensor) -> None:
    """Refuse ``(B, C, N)`` tensors whose offsets within one image do not fit in 32 bits.

    The kernels keep the image offset (``b * stride_b``) 64-bit in the scalar base pointer and
    form offsets inside an image in 32 bits (fewer registers), up to
    ``(HEAD - 1) * stride_c + (N + MAX_BLOCK) * stride_n`` counting the masked rows past the end;
    past 2^31 they would wrap and address another image's data.
    """
    for name, t in tensors.items():
        _, stride_c, stride_n = launch_strides(t)
        reach = (head - 1) * abs(stride_c) + (t.shape[2] + MAX_BLOCK) * abs(stride_n)
        if reach >= 2**31:
            raise ValueError(
                f"spatial_attention kernels address one image of {name} with 32-bit offsets: shape "
                f"{tuple(t.shape)} with strides {tuple(t.stride())} reaches offset {reach} >= 2^31 "
                "(keep channels x positions of one image below about 2^31)"
            )


# ----------------------------------------------------------------------------------------------
# Forward


@functools.lru_cache(maxsize=1024)
def forward_plan(batch, n, head, dtype, layout, arch, tile, processors, splits=None):
    """``(forward entry, grid, splits, keys_per_split, combine entry or None)``."""
    m_blocks = triton.cdiv(n, tile.block_m)
    if splits is None:
        splits = choose_splits(m_blocks * batch, triton.cdiv(n, tile.block_n), processors)
    splits, keys_per_split = key_ranges(n, tile.block_n, splits)
    entry = T.TABLE.find(arch, T.forward_entry(arch, head, tile, dtype, layout, splits > 1))
    combine = T.TABLE.find(arch, T.combine_entry(arch, dtype, layout)) if splits > 1 else None
    return entry, (m_blocks, batch, splits), splits, keys_per_split, combine


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    scale: float, splits: int | None = None,
) -> None:
    """Write the attention of ``(B, C, N)`` fp16/bf16 tensors into ``out`` (``(B, C, N)``, any
    strides) and the natural log-sum-exp of every query into ``lse`` (fp32, contiguous
    ``(B, N)``). Needs :func:`forward_configs` to give a tile for this head size and device.
    ``splits`` overrides the number of key ranges (tests use it to reach the combine).
    """
    if out.numel() == 0:
        return
    head = head_size(q.shape[1])
    capability_, processors = device_facts(q.device)
    configs = forward_configs(head, capability_)
    if not configs:
        raise ValueError(f"no forward kernel configuration for head size {q.shape[1]} on sm_{capability_}")
    layout = choose_layout(head, q, k, v, out)
    q, k, v = (kernel_input(t, head, layout) for t in (q, k, v))
    target = kernel_output(out, head, layout)
    check_image_offsets(head, q=q, k=k, v=v, out=target)
    with device_guard(q):
        if isinstance(configs, T.RowsForward):
            from . import spatial_attention_rows as rows  # the head 256-512 kernels, loaded when used

            plan = rows.forward_plan(q.shape[0], q.shape[2], head, TRITON_TYPES[q.dtype], layout,
                                     T.arch_name(capability_), processors)
            run(rows.forward_launches(plan, q, k, v, target, lse, scale * LOG2E))
        else:
            _forward_flash(configs, (head, capability_), q, k, v, target, lse, scale, splits, processors)
    if target is not out:
        out.copy_(target[:, : out.shape[1]])


def _forward_flash(configs, key, q, k, v, out, lse, scale, splits, processors) -> None:
    """The flash kernel with the first of ``configs`` whose shared memory the device grants."""
    for index in range(_FIRST_WORKING.get(key, 0), len(configs)):
        try:
            _launch_forward(configs[index], q, k, v, out, lse, scale, splits, processors)
        except OutOfResources:
            if index == len(configs) - 1:
                raise
            continue
        _FIRST_WORKING[key] = index
        break


_FIRST_WORKING: dict = {}  # (head, capability) -> index of the first tile that launched


def _launch_forward(tile, q, k, v, out, lse, scale, splits, processors) -> None:
    batch, head, n = q.shape
    layout = "n" if launch_strides(q)[2] == 1 else "c"
    arch = T.arch_name(device_facts(q.device)[0])
    entry, grid, splits, keys_per_split, combine = forward_plan(
        batch, n, head, TRITON_TYPES[q.dtype], layout, arch, tile, processors, splits)
    qk_scale = scale * LOG2E
    inputs = (*launch_strides(q), *launch_strides(k), *launch_strides(v))
    if combine is None:
        run([Launch(entry, jit._forward_kernel, grid,
                    (q, k, v, out, lse, *inputs, *launch_strides(out), 0, n, keys_per_split, qk_scale))])
        return
    part = q.new_empty((splits, batch, n, head), dtype=torch.float32).transpose(2, 3)
    check_image_offsets(head, out=part[0])
    part_lse = torch.empty((splits, batch, n), device=q.device, dtype=torch.float32)
    block_p = T.REDUCE_TILE["BLOCK_P"]
    run([
        Launch(entry, jit._forward_kernel, grid, (q, k, v, part, part_lse, *inputs, *launch_strides(part[0]),
                                                  part.stride(0), n, keys_per_split, qk_scale)),
        Launch(combine, jit._combine_kernel, (triton.cdiv(n, block_p), batch),
               (part, part_lse, out, lse, part.stride(0), *launch_strides(part[0]), *launch_strides(out), n, head,
                splits)),
    ])
