"""The low-memory executor's parts on their own: tile windows against whole convolutions, group
statistics merged over tiles against group norm, the program compiler, budgets and the planner's
memory model (docs/low-memory.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqvae_fast import configs, models
from vqvae_fast.lowmem import budget, geometry, layers, plan
from vqvae_fast.lowmem.program import compile_layers
from vqvae_fast.lowmem.stats import GroupMoments, normalize_into


@pytest.mark.parametrize("kernel,stride,pad_lo,pad_hi", [(3, 1, 1, 1), (3, 2, 0, 1), (1, 1, 0, 0), (5, 1, 2, 2)])
def test_conv_window_gives_exactly_the_tile_rows(kernel, stride, pad_lo, pad_hi):
    torch.manual_seed(0)
    for size in range(kernel, 12):
        x = torch.randn(1, 2, size, 3, dtype=torch.float64)
        w = torch.randn(2, 2, kernel, 1, dtype=torch.float64)
        full = F.conv2d(F.pad(x, (0, 0, pad_lo, pad_hi)), w, stride=(stride, 1))
        out = geometry.conv_output_size(size, kernel, stride, pad_lo, pad_hi)
        assert full.shape[2] == out
        for o0 in range(out):
            for o1 in range(o0 + 1, out + 1):
                a, b, lo, hi = geometry.conv_window(o0, o1, size, kernel, stride, pad_lo)
                part = F.conv2d(F.pad(x[:, :, a:b], (0, 0, lo, hi)), w, stride=(stride, 1))
                torch.testing.assert_close(part, full[:, :, o0:o1], rtol=0, atol=1e-12)


def test_upsample_window_gives_exactly_the_tile_rows():
    torch.manual_seed(0)
    for size in range(1, 9):
        x = torch.randn(1, 2, size, 3, dtype=torch.float64)
        w = torch.randn(2, 2, 3, 3, dtype=torch.float64)
        full = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, padding=1)
        for o0 in range(2 * size):
            for o1 in range(o0 + 1, 2 * size + 1):
                a, b = geometry.upsample_window(o0, o1, size)
                part = F.conv2d(F.interpolate(x[:, :, a:b], scale_factor=2.0, mode="nearest"), w, padding=1)
                torch.testing.assert_close(part[:, :, o0 - 2 * a:o1 - 2 * a], full[:, :, o0:o1], rtol=0, atol=1e-12)


def test_grid_overlapping_covers_a_window_once():
    grid = geometry.Grid.even(13, 10, 4, 3)
    assert grid.rows == (0, 3, 6, 9, 13) and grid.cols == (0, 3, 6, 10)
    covered = torch.zeros(13, 10, dtype=torch.int64)
    for _, _, (a0, a1, b0, b1) in grid.overlapping(2, 11, 1, 9):
        covered[a0:a1, b0:b1] += 1
    expected = torch.zeros(13, 10, dtype=torch.int64)
    expected[2:11, 1:9] = 1
    assert torch.equal(covered, expected)
    assert geometry.Grid.even(3, 5, 8, 8).shape == (3, 5)  # never more tiles than pixels


@pytest.mark.parametrize("dtype,layout", [(torch.float32, "nchw"), (torch.float64, "nchw"),
                                          (torch.float32, "channels_last"), (torch.float16, "nchw")])
def test_group_moments_merged_over_tiles_normalise_like_group_norm(dtype, layout):
    torch.manual_seed(0)
    x = (torch.randn(2, 64, 13, 11, dtype=torch.float64) * 3 + 5).to(dtype)  # a large mean: no cancellation
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    norm = torch.nn.GroupNorm(32, 64, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    moments = GroupMoments(32)
    for r0, r1 in ((0, 5), (5, 6), (6, 13)):
        for c0, c1 in ((0, 4), (4, 11)):
            moments.add(x[:, :, r0:r1, c0:c1])
    with torch.no_grad():
        scale, shift = moments.scale_shift(norm, dtype)
        out = torch.empty_like(x)
        normalize_into(out, x, scale, shift)
        expected = norm(x.double())
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_compile_fuses_norms_into_convs_and_residuals_after_them():
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    norm = torch.nn.GroupNorm(32, 32)
    pad = layers.symmetric_padding(conv)
    program = compile_layers([layers.Conv(conv, pad), layers.Save(), layers.Norm(norm, True), layers.Conv(conv, pad),
                              layers.Norm(norm, True), layers.Conv(conv, pad), layers.Residual()])
    assert [(p.src, p.dst, p.skip) for p in program.passes] == [(0, 1, None), (1, 2, None), (2, 3, 1)]
    assert program.last_use == [0, 2, 2, -1]
    with pytest.raises(layers.Unsupported, match="followed by a convolution"):
        compile_layers([layers.Conv(conv, pad), layers.Norm(norm, True)])
    with pytest.raises(layers.Unsupported, match="residual"):
        compile_layers([layers.Residual()])


@pytest.mark.parametrize("text,expected", [("12GB", 12 * 10**9), ("1.5GiB", 3 * 2**29), ("512 MiB", 2**29),
                                           (4096, 4096), (4e9, 4 * 10**9), ("auto", "auto"), ("lean", "lean"),
                                           (None, None)])
def test_budget_parsing(text, expected):
    assert budget.parse(text) == expected


@pytest.mark.parametrize("bad,error", [(-1, ValueError), (0, ValueError), ("12 parsecs", ValueError),
                                       (True, TypeError), (1.5, TypeError), ([1], TypeError)])
def test_bad_budgets_name_the_argument(bad, error):
    with pytest.raises(error, match="budget"):
        budget.parse(bad)


def test_auto_budget_is_what_the_host_has():
    available = budget.available(torch.device("cpu"))
    assert 0 < available <= budget._host_available()


def _meta_decoder(name: str):
    with torch.device("meta"):
        return models.Decoder(**configs.get_config(name)["ddconfig"])


@pytest.mark.parametrize("name", ["vqgan_imagenet_f16_16384", "vq_f8"])
def test_lean_plan_models_at_most_two_and_a_half_activations(name):
    decoder = _meta_decoder(name)
    f = 2 ** (decoder.num_resolutions - 1)
    lean = plan(decoder, (1, decoder.z_channels, 1024 // f, 1024 // f), budget="lean")
    largest = max(c * h * w for c, h, w in lean.shapes[1:]) * 4
    assert lean.estimate <= 2.5 * largest, lean.describe()
    assert "1024x1024" in lean.describe()


def test_budget_plans_fit_and_offload_on_cuda():
    decoder = _meta_decoder("vqgan_imagenet_f16_16384")
    shape = (1, 256, 128, 128)  # a 2048x2048 decode
    largest = 128 * 2048 * 2048 * 2
    gpu = plan(decoder, shape, budget=largest // 2, dtype=torch.float16, device="cuda")  # half an activation
    assert gpu.estimate <= largest // 2 and "host" in gpu.tiers and gpu.tiers[-1] == "device"
    with pytest.raises(ValueError, match=r"budget of .* too small"):
        plan(decoder, shape, budget=largest // 2, dtype=torch.float16, device="cpu")  # no host memory to spill to
    roomy = plan(decoder, shape, budget=100 * largest, dtype=torch.float16, device="cuda")
    assert all(g.count == 1 for g in roomy.grids)  # everything fits whole: the plain ops
