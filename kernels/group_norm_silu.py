"""The ``group_norm_silu`` launcher: tensors in, launches planned and run, outputs back.

Planning (which path, tile, grid) is ``group_norm_silu_plan.py``; the kernels and their math are in
``group_norm_silu_jit.py`` and ``group_norm_silu_backward_jit.py``; every configuration in
``group_norm_silu_table.py``. A call reads the layout of its tensors, looks up the cached plan,
allocates its outputs and scratch with ``torch.empty`` (every path writes all of them: no
memsets), binds the arguments and launches on the input's device.
"""

from __future__ import annotations

import functools
import math

import torch

from vqvae_fast._device import capability, device_guard, output_memory_format, sm_count

from . import group_norm_silu_backward_jit as bwd_jit
from . import group_norm_silu_jit as jit
from . import group_norm_silu_table as T
from ._table import Launch, arch_for, run
from .group_norm_silu_plan import Plan, backward_plan, forward_plan

__all__ = ["forward", "backward", "plan_forward", "plan_backward", "forward_plan", "backward_plan", "run", "T",
           "jit", "bwd_jit"]

TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


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


@functools.lru_cache(maxsize=64)
def _identity_params(channels: int, dtype: torch.dtype, device: torch.device):
    """Ones and zeros that stand for an absent weight / bias (made once per size, dtype and
    device: no fill kernel per call)."""
    return torch.ones(channels, dtype=dtype, device=device), torch.zeros(channels, dtype=dtype, device=device)


def _affine(x: torch.Tensor, weight, bias):
    """``(w, b)`` for the kernels, which always scale and shift: a missing parameter is ones or
    zeros (in the other's dtype, else ``x``'s), which changes no value."""
    if weight is not None and bias is not None:
        return weight, bias
    like = weight if weight is not None else bias if bias is not None else x
    if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        # nothing made during a capture may be cached: it holds its values only in the graph
        ones, zeros = _identity_params.__wrapped__(x.shape[1], like.dtype, x.device)
    else:
        ones, zeros = _identity_params(x.shape[1], like.dtype, x.device)
    return (weight if weight is not None else ones), (bias if bias is not None else zeros)


def _sizes(x: torch.Tensor, num_groups: int):
    """``(N, C, S, G)``. The kernels index samples, channels and positions with 32 bits and step
    up to one block or chunk past the last, so each must stay below 2^30; programs and group
    indices ``n * G + g`` are 32-bit too: ``N * G < 2^31``."""
    N, C, S, G = x.shape[0], x.shape[1], math.prod(x.shape[2:]), num_groups
    if max(N, C, S) >= 2**30 or N * G >= 2**31:
        raise ValueError(
            f"group_norm_silu kernels index with 32 bits: need N, C and S below 2^30 and "
            f"N * num_groups below 2^31, got (N, C, S) = {(N, C, S)}, num_groups = {G}"
        )
    return N, C, S, G


def _device_plan_args(x: torch.Tensor, num_sms: int | None, *overrides):
    """The plan's device arguments (architecture, SMs) and the tile / chunk overrides, hashable."""
    return (arch_for(capability(x.device)), num_sms or sm_count(x.device),
            *(tuple(t) if isinstance(t, (list, tuple)) else t for t in overrides))


def _kernel(name: str):
    return getattr(jit, name, None) or getattr(bwd_jit, name)


def _launches(plan: Plan, args) -> list:
    steps = zip(plan.entries, plan.grids, args)
    return [Launch(entry, _kernel(entry.kernel), grid, a) for entry, grid, a in steps]


def _fp32(shape, device) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float32, device=device)


# ----------------------------------------------------------------------------------------------
# Forward and backward


def plan_forward(x, num_groups, weight, bias, eps, silu, *, memory_format=None, path=None,
                 split_tile=None, chunk_tiles=None, fused_tile=None, num_sms=None):
    """``((y, mean, rstd), launches)``: the outputs (allocated, not yet written) and the kernel
    launches that compute them. See :func:`forward`."""
    N, C, S, G = _sizes(x, num_groups)
    x, channels_last, memory_format = _prepare(x, memory_format)
    y = _empty(x, memory_format)
    if x.numel() == 0:
        stats = torch.zeros((N, G), dtype=torch.float32, device=x.device)
        return (y, stats, stats.clone()), []
    w, b = _affine(x, weight, bias)
    arch, sms, tile, fused, chunk_tiles = _device_plan_args(x, num_sms, split_tile, fused_tile, chunk_tiles)
    plan = forward_plan(N, C, S, G, TRITON_TYPES[x.dtype], TRITON_TYPES[w.dtype], channels_last, arch, sms,
                        path, tile, chunk_tiles, fused)
    mean, rstd = _fp32((N, G), x.device), _fp32((N, G), x.device)
    sx, sy = _view(x, channels_last), _view(y, channels_last)
    cpg, silu = C // G, int(bool(silu))
    if plan.path == "fused":
        units = (plan.gpb * cpg, plan.num_gb, N * plan.num_gb)  # UNIT_C, NUM_GB, NUM_UNITS
        args = [(x, w, b, y, mean, rstd, C, S, G, cpg, *units, *sx, *sy, eps, silu)]
    else:
        pmean, pm2 = _fp32((N, C, plan.num_chunks), x.device), _fp32((N, C, plan.num_chunks), x.device)
        per_channel = _fp32((3, N, C), x.device)  # mean, rstd * w, b: the apply kernel's constants
        chunks = (plan.num_cb, plan.num_chunks, plan.unit_tiles)
        second = (plan.num_cb, plan.second_chunks, plan.unit_tiles)
        args = [
            (x, pmean, pm2, C, S, *chunks, *sx),
            (pmean, pm2, w, b, mean, rstd, *per_channel, S, G, cpg, *chunks[1:], plan.tile[1], eps),
            (x, *per_channel, y, C, S, *second, *sx, *sy, silu),
        ]
    return (y, mean, rstd), _launches(plan, args)


def forward(x, num_groups, weight, bias, eps, silu, **choices):
    """``(y, mean, rstd)``: ``y`` of ``x``'s shape and dtype in ``memory_format`` (default
    :func:`output_memory_format`); fp32 ``mean, rstd`` of shape ``(N, G)``.

    ``x`` is ``(N, C, *)`` in fp32/fp16/bf16 with any strides (NCHW, its channel slices and
    channels_last are read in place); ``weight``/``bias`` ``(C,)`` in ``x``'s dtype or fp32, or
    ``None``. Keywords ``path`` (``"fused"``/``"split"``), ``split_tile`` / ``fused_tile``
    (``(BLOCK_C, BLOCK_S)`` of one of the table's :data:`~group_norm_silu_table.SPLIT_TILES` /
    :data:`~group_norm_silu_table.FUSED_TILES`; the backward's from ``SPLIT_BACKWARD_TILES`` /
    ``FUSED_BACKWARD_TILES``), ``chunk_tiles`` (tiles per split program, or a pair: the
    statistics' and the elementwise kernel's) and ``num_sms`` (a fused grid has at most
    ``num_sms`` times the tile's CTAs per SM programs) override the launcher's choices (tests use
    them to reach every path on small shapes).
    """
    outputs, launches = plan_forward(x, num_groups, weight, bias, eps, silu, **choices)
    with device_guard(x):
        run(launches)
    return outputs


def plan_backward(dy, x, mean, rstd, weight, bias, num_groups, silu, *, memory_format=None, path=None,
                  split_tile=None, chunk_tiles=None, fused_tile=None, num_sms=None):
    """``((dx, dweight, dbias), launches)``; see :func:`backward`."""
    N, C, S, G = _sizes(x, num_groups)
    x, channels_last, memory_format = _prepare(x, memory_format)
    sdy, dy_channels_last = _view(dy, channels_last), channels_last
    if sdy is None and channels_last and path != "fused":  # an NCHW dy: the split kernels read it in place
        sdy, dy_channels_last = _view(dy, False), False
    if sdy is None or dy.dtype != x.dtype:  # the one explicit copy: dy laid out unlike x
        dy = _empty(x, memory_format).copy_(dy)
        sdy, dy_channels_last = _view(dy, channels_last), channels_last
    dx = _empty(x, memory_format)
    if x.numel() == 0:
        zeros = lambda p: None if p is None else torch.zeros_like(p)  # noqa: E731
        return (dx, zeros(weight), zeros(bias)), []
    w, b = _affine(x, weight, bias)
    affine_grads = weight is not None or bias is not None
    arch, sms, tile, fused, chunk_tiles = _device_plan_args(x, num_sms, split_tile, fused_tile, chunk_tiles)
    plan = backward_plan(N, C, S, G, TRITON_TYPES[x.dtype], TRITON_TYPES[w.dtype], channels_last, affine_grads,
                         arch, sms, path, tile, chunk_tiles, fused, dy_channels_last)
    sx, sdx = _view(x, channels_last), _view(dx, channels_last)
    cpg, silu = C // G, int(bool(silu))
    sum_dz, sum_dz_xhat = _fp32((N, C), x.device), _fp32((N, C), x.device)
    if plan.path == "fused":
        units = (plan.gpb * cpg, plan.num_gb, N * plan.num_gb)  # UNIT_C, NUM_GB, NUM_UNITS
        args = [(x, dy, w, b, mean, rstd, dx, sum_dz, sum_dz_xhat, C, S, G, cpg, *units, *sx, *sdy, *sdx, silu)]
    else:
        pa, pb = _fp32((N, C, plan.num_chunks), x.device), _fp32((N, C, plan.num_chunks), x.device)
        c1, c2 = _fp32((N, G), x.device), _fp32((N, G), x.device)
        chunks = (plan.num_cb, plan.num_chunks, plan.unit_tiles)
        second = (plan.num_cb, plan.second_chunks, plan.unit_tiles)
        args = [
            (x, dy, w, b, mean, rstd, pa, pb, C, S, G, cpg, *chunks, *sx, *sdy, silu),
            (pa, pb, w, sum_dz, sum_dz_xhat, c1, c2, S, G, cpg, plan.num_chunks),
            (x, dy, w, b, mean, rstd, c1, c2, dx, C, S, G, cpg, *second, *sx, *sdy, *sdx, silu),
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
    a parameter is ``None``). ``dy`` may have any strides: an NCHW ``dy`` of a channels-last ``x``
    is read in place by the split kernels; other layouts unlike ``x``'s are copied once."""
    outputs, launches = plan_backward(dy, x, mean, rstd, weight, bias, num_groups, silu, **choices)
    with device_guard(x):
        run(launches)
    return outputs
