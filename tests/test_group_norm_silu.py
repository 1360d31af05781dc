"""group_norm_silu: Triton kernels (interpreter on CPU), the cpu backend, the custom op, the module.

Every fast result is compared with ``vqvae_fast.reference.ops.group_norm_silu`` (fp64 for the
expected value, the same dtype for the fp16/bf16 tolerance; docs/testing.md).
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import vqvae_fast
from vqvae_fast.nn import GroupNormSiLU
from vqvae_fast.reference import ops as R

from helpers import assert_matches_reference, device_for_backend, kernel_launches, max_abs_error

ops_module = sys.modules["vqvae_fast.ops.group_norm_silu"]
EPS = 1e-6


@pytest.fixture(params=["cpu", "triton"])
def backend_device(request):
    """``(backend, device)`` with that backend forced: the cpu backend on CPU tensors; the triton
    backend on CPU tensors through the interpreter, or on CUDA tensors where there is a GPU."""
    device = device_for_backend(request.param)
    with vqvae_fast.use_backend(request.param):
        yield request.param, device


def _kernels():
    from vqvae_fast.kernels import group_norm_silu

    return group_norm_silu


def make_input(shape, dtype, layout, device, mean=0.0, std=1.0):
    """``x`` of ``shape`` in ``layout``: "nchw", "channels_last" or "strided" (a slice along the
    spatial width, so its spatial dims cannot be flattened: the launcher must copy it once)."""
    if layout == "strided":
        full = torch.randn(*shape[:-1], 2 * shape[-1], device=device) * std + mean
        return full.to(dtype)[..., ::2]
    x = (torch.randn(shape, device=device) * std + mean).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
    return x


def make_params(channels, dtype, device, affine=True):
    if not affine:
        return None, None
    w = (torch.rand(channels, device=device) + 0.5).to(dtype)
    b = (torch.randn(channels, device=device) * 0.5).to(dtype)
    return w, b


def reference_grads(x, num_groups, weight, bias, activation, dy):
    """Autograd of the reference: ``(dx, dweight, dbias)`` (``None`` for absent parameters)."""
    x = x.detach().requires_grad_()
    params = [p.detach().requires_grad_() if p is not None else None for p in (weight, bias)]
    y = R.group_norm_silu(x, num_groups, params[0], params[1], EPS, activation)
    wanted = [x] + [p for p in params if p is not None]
    grads = iter(torch.autograd.grad(y, wanted, dy))
    dx = next(grads)
    return (dx, *[next(grads) if p is not None else None for p in params])


def check_forward_and_backward(x, num_groups, weight, bias, activation, dtype):
    """The public op (whatever backend is active) against the reference, values and gradients."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    y = vqvae_fast.group_norm_silu(leaves[0], num_groups, leaves[1], leaves[2], EPS, activation)
    ref = lambda x_, w_, b_: R.group_norm_silu(x_, num_groups, w_, b_, EPS, activation)  # noqa: E731
    assert_matches_reference(y.detach(), ref, [x, weight, bias], dtype=dtype)
    assert y.dtype == x.dtype
    assert y.is_contiguous(memory_format=ops_module.output_memory_format(x))

    dy = torch.randn(y.shape, device=x.device).to(dtype)
    y.backward(dy)
    present = [i for i, t in enumerate(leaves) if t is not None]
    actual = [leaves[i].grad for i in present]
    grads = lambda x_, w_, b_, dy_: [  # noqa: E731
        g for g in reference_grads(x_, num_groups, w_, b_, activation, dy_) if g is not None
    ]
    assert_matches_reference(actual, grads, [x, weight, bias, dy], dtype=dtype, atol=1e-4)
    assert leaves[0].grad.is_contiguous(memory_format=ops_module.output_memory_format(x))


# (shape, num_groups, dtype, layout, affine, activation): G in {1, 8, 32, C}, every dtype and
# layout, 1x1 and odd spatial sizes, 2-D to 5-D inputs, groups from 4 to 6400 elements.
CASES = [
    ((1, 32, 1, 1), 8, torch.float32, "nchw", True, "silu"),
    ((2, 32, 5, 7), 8, torch.float16, "channels_last", True, "silu"),
    ((1, 16, 4, 4), 16, torch.bfloat16, "nchw", False, "silu"),
    ((1, 16, 3, 6), 1, torch.float32, "strided", True, None),
    ((1, 64, 6, 6), 32, torch.float16, "nchw", True, "silu"),
    ((1, 8, 40, 40), 2, torch.bfloat16, "channels_last", True, "silu"),
    ((2, 12, 9), 3, torch.float32, "nchw", False, None),
    ((3, 32), 2, torch.float32, "nchw", True, "silu"),
    ((1, 8, 3, 4, 5), 4, torch.float16, "channels_last", True, "silu"),
]


def _case_id(case):
    shape, groups, dtype, layout, affine, act = case
    return f"{'x'.join(map(str, shape))}-G{groups}-{str(dtype)[6:]}-{layout}-{'affine' if affine else 'noaffine'}-{act}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_triton_matches_reference(triton_device, case):
    shape, groups, dtype, layout, affine, activation = case
    x = make_input(shape, dtype, layout, triton_device)
    weight, bias = make_params(shape[1], dtype, triton_device, affine)
    with kernel_launches() as launched:
        check_forward_and_backward(x, groups, weight, bias, activation, dtype)
    assert launched[0].startswith("_gn_fwd_") and any(name.startswith("_gn_bwd_") for name in launched)


@pytest.mark.parametrize("case", CASES + [((2, 16, 5, 5), 4, torch.float64, "channels_last", True, "silu")],
                         ids=_case_id)
def test_cpu_backend_matches_reference(case):
    shape, groups, dtype, layout, affine, activation = case
    x = make_input(shape, dtype, layout, "cpu")
    weight, bias = make_params(shape[1], dtype, "cpu", affine)
    with vqvae_fast.use_backend("cpu"):
        check_forward_and_backward(x, groups, weight, bias, activation, dtype)


def test_fp32_parameters_with_half_input(backend_device):
    _, device = backend_device
    x = make_input((2, 16, 4, 4), torch.float16, "nchw", device)
    weight, bias = make_params(16, torch.float32, device)
    check_forward_and_backward(x, 4, weight, bias, "silu", torch.float16)
    # bias only: native group norm's mixed-dtype backward lacks it; the op computes it
    check_forward_and_backward(x, 4, None, bias, "silu", torch.float16)


def test_deterministic(triton_device):
    """Fixed-order reductions, no atomics: two runs give identical bits (both paths)."""
    K = _kernels()
    x = make_input((1, 8, 16, 16), torch.float16, "channels_last", triton_device)
    weight, bias = make_params(8, torch.float16, triton_device)
    dy = torch.randn_like(x)
    for choices in (dict(path="fused"), dict(path="split", chunk_tiles=1)):
        runs = []
        for _ in range(2):
            y, mean, rstd = K.forward(x, 4, weight, bias, EPS, True, **choices)
            runs.append((y, *K.backward(dy, x, mean, rstd, weight, bias, 4, True, **choices)))
        for a, b in zip(*runs):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# Stability and special values


def _assert_as_accurate_as_pytorch(actual, x, weight, bias, groups):
    """Error against fp64 at most 2x PyTorch's own (same dtype, CPU) error, plus a small atol."""
    x, weight, bias = x.cpu(), weight.cpu(), bias.cpu()
    expected = R.group_norm_silu(x.double(), groups, weight.double(), bias.double(), EPS)
    pytorch = R.group_norm_silu(x, groups, weight, bias, EPS)
    bound = 2 * max_abs_error(pytorch, expected) + 1e-5 * max(float(expected.abs().max()), 1.0)
    assert max_abs_error(actual.cpu(), expected) <= bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_large_mean_small_std(backend_device, dtype):
    """mean 1e4, std 1: a one-pass E[x^2] - E[x]^2 would cancel to garbage."""
    backend, device = backend_device
    x = make_input((2, 16, 8, 8), dtype, "nchw", device, mean=1e4)
    weight, bias = make_params(16, dtype, device)
    y = vqvae_fast.group_norm_silu(x, 4, weight, bias, EPS)
    _assert_as_accurate_as_pytorch(y, x, weight, bias, 4)
    if backend == "triton" and dtype == torch.float32:
        # the split path's pivot-shifted partials, over four chunks, keep the same accuracy
        x = make_input((2, 16, 16, 16), dtype, "nchw", device, mean=1e4)
        y = _kernels().forward(x, 4, weight, bias, EPS, True, path="split", chunk_tiles=1, split_tile=(16, 128))[0]
        _assert_as_accurate_as_pytorch(y, x, weight, bias, 4)


def test_fp16_near_its_limit(backend_device):
    """Values up to 6e4 (fp16 max 65504): squares overflow fp16, the statistics are fp32."""
    _, device = backend_device
    x = (torch.randn(2, 16, 8, 8, device=device) * 2e4).clamp(-6e4, 6e4).half()
    weight, bias = make_params(16, torch.float16, device)
    y = vqvae_fast.group_norm_silu(x, 4, weight, bias, EPS)
    assert torch.isfinite(y).all()
    assert_matches_reference(y, lambda x_, w_, b_: R.group_norm_silu(x_, 4, w_, b_, EPS),
                             [x, weight, bias], dtype=torch.float16)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # numpy, in the interpreter
def test_nan_and_inf_propagate_like_the_reference(backend_device):
    _, device = backend_device
    x = torch.randn(2, 16, 4, 4, device=device)
    x[0, 1, 2, 3] = float("nan")  # group 0 of sample 0
    x[1, 9, 0, 0] = float("inf")  # group 2 of sample 1
    x[1, 13, 1, 1] = -float("inf")  # group 3 of sample 1
    weight, bias = make_params(16, torch.float32, device)
    expected = R.group_norm_silu(x, 4, weight, bias, EPS)
    y = vqvae_fast.group_norm_silu(x, 4, weight, bias, EPS)
    assert torch.equal(torch.isnan(y), torch.isnan(expected))
    assert torch.equal(torch.isinf(y), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert finite.any() and not finite.all()
    torch.testing.assert_close(y[finite], expected[finite], rtol=1e-4, atol=1e-5)


def test_one_element_per_group(backend_device):
    """F.group_norm refuses one value per group; the op gives silu(bias) (zero variance)."""
    backend, device = backend_device
    x = torch.randn(1, 32, 1, 1, device=device)
    weight, bias = make_params(32, torch.float32, device)
    y = vqvae_fast.group_norm_silu(x, 32, weight, bias, EPS)
    # native CPU group norm computes x * (rstd * w) + (b - mean * rstd * w): with rstd = 1/sqrt(eps)
    # that loses about 1e-4, PyTorch's own accuracy here (the Triton kernels subtract first)
    atol = 1e-3 if backend == "cpu" else 1e-5
    torch.testing.assert_close(y, nn.functional.silu(bias).view(1, 32, 1, 1).expand_as(x), atol=atol, rtol=0)


@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (2, 8, 0, 3)])
def test_empty_input(backend_device, shape):
    _, device = backend_device
    x = torch.randn(shape, device=device, requires_grad=True)
    weight = torch.ones(8, device=device, requires_grad=True)
    y = vqvae_fast.group_norm_silu(x, 4, weight, None, EPS)
    y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight))


# ----------------------------------------------------------------------------------------------
# Layouts and launcher choices


def test_layouts_are_read_in_place_and_odd_strides_copied_once():
    K = _kernels()
    w = torch.ones(16)
    nchw = torch.randn(2, 16, 6, 6)
    channels_last = nchw.to(memory_format=torch.channels_last)
    channel_slice = torch.randn(2, 32, 6, 6)[:, 8:24]  # NCHW rows with a larger sample stride
    width_slice = torch.randn(2, 16, 6, 12)[..., ::2]
    for x, read_in_place, out_format in [
        (nchw, True, torch.contiguous_format),
        (channels_last, True, torch.channels_last),
        (channel_slice, True, torch.contiguous_format),
        (width_slice, False, torch.contiguous_format),
    ]:
        (y, _, _), launches = K.plan_forward(x, 4, w, w, EPS, True)
        assert (launches[0].args[0] is x) == read_in_place
        assert y.is_contiguous(memory_format=out_format)


def test_batch_one_fills_the_gpu():
    """At batch 1 a VQGAN-sized group is reduced by many programs (planned on meta tensors, which
    stand in for an H100's 132 SMs): the split grid fills whole waves; small groups take the
    one-launch fused path with every SM busy."""
    K = _kernels()
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.empty(1, 128, 256, 256, dtype=torch.float16, device="meta", memory_format=fmt)
        (_, mean, rstd), launches = K.plan_forward(x, 32, None, None, EPS, True)
        assert [launch.kernel.__name__ for launch in launches] == [
            "_gn_fwd_partial_stats_kernel", "_gn_fwd_combine_kernel", "_gn_fwd_apply_kernel"]
        for launch in (launches[0], launches[2]):  # whole waves: every SM busy, the last wave at least 90% full
            wave = 132 * dict(launch.config.occupancy)["sm_90a"]
            assert launch.grid[0] >= 132 and launch.grid[0] / (-(-launch.grid[0] // wave) * wave) >= 0.9
        _, backward = K.plan_backward(torch.empty_like(x), x, mean, rstd, None, None, 32, True)
        assert backward[0].grid[0] >= 132 * dict(backward[0].config.occupancy)["sm_90a"]
    x = torch.empty(8, 512, 16, 16, dtype=torch.float16, device="meta")
    launches = K.plan_forward(x, 32, None, None, EPS, True)[1]
    assert [launch.kernel.__name__ for launch in launches] == ["_gn_fwd_fused_kernel"]
    assert launches[0].grid[0] >= 132


def test_absent_parameters_are_made_once():
    """A norm without weight / bias runs with cached ones and zeros: no fill kernel per call."""
    K = _kernels()
    x = torch.randn(2, 8, 3, 3)
    first, second = K._affine(x, None, None), K._affine(x, None, None)
    assert first[0] is second[0] and first[1] is second[1]
    assert torch.equal(first[0], torch.ones(8)) and torch.equal(first[1], torch.zeros(8))
    bias = torch.randn(8, dtype=torch.float64)
    w, b = K._affine(x, None, bias)
    assert b is bias and w.dtype == torch.float64 and torch.equal(w, torch.ones(8, dtype=torch.float64))


def test_inputs_are_not_modified(backend_device):
    _, device = backend_device
    x = torch.randn(2, 8, 3, 3, device=device)
    weight, bias = make_params(8, torch.float32, device)
    saved = [t.clone() for t in (x, weight, bias)]
    vqvae_fast.group_norm_silu(x, 4, weight, bias)
    for before, after in zip(saved, (x, weight, bias)):
        assert torch.equal(before, after)


# ----------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile


def test_opcheck(backend_device):
    _, device = backend_device
    x = torch.randn(2, 8, 3, 3, device=device).to(memory_format=torch.channels_last).requires_grad_()
    weight = torch.rand(8, device=device, requires_grad=True)
    bias = torch.randn(8, device=device, requires_grad=True)
    op = torch.ops.vqvae_fast
    torch.library.opcheck(op.group_norm_silu.default, (x, 4, weight, bias, EPS, True))
    torch.library.opcheck(op.group_norm_silu.default, (x, 2, None, None, EPS, False))
    _, mean, rstd = op.group_norm_silu(x, 4, weight, bias, EPS, True)
    torch.library.opcheck(
        op.group_norm_silu_backward.default,
        (torch.randn_like(x), x.detach(), mean, rstd, weight.detach(), None, 4, EPS, True),
    )


def test_torch_compile_fullgraph_on_cpu():
    module = GroupNormSiLU(4, 16, eps=EPS)
    nn.init.uniform_(module.weight, 0.5, 1.5)

    def block(x):
        return vqvae_fast.group_norm_silu(x, 4, module.weight, module.bias, EPS) * 2 + 1

    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    grad = x.grad.clone()
    x.grad = None
    expected = R.group_norm_silu(x, 4, module.weight, module.bias, EPS) * 2 + 1
    expected.sum().backward()
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(grad, x.grad)


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, w: vqvae_fast.group_norm_silu(x, 3, w, w), ValueError, "num_groups"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 0), ValueError, "num_groups"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 2.0), TypeError, "num_groups"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 4, torch.ones(4)), ValueError, "weight"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 4, w, torch.ones(8, 1)), ValueError, "bias"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 4, w.long()), TypeError, "weight"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 4, w.half()), TypeError, "weight"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 4, w, w.double()), TypeError, "bias"),
        (lambda x, w: vqvae_fast.group_norm_silu(x.long(), 4), TypeError, "x"),
        (lambda x, w: vqvae_fast.group_norm_silu(x[0, 0, 0], 4), ValueError, "x"),
        (lambda x, w: vqvae_fast.group_norm_silu(x.numpy(), 4), TypeError, "x"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 4, w.to("meta")), ValueError, "weight"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 4, eps=-1.0), ValueError, "eps"),
        (lambda x, w: vqvae_fast.group_norm_silu(x, 4, activation="relu"), ValueError, "activation"),
    ],
)
def test_bad_input(call, error, match):
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(error, match=match):
        call(x, torch.ones(8))


# ----------------------------------------------------------------------------------------------
# The module


def test_module_loads_group_norm_state_and_matches():
    norm = nn.GroupNorm(8, 32, eps=EPS)
    nn.init.uniform_(norm.weight, 0.5, 1.5)
    nn.init.normal_(norm.bias)
    fused = GroupNormSiLU(8, 32, eps=EPS)
    assert list(fused.state_dict()) == list(norm.state_dict()) == ["weight", "bias"]
    fused.load_state_dict(norm.state_dict())
    x = torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(fused(x), nn.functional.silu(norm(x)))
    plain = GroupNormSiLU(8, 32, eps=EPS, activation=None)
    plain.load_state_dict(norm.state_dict())
    torch.testing.assert_close(plain(x), norm(x))


def test_module_from_group_norm_shares_parameters():
    norm = nn.GroupNorm(4, 16, eps=1e-6)
    fused = GroupNormSiLU.from_group_norm(norm)
    assert fused.weight is norm.weight and fused.bias is norm.bias
    assert (fused.num_groups, fused.num_channels, fused.eps, fused.affine) == (4, 16, 1e-6, True)
    x = torch.randn(2, 16, 3, 3)
    fused(x).sum().backward()
    assert norm.weight.grad is not None  # training the fused module trains the norm
    bare = GroupNormSiLU.from_group_norm(nn.GroupNorm(2, 4, affine=False), activation=None)
    assert bare.weight is None and list(bare.state_dict()) == []
    with pytest.raises(TypeError, match="norm"):
        GroupNormSiLU.from_group_norm(nn.BatchNorm2d(4))


def test_module_constructor_matches_group_norm():
    fused = GroupNormSiLU(2, 6, device="cpu", dtype=torch.float64)
    reference = nn.GroupNorm(2, 6, device="cpu", dtype=torch.float64)
    assert fused.eps == reference.eps == 1e-5
    for name in ("weight", "bias"):
        assert torch.equal(getattr(fused, name), getattr(reference, name))
        assert getattr(fused, name).dtype == torch.float64
    assert "activation='silu'" in repr(fused)
    assert GroupNormSiLU(2, 6, affine=False).weight is None
    with pytest.raises(ValueError, match="num_channels"):
        GroupNormSiLU(4, 6)
    with pytest.raises(ValueError, match="activation"):
        GroupNormSiLU(2, 6, activation="gelu")
    with pytest.raises(ValueError, match="channels"):
        fused(torch.randn(1, 4, 2, 2, dtype=torch.float64))


def test_module_on_triton(triton_device):
    module = GroupNormSiLU(4, 8, eps=EPS).to(triton_device)
    x = torch.randn(2, 8, 4, 4, device=triton_device)
    expected = nn.functional.silu(nn.functional.group_norm(x, 4, module.weight, module.bias, EPS))
    torch.testing.assert_close(module(x), expected)
