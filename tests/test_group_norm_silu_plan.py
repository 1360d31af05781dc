"""group_norm_silu launch planning: whole waves, the fused path's L2 budget, the chunking.

Plans are made on ``meta`` tensors for an H100 (132 SMs, sm_90a), nothing runs. The speed of
a plan is the planner's own model (``kernels/group_norm_silu_plan.py``), an estimate: these tests
check the structure the model asks for, not a time.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from vqvae_fast.kernels import group_norm_silu as gn  # noqa: E402
from vqvae_fast.kernels import group_norm_silu_plan as P  # noqa: E402

SMS = 132
#: (N, C, H, W) of the benchmark sets and the 1024x1024 decode
BENCH = [(8, 128, 256, 256), (1, 128, 1024, 1024), (1, 128, 256, 256), (8, 256, 128, 128), (8, 512, 64, 64)]
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _plans(shape, fmt, dtype=torch.bfloat16):
    x = torch.empty(shape, dtype=dtype, device="meta", memory_format=FORMATS[fmt])
    w = torch.empty(shape[1], dtype=dtype, device="meta")
    (_, mean, rstd), forward = gn.plan_forward(x, 32, w, w, 1e-6, True, num_sms=SMS)
    _, backward = gn.plan_backward(torch.empty_like(x), x, mean, rstd, w, w, 32, True, num_sms=SMS)
    return forward, backward


def _wave(launch):
    return SMS * dict(launch.config.occupancy)["sm_90a"]


@pytest.mark.parametrize("shape, fmt", list(itertools.product(BENCH, FORMATS)), ids=str)
def test_streaming_grids_fill_whole_waves(shape, fmt):
    """A split grid keeps all SMs busy and leaves at most 10% of its last wave empty (the
    issue's 1.09-wave tails are gone); a fused grid is at most the programs resident at once."""
    for launch in itertools.chain(*_plans(shape, fmt)):
        name, grid = launch.config.kernel, launch.grid[0]
        if name in ("_gn_fwd_fused_kernel", "_gn_bwd_fused_kernel"):
            assert grid <= _wave(launch)
        elif name in P._TRAFFIC:
            assert grid >= SMS, name
            assert P.wave_fill(grid, _wave(launch)) >= 0.9, (name, grid, _wave(launch))


def test_headline_shapes_take_the_split_path_at_whole_waves_of_both_kernels():
    """(8,128,256,256) and (1,128,1024,1024): groups of 0.5 and 8 MB (bf16) cannot stay on chip,
    so the split path; each of its two streaming kernels has a grid of its own whole waves (the
    second reads per-group constants: its chunks need not be the first's)."""
    for shape, fmt in itertools.product(BENCH[:2], FORMATS):
        for launches in _plans(shape, fmt):
            streaming = [launch for launch in launches if launch.config.kernel in P._TRAFFIC]
            assert len(streaming) == 2
            assert all(P.wave_fill(launch.grid[0], _wave(launch)) >= 0.96 for launch in streaming), shape


def test_fused_programs_hold_what_fits_in_l2():
    """A fused plan holds at most :data:`L2_BUDGET` of groups between its two reads."""
    for shape, fmt in itertools.product([(8, 512, 64, 64), (8, 512, 16, 16), (64, 256, 32, 32)], FORMATS):
        for direction, launches in zip((1, 2), _plans(shape, fmt)):
            fused = launches[0]
            if fused.config.kernel not in ("_gn_fwd_fused_kernel", "_gn_bwd_fused_kernel"):
                continue
            args = dict(zip(fused.kernel.arg_names, fused.args))
            held = args["UNIT_C"] * args["S"] * 2 * direction  # bf16, x (and dy)
            assert fused.grid[0] * held <= P.L2_BUDGET["sm_90a"]


def test_small_groups_take_one_launch():
    for fmt in FORMATS:
        forward, backward = _plans((8, 512, 16, 16), fmt)
        assert [launch.config.kernel for launch in forward] == ["_gn_fwd_fused_kernel"]
        assert backward[0].config.kernel == "_gn_bwd_fused_kernel"


@pytest.mark.parametrize("tiles, chunks", [(1, 1), (5, 3), (16, 16), (1000, 33), (2**24, 4096)])
def test_chunks_share_the_tiles_out_exactly(tiles, chunks):
    """Chunk ``k`` holds tiles ``[k*T // P, (k+1)*T // P)``: a partition of the tiles into
    nonempty chunks differing by at most one tile (the kernels' ``_chunk_bounds``)."""
    bounds = [(k * tiles // chunks, (k + 1) * tiles // chunks) for k in range(chunks)]
    assert bounds[0][0] == 0 and bounds[-1][1] == tiles
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = {hi - lo for lo, hi in bounds}
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_the_model_is_the_bandwidth_time_for_a_balanced_saturating_launch():
    """One tile per program, whole waves, enough in flight: bytes / bandwidth, plus the programs'
    fixed cost."""
    tile, s = (1, 4096, 8), 2
    seconds = P.launch_seconds("_gn_fwd_apply_kernel", tile, s, 4 * SMS * 8, 1.0, SMS, 8)
    moved = 4 * SMS * 8 * 4096 * s * 2
    assert seconds == pytest.approx(moved / P.BANDWIDTH * (1 + P.PROGRAM_TILES))
