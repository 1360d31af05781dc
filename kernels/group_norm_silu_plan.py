"""Launch planning for ``group_norm_silu``: which path, tile, grid and chunking, by a stated model.

Two paths (kernels in ``group_norm_silu_jit.py`` / ``group_norm_silu_backward_jit.py``, every
configuration in ``group_norm_silu_table.py``):

* ``fused``: a persistent grid of ``R`` programs; each normalises whole groups, reading them twice
  (statistics, then the output). With ``R`` chosen so that the groups the programs hold at once
  fit in L2 (:data:`L2_BUDGET`), the second read is served from L2: one read of ``x`` from memory
  and one write (``dy`` and ``x`` once each in the backward). One launch.
* ``split``: every group is cut into chunks of positions spread over the whole GPU: partial
  moments per (sample, channel, chunk), a small kernel per group, an elementwise pass in reverse
  (its first tiles are the ones the first pass left in L2), chunked for its own whole waves (it
  reads per-channel constants, whatever chunks the sums were taken over). Two reads of ``x`` and
  one write (four reads and a write in the backward); three launches.

**The model** (:func:`launch_seconds`; an estimate, not a measurement). Programs spread evenly
over the SMs; the busiest SM runs ``p = ceil(grid / SMs)`` of them, ``min(p, CTAs/SM)`` at a
time, each streaming its tiles (masked lanes included) plus :data:`PROGRAM_TILES` tiles' worth
for what else a program does (first loads, reductions, partial stores). An SM gets its share of
the bandwidth if it keeps enough loads in flight (Little's law; a warp has one tile of loads in
flight):

    seconds = p * work / min(BANDWIDTH / SMs, min(p, CTAs/SM) * loads_per_tile / LATENCY)

that is, the bandwidth time scaled by the last wave's imbalance (at most one program per SM),
by the programs' fixed costs and by occupancy where it starves the memory system. The planner
takes the path, tile and chunk counts with the least modeled time (a dependent launch costs
:data:`LAUNCH_SECONDS` more); for each split kernel, among its chunk counts within
:data:`WAVE_TOLERANCE` of its fastest, the one that fills its whole waves (``SMs * CTAs/SM``
programs) best. The fused grid is the programs resident at once.

A plan is a pure function of sizes, dtypes, layout and the device (architecture, SM count):
cached (:func:`forward_plan`, :func:`backward_plan`).
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

from . import group_norm_silu_table as T

BANDWIDTH = 3.0e12  # bytes/s: H100 SXM, measured copy
LATENCY = 1.0e-6  # s: DRAM latency under load, for Little's law (conservative)
LAUNCH_SECONDS = 2e-6  # one more dependent launch
#: what a program (a fused unit) spends besides streaming its tiles -- first loads, reductions,
#: partial stores -- counted as this many tiles of streaming
PROGRAM_TILES = 0.25
#: split grids within this factor of the fastest modeled one count as equally fast; of those, the
#: one that fills whole waves of both kernels best is taken (the model's imbalance term sees a
#: last wave's empty slots only where an SM gets fewer programs; a stricter reading of waves
#: charges the whole wave)
WAVE_TOLERANCE = 1.05
#: bytes the fused path's resident groups may occupy: well inside the L2 (50 MB H100, 40 MB A100)
L2_BUDGET = {"sm_90a": 24 << 20, "sm_80": 16 << 20}
MAX_CHUNKS = 4096  # per (sample, channel block): bounds the partials a group merges
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
#: per kernel: (tensors it loads, tensors it stores) per element
_TRAFFIC = {
    "_gn_fwd_fused_kernel": (1, 1), "_gn_fwd_partial_stats_kernel": (1, 0), "_gn_fwd_apply_kernel": (1, 1),
    "_gn_bwd_fused_kernel": (2, 1), "_gn_bwd_partial_kernel": (2, 0), "_gn_bwd_dx_kernel": (2, 1),
}


@dataclass(frozen=True)
class Plan:
    """The launches of one call, without its tensors: table entries and grids in launch order,
    the tile, the split chunking or the fused blocking, and the model's seconds per launch."""

    path: str
    entries: tuple
    grids: tuple
    seconds: tuple
    tile: tuple
    num_cb: int = 1  # split: channel blocks per sample
    unit_tiles: int = 1  # split: tiles covering the positions
    num_chunks: int = 1  # split: chunks the first streaming kernel shares them out to (its partials)
    second_chunks: int = 1  # split: chunks of the second streaming kernel (its own whole waves)
    gpb: int = 1  # fused: groups per unit
    num_gb: int = 1  # fused: units per sample

    @property
    def estimate(self) -> float:
        """Modeled seconds of the whole call (launch overheads not included)."""
        return sum(self.seconds)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def launch_seconds(kernel: str, tile, s: int, grid: int, per_program_tiles: float, sms: int, ctas: int,
                   rounds: int = 1) -> float:
    """The model's seconds for ``grid`` programs of ``kernel``, each moving ``per_program_tiles``
    tiles ``rounds`` times (a persistent fused program normalises ``rounds`` units)."""
    loads, stores = _TRAFFIC[kernel]
    tile_bytes = tile[0] * tile[1] * s
    per_sm = cdiv(grid, sms)  # the busiest SM's programs: the last wave's imbalance
    rate = min(BANDWIDTH / sms, min(per_sm, ctas) * loads * tile_bytes / LATENCY)
    work = rounds * (per_program_tiles + PROGRAM_TILES)
    return per_sm * work * (loads + stores) * tile_bytes / rate


def wave_fill(grid: int, wave: int) -> float:
    """The fraction of its whole waves a grid fills (1.0: no partial last wave)."""
    return grid / (cdiv(grid, wave) * wave)


def _pick(arch, kernel, x_type, param_type, tile=None, warps=T.SMALL_KERNEL_WARPS, **constexprs):
    """The table entry of one launch (raises if the plan left the table)."""
    if tile is not None:
        constexprs.update(BLOCK_C=tile[0], BLOCK_S=tile[1])
        warps = tile[2]
    if not T.reads_params(kernel):
        param_type = x_type
    ones = T.unit_strides(kernel, constexprs.get("CHANNELS_LAST", False), constexprs.get("DY_CHANNELS_LAST"))
    return T.TABLE.pick(arch, kernel, T.pointer_types(kernel, x_type, param_type), constexprs, warps, 1, ones)


# ----------------------------------------------------------------------------------------------
# Fused: which tile, how many programs


def _fused_layout(N, C, S, G, x_type, channels_last, tile, kernels, arch, sms, reread):
    s = ELEMENT_BYTES[x_type]
    """``(seconds, programs, groups per unit, units per sample)`` of the fused path with ``tile``
    (``None`` if the tile cannot hold a group). ``reread``: tensors each unit reads twice."""
    block_c, block_s, _ = tile
    cpg = C // G
    if cpg > block_c:
        return None
    gpb = min(block_c // cpg, G)
    num_gb = cdiv(G, gpb)
    units = N * num_gb
    ctas = T.occupancy(kernels[0], tile, arch, channels_last, x_type)
    held = gpb * cpg * S * s * reread  # what a program holds between its two passes
    most = max(1, min(units, sms * ctas, L2_BUDGET[arch] // max(held, 1)))
    unit_tiles = cdiv(S, block_s)
    options = []
    for rounds in range(cdiv(units, most), cdiv(units, most) + 8):  # fewer programs, same rounds
        programs = cdiv(units, rounds)
        seconds = launch_seconds(kernels[0], tile, s, programs, unit_tiles, sms, ctas, rounds=rounds)
        options.append((seconds, programs))
    seconds, programs = min(options)
    return seconds, programs, gpb, num_gb


def _best_fused(N, C, S, G, x_type, channels_last, kernel, arch, sms, reread, tile=None):
    tiles = (T.FUSED_TILES if kernel == "_gn_fwd_fused_kernel" else T.FUSED_BACKWARD_TILES)[channels_last]
    tiles = _named_tiles(tiles, tile, "fused_tile")
    options = []
    for tile in tiles:
        found = _fused_layout(N, C, S, G, x_type, channels_last, tile, (kernel,), arch, sms, reread)
        if found is not None:
            options.append((found, tile))
    if not options:
        return None
    (seconds, programs, gpb, num_gb), tile = min(options, key=lambda o: o[0][0])
    return seconds, tile, programs, gpb, num_gb


# ----------------------------------------------------------------------------------------------
# Split: which tile, how many chunks


def _chunkings(N, C, S, x_type, channels_last, tile, kernel, arch, sms, chunk_tiles=None, dy_channels_last=None):
    """``(seconds, wave fill, chunks)`` of ``kernel`` with ``tile`` for each chunk count worth
    trying (``chunk_tiles``: tiles per program, forced): up to 64 chunks, and the counts around
    1..64 whole waves of the kernel."""
    block_c, block_s, _ = tile
    units = N * cdiv(C, block_c)
    tiles = cdiv(S, block_s)
    ctas = T.occupancy(kernel, tile, arch, channels_last, x_type, dy_channels_last)
    if chunk_tiles is not None:
        counts = {cdiv(tiles, max(1, int(chunk_tiles)))}
    else:
        wave = sms * ctas
        counts = set(range(1, 65)) | {q(w * wave, units) for w in range(1, 65) for q in (cdiv, operator.floordiv)}
    options = []
    for chunks in sorted(p for p in counts if 1 <= p <= min(tiles, MAX_CHUNKS)):
        grid = units * chunks
        per_program = tiles / chunks  # chunks differ by at most one tile: an SM's programs average out
        seconds = launch_seconds(kernel, tile, ELEMENT_BYTES[x_type], grid, per_program, sms, ctas)
        options.append((seconds, wave_fill(grid, sms * ctas), chunks))
    return options


def _whole_waves(options):
    """Of ``(seconds, fill, chunks)`` options, the fewest chunks of the best-filled grid within
    :data:`WAVE_TOLERANCE` of the fastest."""
    fastest = min(o[0] for o in options)
    return max((o for o in options if o[0] <= WAVE_TOLERANCE * fastest), key=lambda o: (o[1], -o[2]))


def _best_split(N, C, S, x_type, channels_last, kernels, arch, sms, tile=None, chunk_tiles=None,
                dy_channels_last=None):
    """``(seconds of each kernel, tile, channel blocks, tiles per sample and block, chunks of
    each kernel)``. The two streaming kernels share the tile but not the chunking (the second
    reads per-channel constants, whatever chunks the first summed over): each takes, of its chunk
    counts within :data:`WAVE_TOLERANCE` of its fastest, the one that fills its own whole waves
    best; the tile is the one with the least summed time. ``chunk_tiles``: tiles per program
    forced for both kernels, or a pair (one per kernel)."""
    best = None
    tiles = T.SPLIT_TILES if kernels[0] == "_gn_fwd_partial_stats_kernel" else T.SPLIT_BACKWARD_TILES
    for t in _named_tiles(tiles[channels_last], tile, "split_tile"):
        forced = chunk_tiles if isinstance(chunk_tiles, tuple) else (chunk_tiles,) * len(kernels)
        picked = [_whole_waves(_chunkings(N, C, S, x_type, channels_last, t, k, arch, sms, f, dy_channels_last))
                  for k, f in zip(kernels, forced)]
        seconds = tuple(o[0] for o in picked)
        if best is None or sum(seconds) < sum(best[0]):
            best = (seconds, t, cdiv(C, t[0]), cdiv(S, t[1]), tuple(o[2] for o in picked))
    return best


def _named_tiles(tiles, tile, name):
    """``tiles``, or the one of them an override names by ``(BLOCK_C, BLOCK_S)``."""
    if tile is None:
        return tiles
    by_size = {t[:2]: t for t in tiles}
    if tuple(tile[:2]) not in by_size:
        raise ValueError(f"{name} must be one of {sorted(by_size)} for this layout, got {tuple(tile)}")
    return (by_size[tuple(tile[:2])],)


def _choose(path, fused, split_seconds):
    if path not in (None, "fused", "split"):
        raise ValueError(f"path must be 'fused' or 'split', got {path!r}")
    if path == "fused" and fused is None:
        raise ValueError("no fused tile (of those allowed) holds a group this wide (C / num_groups channels)")
    if path is None:
        path = "fused" if fused is not None and fused[0] <= split_seconds + 2 * LAUNCH_SECONDS else "split"
    return path


# ----------------------------------------------------------------------------------------------
# Plans


@functools.lru_cache(maxsize=1024)
def forward_plan(N, C, S, G, x_type, param_type, channels_last, arch, num_sms,
                 path=None, tile=None, chunk_tiles=None, fused_tile=None) -> Plan:
    """The forward launches for these sizes and choices (``tile``: the split tile)."""
    kernels = ("_gn_fwd_partial_stats_kernel", "_gn_fwd_apply_kernel")
    fused = _best_fused(N, C, S, G, x_type, channels_last, "_gn_fwd_fused_kernel", arch, num_sms, 1, fused_tile)
    split = None
    if path != "fused":
        split = _best_split(N, C, S, x_type, channels_last, kernels, arch, num_sms, tile, chunk_tiles)
    path = _choose(path, fused, sum(split[0]) if split else 0.0)
    layout = dict(CHANNELS_LAST=channels_last)
    if path == "fused":
        seconds, tile, programs, gpb, num_gb = fused
        entry = _pick(arch, "_gn_fwd_fused_kernel", x_type, param_type, tile, **layout)
        return Plan("fused", (entry,), ((programs,),), (seconds,), tile, gpb=gpb, num_gb=num_gb)
    seconds, tile, num_cb, unit_tiles, (num_chunks, second_chunks) = split
    grids = ((N * num_cb * num_chunks,), (N * G,), (N * num_cb * second_chunks,))
    entries = (
        _pick(arch, kernels[0], x_type, x_type, tile, **layout),
        _pick(arch, "_gn_fwd_combine_kernel", x_type, param_type, BLOCK=T.COMBINE_BLOCK),
        _pick(arch, kernels[1], x_type, param_type, tile, **layout),
    )
    return Plan("split", entries, grids, (seconds[0], 0.0, seconds[1]), tile, num_cb, unit_tiles, num_chunks,
                second_chunks)


@functools.lru_cache(maxsize=1024)
def backward_plan(N, C, S, G, x_type, param_type, channels_last, affine_grads, arch, num_sms,
                  path=None, tile=None, chunk_tiles=None, fused_tile=None, dy_channels_last=None) -> Plan:
    """The backward launches; ``affine_grads``: the caller passed a weight or bias, so their
    gradients are reduced over the batch by one more small kernel. ``dy_channels_last``: ``dy``'s
    layout where it differs from ``x``'s (channels-last ``x``, NCHW ``dy``): only the split
    kernels read it in place, so the fused path is not considered."""
    kernels = T.SPLIT_BACKWARD_KERNELS
    dy_channels_last = channels_last if dy_channels_last is None else dy_channels_last
    fused = None
    if dy_channels_last == channels_last:
        fused = _best_fused(N, C, S, G, x_type, channels_last, "_gn_bwd_fused_kernel", arch, num_sms, 2, fused_tile)
    split = None
    if path != "fused":
        split = _best_split(N, C, S, x_type, channels_last, kernels, arch, num_sms, tile, chunk_tiles,
                            dy_channels_last)
    path = _choose(path, fused, sum(split[0]) if split else 0.0)
    layout = dict(CHANNELS_LAST=channels_last)
    affine = []
    if affine_grads:
        block_n, block_c = T.AFFINE_TILE
        affine = [(_pick(arch, "_gn_bwd_affine_kernel", x_type, param_type, BLOCK_N=block_n, BLOCK_C=block_c),
                   (cdiv(C, block_c),), 0.0)]
    if path == "fused":
        seconds, tile, programs, gpb, num_gb = fused
        steps = [(_pick(arch, "_gn_bwd_fused_kernel", x_type, param_type, tile, **layout), (programs,), seconds)]
        return Plan("fused", *map(tuple, zip(*(steps + affine))), tile, gpb=gpb, num_gb=num_gb)
    seconds, tile, num_cb, unit_tiles, (num_chunks, second_chunks) = split
    steps = [
        (_pick(arch, kernels[0], x_type, param_type, tile, DY_CHANNELS_LAST=dy_channels_last, **layout),
         (N * num_cb * num_chunks,), seconds[0]),
        (_pick(arch, "_gn_bwd_group_kernel", x_type, param_type, BLOCK_C=T.GROUP_TILE[0], BLOCK_K=T.GROUP_TILE[1]),
         (N * G,), 0.0),
        (_pick(arch, kernels[1], x_type, param_type, tile, DY_CHANNELS_LAST=dy_channels_last, **layout),
         (N * num_cb * second_chunks,), seconds[1]),
    ]
    return Plan("split", *map(tuple, zip(*(steps + affine))), tile, num_cb, unit_tiles, num_chunks, second_chunks)
