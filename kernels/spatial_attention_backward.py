"""Launch planning for the ``spatial_attention`` backward pass: ``Delta``, then either the
flash-style kernels (``spatial_attention_backward_jit.py``: ``dK``/``dV``, then ``dQ``, with the
keys split over programs into fp32 partial sums when the query blocks alone cannot fill the GPU)
or, for the large heads, the backward by blocks of query rows (``spatial_attention_rows.py``), as
``spatial_attention_table.BACKWARD_TILES`` says per head and architecture. Every head size up to
512 has one on sm_80 and sm_90a. Operands take one layout of the table, as in the forward
(``spatial_attention.py``); plans are cached per sizes, dtype, layout and device. The backward
needs only the forward's ``lse``, so it runs after either forward (Triton or chunked PyTorch).
"""

from __future__ import annotations

import functools

import torch
import triton

from vqvae_fast._device import device_guard

from . import spatial_attention_backward_jit as jit
from . import spatial_attention_rows as rows
from . import spatial_attention_table as T
from ._table import Launch, launch_strides, run
from .spatial_attention import (
    LOG2E, TRITON_TYPES, check_image_offsets, choose_layout, choose_splits, device_facts, head_size,
    kernel_input, kernel_output, key_ranges,
)
from .spatial_attention_table import backward_configs  # noqa: F401  (the launcher's API)


@functools.lru_cache(maxsize=64)
def delta_plan(arch, dtype, layout):
    return T.TABLE.find(arch, T.delta_entry(arch, dtype, layout))


@functools.lru_cache(maxsize=1024)
def backward_plan(batch, n, head, dtype, layout, arch, processors):
    """``((dK/dV entry, dQ entry), (their grids), splits, keys_per_split)`` of the flash-style
    backward."""
    tiles = T.BACKWARD_TILES[arch][head]
    m_blocks = triton.cdiv(n, tiles.q.block_m)
    splits = choose_splits(m_blocks * batch, triton.cdiv(n, tiles.q.block_n), processors)
    splits, keys_per_split = key_ranges(n, tiles.q.block_n, splits)
    entries = (T.TABLE.find(arch, T.dkdv_entry(arch, head, tiles.kv, dtype, layout)),
               T.TABLE.find(arch, T.dq_entry(arch, head, tiles.q, dtype, layout, splits > 1)))
    return entries, ((triton.cdiv(n, tiles.kv.block_n), batch), (m_blocks, batch, splits)), splits, keys_per_split


def backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
    scale: float,
) -> None:
    """Write the gradients of the attention of ``(B, C, N)`` fp16/bf16 tensors into ``dq``,
    ``dk``, ``dv`` (any strides); ``lse`` is the forward's fp32 ``(B, N)`` log-sum-exp. Needs
    :func:`backward_configs` to give tiles for this head size and device."""
    batch, channels, n = q.shape
    if dq.numel() == 0:
        return
    head = head_size(channels)
    capability, processors = device_facts(q.device)
    if backward_configs(head, capability) is None:
        raise ValueError(f"no backward kernel configuration for head size {channels} on sm_{capability}")
    layout = choose_layout(head, q, k, v, grad_out, out, dq, dk, dv)
    q, k, v, grad_out, out = (kernel_input(t, head, layout) for t in (q, k, v, grad_out, out))
    targets = [kernel_output(t, head, layout) for t in (dq, dk, dv)]
    check_image_offsets(head, q=q, k=k, v=v, grad_out=grad_out, out=out, dq=targets[0], dk=targets[1], dv=targets[2])
    arch = T.arch_name(capability)
    dtype = TRITON_TYPES[q.dtype]
    delta = torch.empty((batch, n), device=q.device, dtype=torch.float32)
    lse = lse.contiguous()
    delta_launch = Launch(delta_plan(arch, dtype, layout), jit._delta_kernel,
                          (triton.cdiv(n, T.REDUCE_TILE["BLOCK_P"]), batch),
                          (out, grad_out, delta, *launch_strides(out), *launch_strides(grad_out), n, head))
    if isinstance(backward_configs(head, capability), T.RowsBackward):
        plan = rows.rows_plan(batch, n, head, dtype, layout, arch, processors)
        with device_guard(q):
            run([delta_launch, *rows.launches(plan, q, k, v, grad_out, lse, delta, *targets, scale, scale * LOG2E)])
    else:
        _flash(q, k, v, grad_out, lse, delta, targets, scale, delta_launch, backward_plan(
            batch, n, head, dtype, layout, arch, processors))
    for target, result in zip(targets, (dq, dk, dv)):
        if target is not result:
            result.copy_(target[:, : result.shape[1]])


def _flash(q, k, v, grad_out, lse, delta, targets, scale, delta_launch, plan) -> None:
    """The flash-style dK/dV and dQ launches (``targets``: dq, dk, dv in the kernels' layout)."""
    (kv_entry, q_entry), (kv_grid, q_grid), splits, keys_per_split = plan
    batch, head, n = q.shape
    dq_out = targets[0]
    if splits > 1:  # fp32 partial sums over key ranges, added below
        dq_out = q.new_empty((splits, batch, n, head), dtype=torch.float32).transpose(2, 3)
        check_image_offsets(head, dq=dq_out[0])
    inputs = (*launch_strides(q), *launch_strides(k), *launch_strides(v), *launch_strides(grad_out))
    with device_guard(q):
        run([
            delta_launch,
            Launch(kv_entry, jit._dkdv_kernel, kv_grid,
                   (q, k, v, grad_out, lse, delta, targets[1], targets[2], *inputs, *launch_strides(targets[1]),
                    *launch_strides(targets[2]), n, scale, scale * LOG2E)),
            Launch(q_entry, jit._dq_kernel, q_grid,
                   (q, k, v, grad_out, lse, delta, dq_out, *inputs,
                    *launch_strides(dq_out[0] if splits > 1 else dq_out), dq_out.stride(0) if splits > 1 else 0, n,
                    keys_per_split, scale, scale * LOG2E)),
        ])
    if splits > 1:
        targets[0].copy_(dq_out.sum(0))
