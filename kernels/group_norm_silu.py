"""Launch planning for ``group_norm_silu``: which kernels run, with which table entries, on which grid.

Two paths, chosen by :func:`forward` / :func:`backward` from the shape (the kernels and their
math are in ``group_norm_silu_jit.py``, every configuration in ``group_norm_silu_table.py``):

* ``fused``: one program per (sample, group) holds the whole group in registers, in the smallest
  tile of the table that covers it: one read of ``x``, one write, one launch.
* ``split``: the group reduction is spread over many programs, so that batch 1 fills the GPU:
  per-channel partial moments over chunks of the spatial axis, a small kernel that combines
  them per group, then an elementwise kernel. Fixed-order reductions, no atomics: the result
  is bit-identical run to run. Two reads of ``x`` and one write.

The backward has the same two paths: ``fused`` reads ``x`` and ``dy`` once and writes ``dx`` in
one program per group; ``split`` sums ``dz`` and ``dz*xhat`` per channel over spatial chunks,
finishes them per group, then writes ``dx`` elementwise. Both leave per-(sample, channel) sums
that a last small kernel adds over the batch, in a fixed order, into ``dweight`` and ``dbias``.

A plan depends only on sizes, dtypes, layout, flags and the device's multiprocessor count, so
it is made once per such key and cached (:func:`forward_plan`, :func:`backward_plan`); a call
allocates its outputs (``torch.empty``: every path writes all of them), binds the arguments and
launches on the input's device.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton

from vqvae_fast._device import capability, device_guard, output_memory_format, sm_count

from . import group_norm_silu_jit as jit
from . import group_norm_silu_table as T
from ._table import Launch, arch_for, run

#: split kernels aim for this many programs per SM so that batch 1 fills the GPU
PROGRAMS_PER_SM = 8
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Plan:
    """The launches of one call, without its tensors: table entries and grids in launch order,
    and the sizes the split kernels take (tiles per channel / spatial axis, chunking)."""

    path: str
    entries: tuple
    grids: tuple
    num_cb: int = 1
    num_sb: int = 1
    chunk: int = 1
    num_chunks: int = 1


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def fused_tile(cpg: int, s: int, tiles) -> tuple | None:
    """The smallest ``(BLOCK_C, BLOCK_S, warps)`` of ``tiles`` that holds a ``cpg x s`` group
    (``None``: none does)."""
    fits = [t for t in tiles if t[0] >= cpg and t[1] >= s]
    return min(fits, key=lambda t: t[0] * t[1]) if fits else None


def split_tile(C: int, S: int, channels_last: bool) -> tuple:
    """The split path's ``(BLOCK_C, BLOCK_S, warps)``: long along the contiguous axis, narrow
    where that axis is short."""
    wide, narrow = T.SPLIT_TILES[channels_last]
    return wide if (C if channels_last else S) >= (wide[0] if channels_last else wide[1]) else narrow


def _chunking(N, C, S, block_c, block_s, num_sms, chunk_tiles):
    """``(CHUNK, NUM_CHUNKS)``: split the spatial axis until the reduction has enough programs."""
    s_tiles = triton.cdiv(S, block_s)
    if chunk_tiles is None:
        programs = N * triton.cdiv(C, block_c)
        chunks = max(1, min(s_tiles, triton.cdiv(PROGRAMS_PER_SM * num_sms, programs)))
        chunk_tiles = triton.cdiv(s_tiles, chunks)
    chunk = chunk_tiles * block_s
    return chunk, triton.cdiv(S, chunk)


def _choose_path(path, cpg, S, tiles):
    tile = fused_tile(_pow2(cpg), _pow2(S), tiles)
    if path is None:
        return ("fused", tile) if tile is not None else ("split", None)
    if path == "fused" and tile is None:
        raise ValueError(f"no fused tile of the table holds a group of {cpg} x {S} (tiles {tiles})")
    if path not in ("fused", "split"):
        raise ValueError(f"path must be 'fused' or 'split', got {path!r}")
    return path, tile


def _split_layout(N, C, S, channels_last, num_sms, tile, chunk_tiles):
    """``(tile, channel blocks, spatial blocks, CHUNK, NUM_CHUNKS)`` of the split path."""
    if tile is None:
        tile = split_tile(C, S, channels_last)
    else:  # an override names (BLOCK_C, BLOCK_S) of one of the table's tiles for this layout
        tiles = {t[:2]: t for t in T.SPLIT_TILES[channels_last]}
        if tuple(tile[:2]) not in tiles:
            raise ValueError(f"split_tile must be one of {sorted(tiles)} for this layout, got {tile}")
        tile = tiles[tuple(tile[:2])]
    block_c, block_s, _ = tile
    chunk, num_chunks = _chunking(N, C, S, block_c, block_s, num_sms, chunk_tiles)
    return tuple(tile), triton.cdiv(C, block_c), triton.cdiv(S, block_s), chunk, num_chunks


def _pick(arch, kernel, x_type, param_type, warps=T.SMALL_KERNEL_WARPS, **constexprs):
    """The table entry of one launch (raises if the plan left the table)."""
    ones = T.unit_strides(kernel, constexprs.get("CHANNELS_LAST", False))
    return T.TABLE.pick(arch, kernel, T.pointer_types(kernel, x_type, param_type), constexprs, warps, 1, ones)


def _tiled(tile) -> dict:
    return dict(BLOCK_C=tile[0], BLOCK_S=tile[1], warps=tile[2])


@functools.lru_cache(maxsize=1024)
def forward_plan(N, C, S, G, x_type, param_type, channels_last, silu, arch, num_sms,
                 path=None, tile=None, chunk_tiles=None) -> Plan:
    """The forward launches for these sizes and choices (see :func:`forward`)."""
    cpg = C // G
    path, fused = _choose_path(path, cpg, S, T.FUSED_FORWARD_TILES)
    flags = dict(CHANNELS_LAST=channels_last, SILU=silu)
    if path == "fused":
        entry = _pick(arch, "_gn_fwd_fused_kernel", x_type, param_type, **flags, **_tiled(fused))
        return Plan("fused", (entry,), ((N * G,),))
    tile, num_cb, num_sb, chunk, num_chunks = _split_layout(N, C, S, channels_last, num_sms, tile, chunk_tiles)
    block = T.COMBINE_BLOCKS[0] if cpg * num_chunks <= T.COMBINE_BLOCKS[0] else T.COMBINE_BLOCKS[1]
    entries = (
        _pick(arch, "_gn_fwd_partial_stats_kernel", x_type, x_type, CHANNELS_LAST=channels_last, **_tiled(tile)),
        _pick(arch, "_gn_fwd_combine_kernel", x_type, param_type, BLOCK=block),
        _pick(arch, "_gn_fwd_apply_kernel", x_type, param_type, **flags, **_tiled(tile)),
    )
    grids = ((N * num_cb * num_chunks,), (N * G,), (N * num_cb * num_sb,))
    return Plan("split", entries, grids, num_cb, num_sb, chunk, num_chunks)


@functools.lru_cache(maxsize=1024)
def backward_plan(N, C, S, G, x_type, param_type, channels_last, silu, affine_grads, arch, num_sms,
                  path=None, tile=None, chunk_tiles=None) -> Plan:
    """The backward launches (see :func:`backward`); ``affine_grads``: the caller passed a
    weight or bias, so their gradients are reduced over the batch."""
    cpg = C // G
    path, fused = _choose_path(path, cpg, S, T.FUSED_BACKWARD_TILES)
    flags = dict(CHANNELS_LAST=channels_last, SILU=silu)
    affine = []
    if affine_grads:
        block_n, block_c = T.AFFINE_TILE
        affine = [(_pick(arch, "_gn_bwd_affine_kernel", x_type, param_type, BLOCK_N=block_n, BLOCK_C=block_c),
                   (triton.cdiv(C, block_c),))]
    if path == "fused":
        entry = _pick(arch, "_gn_bwd_fused_kernel", x_type, param_type, **flags, **_tiled(fused))
        steps = [(entry, (N * G,))] + affine
        return Plan("fused", *map(tuple, zip(*steps)))
    tile, num_cb, num_sb, chunk, num_chunks = _split_layout(N, C, S, channels_last, num_sms, tile, chunk_tiles)
    tiles = _tiled(tile)
    steps = [
        (_pick(arch, "_gn_bwd_partial_kernel", x_type, param_type, **flags, **tiles), (N * num_cb * num_chunks,)),
        (_pick(arch, "_gn_bwd_group_kernel", x_type, param_type, BLOCK_C=T.GROUP_TILE[0], BLOCK_K=T.GROUP_TILE[1]),
         (N * G,)),
        (_pick(arch, "_gn_bwd_dx_kernel", x_type, param_type, **flags, **tiles), (N * num_cb * num_sb,)),
    ] + affine
    return Plan("split", *map(tuple, zip(*steps)), num_cb, num_sb, chunk, num_chunks)


# ----------------------------------------------------------------------------------------------
# Tensors: layouts, parameters, sizes


def _spatial_stride(t: torch.Tensor):
    """The one stride of ``t``'s flattened spatial dims; ``None`` if they hold one element or
    fewer; ``False`` if they cannot be flattened without a copy."""
    dims = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    if not dims:
        return None
    for (size_a, stride_a), (size_b, stride_b) in zip(dims, dims[1:]):
        if stride_a != stride_b * size_b:
            return False
    return dims[-1][1]


def _view(t: torch.Tensor, channels_last: bool):
    """``(stride_n, stride_c, stride_s)`` of ``t`` as an ``(N, C, S)`` tensor whose unit stride
    lies on the spatial axis (``channels_last=False``) or the channel axis; ``None`` if ``t`` is
    not laid out that way."""
    ss = _spatial_stride(t)
    if ss is False:
        return None
    sn, sc = t.stride(0), t.stride(1)
    if channels_last:
        if sc != 1 and t.shape[1] != 1:
            return None
        return sn, 1, (ss if ss is not None else t.shape[1])
    if ss is not None and ss != 1:
        return None
    return sn, sc, 1


def _prepare(x: torch.Tensor, memory_format: torch.memory_format | None):
    """``(x, channels_last, memory_format)``: the kernel layout that writes ``memory_format``
    (default: :func:`output_memory_format`), with ``x`` copied once if it cannot be read in it."""
    if memory_format is None:
        memory_format = output_memory_format(x)
    S = math.prod(x.shape[2:])
    if S <= 1:
        # one spatial position: NCHW and channels-last coincide; vectorise along the channels
        channels_last = x.stride(1) == 1 or x.shape[1] == 1
    else:
        channels_last = memory_format != torch.contiguous_format
    if _view(x, channels_last) is None:
        x = x.contiguous(memory_format=memory_format)  # the one explicit copy: unreadable strides
    return x, channels_last, memory_format


def _empty(x: torch.Tensor, memory_format: torch.memory_format, dtype=None) -> torch.Tensor:
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format)


def _affine(x: torch.Tensor, weight, bias):
    """``(w, b)`` for the kernels, which always scale and shift: a missing parameter is ones or
    zeros (in the other's dtype, else ``x``'s), which changes no value."""
    like = weight if weight is not None else bias if bias is not None else x
    options = dict(dtype=like.dtype, device=x.device)
    w = weight if weight is not None else torch.ones(x.shape[1], **options)
    b = bias if bias is not None else torch.zeros(x.shape[1], **options)
    return w, b


def _sizes(x: torch.Tensor, num_groups: int):
    """``(N, C, S, G)``. The kernels index samples, channels and positions with 32 bits and step
    up to one block or chunk past the last (loop increments, the last chunk's end), so each must
    stay below 2^30; programs ``n * G + g`` and group indices are 32-bit too: ``N * G < 2^31``."""
    N, C, S, G = x.shape[0], x.shape[1], math.prod(x.shape[2:]), num_groups
    if max(N, C, S) >= 2**30 or N * G >= 2**31:
        raise ValueError(
            f"group_norm_silu kernels index with 32 bits: need N, C and S below 2^30 and "
            f"N * num_groups below 2^31, got (N, C, S) = {(N, C, S)}, num_groups = {G}"
        )
    return N, C, S, G


def _device_plan_args(x: torch.Tensor, num_sms: int | None, split_tile):
    """The plan's device arguments (architecture, SMs) and the tile override, hashable."""
    tile = None if split_tile is None else tuple(split_tile)
    return arch_for(capability(x.device)), num_sms or sm_count(x.device), tile


# ----------------------------------------------------------------------------------------------
# Forward and backward


def plan_forward(x, num_groups, weight, bias, eps, silu, *, memory_format=None, path=None,
                 split_tile=None, chunk_tiles=None, num_sms=None):
    """``((y, mean, rstd), launches)``: the outputs (allocated, not yet written) and the kernel
    launches that compute them. See :func:`forward`."""
    N, C, S, G = _sizes(x, num_groups)
    x, channels_last, memory_format = _prepare(x, memory_format)
    y = _empty(x, memory_format)
    if x.numel() == 0:
        stats = torch.zeros((N, G), dtype=torch.float32, device=x.device)
        return (y, stats, stats.clone()), []
    w, b = _affine(x, weight, bias)
    arch, sms, tile = _device_plan_args(x, num_sms, split_tile)
    plan = forward_plan(N, C, S, G, TRITON_TYPES[x.dtype], TRITON_TYPES[w.dtype], channels_last, bool(silu),
                        arch, sms, path, tile, chunk_tiles)
    mean = torch.empty((N, G), dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    sx, sy = _view(x, channels_last), _view(y, channels_last)
    cpg = C // G
    if plan.path == "fused":
        args = [(x, w, b, y, mean, rstd, S, G, cpg, *sx, *sy, eps)]
    else:
        pmean = torch.empty((N, C, plan.num_chunks), dtype=torch.float32, device=x.device)
        pm2 = torch.empty_like(pmean)
        args = [
            (x, pmean, pm2, C, S, plan.num_cb, plan.num_chunks, plan.chunk, *sx),
            (pmean, pm2, mean, rstd, S, cpg, plan.num_chunks, plan.chunk, eps),
            (x, w, b, mean, rstd, y, C, S, G, cpg, plan.num_cb, plan.num_sb, *sx, *sy),
        ]
    return (y, mean, rstd), _launches(plan, args)


def _launches(plan: Plan, args) -> list:
    steps = zip(plan.entries, plan.grids, args)
    return [Launch(entry, getattr(jit, entry.kernel), grid, a) for entry, grid, a in steps]


def forward(x, num_groups, weight, bias, eps, silu, **choices):
    """``(y, mean, rstd)``: ``y`` of ``x``'s shape and dtype in ``memory_format`` (default
    :func:`output_memory_format`); fp32 ``mean, rstd`` of shape ``(N, G)``.

    ``x`` is ``(N, C, *)`` in fp32/fp16/bf16 with any strides (NCHW, its channel slices and
    channels_last are read in place); ``weight``/``bias`` ``(C,)`` in ``x``'s dtype or fp32, or
    ``None``. Keywords ``path`` (``"fused"``/``"split"``), ``split_tile`` (one of the table's
    :data:`~group_norm_silu_table.SPLIT_TILES`), ``chunk_tiles`` and ``num_sms`` override the
    launcher's choices (tests use them to reach every path on small shapes).
    """
    outputs, launches = plan_forward(x, num_groups, weight, bias, eps, silu, **choices)
    with device_guard(x):
        run(launches)
    return outputs


def plan_backward(dy, x, mean, rstd, weight, bias, num_groups, silu, *, memory_format=None, path=None,
                  split_tile=None, chunk_tiles=None, num_sms=None):
    """``((dx, dweight, dbias), launches)``; see :func:`backward`."""
    N, C, S, G = _sizes(x, num_groups)
    x, channels_last, memory_format = _prepare(x, memory_format)
    sdy = _view(dy, channels_last)
    if sdy is None or dy.dtype != x.dtype:  # the one explicit copy: dy laid out unlike x
        dy = _empty(x, memory_format).copy_(dy)
        sdy = _view(dy, channels_last)
    dx = _empty(x, memory_format)
    if x.numel() == 0:
        zeros = lambda p: None if p is None else torch.zeros_like(p)  # noqa: E731
        return (dx, zeros(weight), zeros(bias)), []
    w, b = _affine(x, weight, bias)
    affine_grads = weight is not None or bias is not None
    arch, sms, tile = _device_plan_args(x, num_sms, split_tile)
    plan = backward_plan(N, C, S, G, TRITON_TYPES[x.dtype], TRITON_TYPES[w.dtype], channels_last, bool(silu),
                         affine_grads, arch, sms, path, tile, chunk_tiles)
    sx, sdx = _view(x, channels_last), _view(dx, channels_last)
    cpg = C // G
    sum_dz = torch.empty((N, C), dtype=torch.float32, device=x.device)
    sum_dz_xhat = torch.empty_like(sum_dz)
    if plan.path == "fused":
        args = [(x, dy, w, b, mean, rstd, dx, sum_dz, sum_dz_xhat, C, S, G, cpg, *sx, *sdy, *sdx)]
    else:
        pa = torch.empty((N, C, plan.num_chunks), dtype=torch.float32, device=x.device)
        pb = torch.empty_like(pa)
        c1 = torch.empty((N, G), dtype=torch.float32, device=x.device)
        c2 = torch.empty_like(c1)
        args = [
            (x, dy, w, b, mean, rstd, pa, pb, C, S, G, cpg, plan.num_cb, plan.num_chunks, plan.chunk, *sx, *sdy),
            (pa, pb, w, sum_dz, sum_dz_xhat, c1, c2, S, G, cpg, plan.num_chunks),
            (x, dy, w, b, mean, rstd, c1, c2, dx, C, S, G, cpg, plan.num_cb, plan.num_sb, *sx, *sdy, *sdx),
        ]
    dweight = dbias = None
    if affine_grads:  # a missing parameter's gradient lands in a scratch tensor
        dweight, dbias = torch.empty_like(w), torch.empty_like(b)
        args.append((sum_dz, sum_dz_xhat, dweight, dbias, N, C))
        dweight, dbias = (dweight if weight is not None else None), (dbias if bias is not None else None)
    return (dx, dweight, dbias), _launches(plan, args)


def backward(dy, x, mean, rstd, weight, bias, num_groups, silu, **choices):
    """``(dx, dweight, dbias)`` from the forward's fp32 ``mean, rstd``: ``dx`` in ``x``'s dtype
    and the forward's output layout, ``dweight``/``dbias`` in the parameters' dtype (``None`` where
    a parameter is ``None``). ``dy`` may have any strides (copied once when unlike ``x``'s layout)."""
    outputs, launches = plan_backward(dy, x, mean, rstd, weight, bias, num_groups, silu, **choices)
    with device_guard(x):
        run(launches)
    return outputs
