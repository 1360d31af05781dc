"""group_norm_silu launch paths through the interpreter: the split path's chunking, every tile of
the table (forward and backward), fused units of several groups, a channels-last backward reading
an NCHW ``dy`` in place, the statistics' pivot. Each result is compared with the reference
(``test_group_norm_silu.py`` holds the op-level suites and the helpers used here).
"""

from __future__ import annotations

import pytest
import torch

from vqvae_fast.reference import ops as R

from helpers import assert_matches_reference
from test_group_norm_silu import EPS, _assert_as_accurate_as_pytorch, _kernels, make_input, make_params, reference_grads


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("chunk_tiles", [1, 3, (3, 1)])  # 10 or 4 chunks; 4 for the sums, 10 for the rest
def test_split_path_matches_reference(triton_device, layout, chunk_tiles):
    """The multi-program reduction (partials, combine, apply; and its backward), forced with the
    table's narrow tile and short chunks so that a small input spreads each group over several
    chunks of one or more tiles; the elementwise kernels chunked unlike the sums."""
    K = _kernels()
    # 10 tiles of positions (19 in the backward): uneven chunks
    x = make_input((2, 8, 20, 60), torch.float32, layout, triton_device, mean=3.0)
    weight, bias = make_params(8, torch.float32, triton_device)
    choices = dict(path="split", split_tile=(16, 128), chunk_tiles=chunk_tiles)
    (y, mean, rstd), launches = K.plan_forward(x, 4, weight, bias, EPS, True, **choices)
    combine = dict(zip(launches[1].kernel.arg_names, launches[1].args))
    assert combine["NUM_CHUNKS"] > 1  # each group's reduction is split
    apply = dict(zip(launches[2].kernel.arg_names, launches[2].args))
    assert apply["NUM_CHUNKS"] == (4 if chunk_tiles == 3 else 10)
    assert launches[0].kernel is K.jit._gn_fwd_partial_stats_kernel and launches[0].args[0] is x
    K.run(launches)
    assert_matches_reference(y, lambda x_, w_, b_: R.group_norm_silu(x_, 4, w_, b_, EPS),
                             [x, weight, bias], dtype=torch.float32)
    dy = torch.randn_like(y)
    actual = K.backward(dy, x, mean, rstd, weight, bias, 4, True, **dict(choices, split_tile=(16, 64)))
    assert_matches_reference(list(actual), lambda x_, w_, b_, dy_: reference_grads(x_, 4, w_, b_, "silu", dy_),
                             [x, weight, bias, dy], dtype=torch.float32, atol=1e-4)


def _tile_cases():
    """``(layout, path, tile)`` for every tile of the table, fused tiles of both directions."""
    T = _kernels().T
    for channels_last, layout in ((False, "nchw"), (True, "channels_last")):
        fused = dict.fromkeys(T.FUSED_TILES[channels_last] + T.FUSED_BACKWARD_TILES[channels_last])
        for tile in fused:
            yield layout, "fused", tile[:2]
        for tile in dict.fromkeys(T.SPLIT_TILES[channels_last] + T.SPLIT_BACKWARD_TILES[channels_last]):
            yield layout, "split", tile[:2]


@pytest.mark.parametrize("layout, path, tile", list(_tile_cases()), ids=lambda v: str(v).replace(" ", ""))
def test_every_tile_matches_reference(triton_device, layout, path, tile):
    """Each tile of the table in the interpreter, forward and backward, on sizes that leave a
    remainder tile and masked channels: NCHW positions beyond one wide tile (full tiles, then
    the rest), 12 channels in 3 groups (a 16- or 64-channel unit holds 3 groups, channels-last
    blocks are partly masked), one program looping over all units (``num_sms=1``)."""
    K = _kernels()
    shape = (2, 12, 43, 201) if tile[1] >= 1024 else (2, 12, 9, 91)
    x = make_input(shape, torch.float32, layout, triton_device, mean=2.0)
    weight, bias = make_params(12, torch.float32, triton_device)
    key = "fused_tile" if path == "fused" else "split_tile"
    choices = {"path": path, key: tile, "num_sms": 1}
    forward_tiles = K.T.FUSED_TILES if path == "fused" else K.T.SPLIT_TILES
    if tile in [t[:2] for t in forward_tiles[layout == "channels_last"]]:
        (y, mean, rstd), launches = K.plan_forward(x, 3, weight, bias, EPS, True, **choices)
        assert dict(launches[-1].config.constexprs)["BLOCK_S"] == tile[1]
        K.run(launches)
        assert_matches_reference(y, lambda x_, w_, b_: R.group_norm_silu(x_, 3, w_, b_, EPS), [x, weight, bias],
                                 dtype=torch.float32)
    else:  # a backward-only tile: statistics from the default plan
        y, mean, rstd = K.forward(x, 3, weight, bias, EPS, True)
    dy = torch.randn_like(y)
    backward_tiles = K.T.FUSED_BACKWARD_TILES if path == "fused" else K.T.SPLIT_BACKWARD_TILES
    if tile in [t[:2] for t in backward_tiles[layout == "channels_last"]]:
        actual = K.backward(dy, x, mean, rstd, weight, bias, 3, True, **choices)
        assert_matches_reference(list(actual), lambda x_, w_, b_, dy_: reference_grads(x_, 3, w_, b_, "silu", dy_),
                                 [x, weight, bias, dy], dtype=torch.float32, atol=1e-4)


@pytest.mark.parametrize("tile", [(64, 16), (16, 64)])
def test_channels_last_backward_reads_an_nchw_dy_in_place(triton_device, tile):
    """A channels-last x with the NCHW dy autograd may hand over: the split backward kernels read
    dy with its own strides (no copy), 12 of a tile's channels valid, positions beyond a tile."""
    K = _kernels()
    x = make_input((2, 12, 9, 91), torch.float32, "channels_last", triton_device, mean=2.0)
    weight, bias = make_params(12, torch.float32, triton_device)
    y, mean, rstd = K.forward(x, 3, weight, bias, EPS, True)
    dy = torch.randn(y.shape, dtype=y.dtype, device=y.device)  # NCHW-contiguous
    _, launches = K.plan_backward(dy, x, mean, rstd, weight, bias, 3, True, path="split", split_tile=tile)
    streaming = [launch for launch in launches if "DY_CHANNELS_LAST" in dict(launch.config.constexprs)]
    assert len(streaming) == 2 and all(launch.args[1] is dy for launch in streaming)
    assert not any(dict(launch.config.constexprs)["DY_CHANNELS_LAST"] for launch in streaming)
    actual = K.backward(dy, x, mean, rstd, weight, bias, 3, True, path="split", split_tile=tile)
    assert actual[0].is_contiguous(memory_format=torch.channels_last)
    assert_matches_reference(list(actual), lambda x_, w_, b_, dy_: reference_grads(x_, 3, w_, b_, "silu", dy_),
                             [x, weight, bias, dy], dtype=torch.float32, atol=1e-4)


def test_fused_units_of_several_groups_and_unaligned_channels(triton_device):
    """Channels-last fused units of whole groups that do not fill the tile (3 channels per group:
    five groups in a 16-channel unit, the last unit of a sample partly empty), SiLU off."""
    K = _kernels()
    x = make_input((3, 21, 6, 5), torch.float32, "channels_last", triton_device, mean=-1.0)
    weight, bias = make_params(21, torch.float32, triton_device)
    choices = dict(path="fused", fused_tile=(16, 256), num_sms=1)
    y, mean, rstd = K.forward(x, 7, weight, bias, EPS, False, **choices)
    assert_matches_reference(y, lambda x_, w_, b_: R.group_norm_silu(x_, 7, w_, b_, EPS, None), [x, weight, bias],
                             dtype=torch.float32)
    dy = torch.randn_like(y)
    actual = K.backward(dy, x, mean, rstd, weight, bias, 7, False, **choices)
    assert_matches_reference(list(actual), lambda x_, w_, b_, dy_: reference_grads(x_, 7, w_, b_, None, dy_),
                             [x, weight, bias, dy], dtype=torch.float32, atol=1e-4)


def test_split_path_without_affine_and_activation(triton_device):
    K = _kernels()
    x = make_input((1, 6, 5, 7), torch.float16, "nchw", triton_device)
    y, mean, rstd = K.forward(x, 3, None, None, EPS, False, path="split")
    assert_matches_reference(y, lambda x_: R.group_norm_silu(x_, 3, None, None, EPS, None), [x],
                             dtype=torch.float16)
    dy = torch.randn_like(x)
    dx, dw, db = K.backward(dy, x, mean, rstd, None, None, 3, False, path="split")
    assert dw is None and db is None
    assert_matches_reference(dx, lambda x_, dy_: reference_grads(x_, 3, None, None, None, dy_)[0],
                             [x, dy], dtype=torch.float16, atol=1e-4)


@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_outliers_where_the_pivot_is_taken(triton_device, path, layout):
    """Mean 1e4, std 1, and a first element (and first tile) far out: the sums are shifted by the
    first tile's mean, not by one value, so one outlier does not set the scale of the
    cancellation. As accurate as PyTorch's own fp32 group norm."""
    K = _kernels()
    x = make_input((2, 16, 16, 16), torch.float32, layout, triton_device, mean=1e4)
    x[:, :, 0, 0] += 3e3
    x[:, :, 0, 1] -= 2e3
    weight, bias = make_params(16, torch.float32, triton_device)
    choices = dict(path=path, num_sms=1, **({"chunk_tiles": 1, "split_tile": (16, 128)} if path == "split" else {}))
    y = K.forward(x, 4, weight, bias, EPS, True, **choices)[0]
    _assert_as_accurate_as_pytorch(y, x, weight, bias, 4)
