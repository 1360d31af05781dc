"""``group_norm_silu``: the launches of a case and the work each does (``work.py`` explains the fields).

The launcher (``kernels/group_norm_silu.py``) plans on ``meta`` tensors; each launch's arguments
give its tiles and chunking. ``E = N*C*S`` elements of ``s`` bytes:

* fused forward: a persistent grid; each program normalises ``rounds`` units of whole groups,
  reading each twice (statistics, then the output, backwards) and writing it once. The planner
  holds no more groups at once than fit its L2 budget, so the second read is counted as an L2
  hit: ``2*E*s`` of HBM, ``2*E*s`` loaded. Each pass restarts the loop (an outer trip).
* split forward: partial statistics read ``x`` (``E*s``) and write ``2 * N*C*chunks`` fp32
  partials; the combine reads those and writes per-channel constants; apply reads ``x`` again
  (chunked for its own whole waves) and writes ``y``: ``3*E*s`` in all. Apply runs its chunks in
  reverse, so its first tiles may still be in L2; the model does not count that (at the headline
  shapes ``x`` is several times the L2).
* backward (fused: as the forward, ``x`` and ``dy`` read twice; split: partial sums, per-group
  finish, ``dx``) reads ``x`` and ``dy`` and writes ``dx`` (split: ``x`` and ``dy`` twice,
  ``5*E*s``); the affine gradients add ``N*C`` fp32 sums. The benchmark's ``dy`` has the
  output's layout, as in a network of that layout, so no launch converts it.

FMA work is a handful of fp32 operations per element (counted, never binding).
"""

from __future__ import annotations

import math

import torch

from vqvae_fast.kernels import group_norm_silu as launcher

from .work import BYTES, LaunchWork, StaticCase, cdiv, meta, recorded

TABLE = "vqvae_fast.kernels.group_norm_silu_table"
GROUPS, EPS = 32, 1e-6
#: fp32 operations per element: statistics (shift, sum, square), normalise + affine + SiLU
FLOPS_PER_ELEMENT = {"stats": 4, "apply": 8, "backward": 20}


def _format(case: StaticCase) -> torch.memory_format:
    return torch.channels_last if case.format == "channels_last" else torch.contiguous_format


def _tensors(case: StaticCase):
    channels = case.dims[1]
    x = meta(tuple(case.dims), case.dtype, _format(case))
    return x, meta((channels,), case.dtype), meta((channels,), case.dtype)


def launches(case: StaticCase, capability: int, sms: int) -> list[LaunchWork]:
    x, w, b = _tensors(case)
    with recorded(launcher, capability, sms):
        (y, mean, rstd), forward = launcher.plan_forward(x, GROUPS, w, b, EPS, True)
        if case.mode == "forward":
            return [_work(case, launch) for launch in forward]
        dy = meta(x.shape, case.dtype, _format(case))  # the benchmark's upstream gradient: x's layout
        _, backward = launcher.plan_backward(dy, x, mean, rstd, w, b, GROUPS, True)
    return [_work(case, launch) for launch in backward]


def _work(case: StaticCase, launch) -> LaunchWork:
    cfg = launch.config
    args = dict(zip(launch.kernel.arg_names, launch.args))
    tiles = dict(cfg.constexprs)
    n, c, h, w = case.dims
    s_bytes = BYTES[case.dtype]
    S, E = h * w, n * c * h * w
    grid = math.prod(launch.grid)
    kernel = cfg.kernel
    lw = LaunchWork(kernel.strip("_").replace("_kernel", ""), TABLE, cfg, grid)
    tile = tiles.get("BLOCK_C", 1) * tiles.get("BLOCK_S", 1)
    if kernel in ("_gn_fwd_fused_kernel", "_gn_bwd_fused_kernel"):
        tensors = 1 if kernel == "_gn_fwd_fused_kernel" else 2  # x (and dy), each read twice
        sums = 2 * n * c * 4 if tensors == 2 else 0
        lw.dram_bytes, lw.store_bytes = (tensors + 1) * E * s_bytes + sums, E * s_bytes + sums
        lw.l2_bytes = 2 * tensors * E * s_bytes
        rounds = cdiv(args["NUM_UNITS"], grid)
        lw.trips = rounds * 2 * cdiv(S, tiles["BLOCK_S"])
        lw.outer_trips = 2 * rounds
        lw.trip_load_bytes = tensors * tile * s_bytes
        lw.fma_flops = (FLOPS_PER_ELEMENT["stats"] + FLOPS_PER_ELEMENT["apply"]) * E if tensors == 1 \
            else FLOPS_PER_ELEMENT["backward"] * 1.5 * E
        lw.notes.append("each unit read twice; the second read from L2 (the planner's L2 budget)")
    elif kernel == "_gn_fwd_partial_stats_kernel":
        partials = 2 * n * c * args["NUM_CHUNKS"] * 4
        lw.dram_bytes, lw.store_bytes, lw.l2_bytes = E * s_bytes + partials, partials, E * s_bytes
        lw.trips = cdiv(args["TILES"], args["NUM_CHUNKS"])
        lw.trip_load_bytes = tile * s_bytes
        lw.fma_flops = FLOPS_PER_ELEMENT["stats"] * E
        lw.notes.append("first of two reads of x (the split path)")
    elif kernel == "_gn_fwd_combine_kernel":
        partials = 2 * n * c * args["NUM_CHUNKS"] * 4
        constants = 3 * n * c * 4
        lw.dram_bytes, lw.store_bytes = partials + constants + 8 * grid, constants + 8 * grid
        lw.l2_bytes = partials
        lw.reread_bytes = partials
        lw.trips = 2 * cdiv(args["CPG"] * args["NUM_CHUNKS"], tiles["BLOCK"])
        lw.trip_load_bytes = partials / grid / lw.trips
    elif kernel == "_gn_fwd_apply_kernel":
        lw.dram_bytes, lw.store_bytes, lw.l2_bytes = 2 * E * s_bytes, E * s_bytes, E * s_bytes
        lw.trips = cdiv(args["TILES"], args["NUM_CHUNKS"])
        lw.trip_load_bytes = tile * s_bytes
        lw.fma_flops = FLOPS_PER_ELEMENT["apply"] * E
        lw.reread_bytes = E * s_bytes
        lw.notes.append("second read of x (the split path)")
    elif kernel == "_gn_bwd_partial_kernel":
        partials = 2 * n * c * args["NUM_CHUNKS"] * 4
        lw.dram_bytes, lw.store_bytes, lw.l2_bytes = 2 * E * s_bytes + partials, partials, 2 * E * s_bytes
        lw.trips = cdiv(args["TILES"], args["NUM_CHUNKS"])
        lw.trip_load_bytes = 2 * tile * s_bytes
        lw.fma_flops = FLOPS_PER_ELEMENT["backward"] / 2 * E
        lw.notes.append("first of two reads of x and dy (the split path)")
    elif kernel == "_gn_bwd_group_kernel":
        partials = 2 * n * c * args["NUM_CHUNKS"] * 4
        lw.dram_bytes, lw.store_bytes = partials + 2 * n * c * 4 + 8 * grid, 2 * n * c * 4 + 8 * grid
        lw.l2_bytes = partials
        lw.reread_bytes = partials
        lw.trips = cdiv(args["CPG"], tiles["BLOCK_C"]) * cdiv(args["NUM_CHUNKS"], tiles["BLOCK_K"])
        lw.trip_load_bytes = 2 * tiles["BLOCK_C"] * tiles["BLOCK_K"] * 4
    elif kernel == "_gn_bwd_dx_kernel":
        lw.dram_bytes, lw.store_bytes, lw.l2_bytes = 3 * E * s_bytes, E * s_bytes, 2 * E * s_bytes
        lw.reread_bytes = 2 * E * s_bytes  # the partial sums read x and dy just before
        lw.trips = cdiv(args["TILES"], args["NUM_CHUNKS"])
        lw.trip_load_bytes = 2 * tile * s_bytes
        lw.fma_flops = FLOPS_PER_ELEMENT["backward"] * E
    elif kernel == "_gn_bwd_affine_kernel":
        sums = 2 * n * c * 4
        lw.dram_bytes, lw.store_bytes, lw.l2_bytes = sums + 2 * c * s_bytes, 2 * c * s_bytes, sums
        lw.reread_bytes = sums
        lw.trips = cdiv(n, tiles["BLOCK_N"])
        lw.trip_load_bytes = 2 * tiles["BLOCK_N"] * tiles["BLOCK_C"] * 4
    else:
        raise NotImplementedError(f"group_norm_silu static model: no accounting for {kernel}")
    return lw
