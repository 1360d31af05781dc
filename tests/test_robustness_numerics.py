"""Numerics across ops and backends: ill-conditioned statistics, the fp16 limit, ties, NaN / Inf,
and bit-identical reruns.

The op test files already cover group norm at mean 1e4 / std 1 (forward), fp16 values near 6e4,
one NaN / Inf pattern of the group norm forward, attention logits that overflow fp16 only
unscaled, and duplicate codes in the Triton argmin. This file adds the matrix around them:

* group norm with |mean| / std = 1e4 in both signs, at two scales and with groups far apart, on
  the fused and the split Triton paths and the cpu backend, forward *and* backward;
* attention whose scaled logits reach the fp16 limit (a softmax that is one-hot or an exact tie),
  forward and backward, fp16 / bf16 / fp32;
* argmin on exact ties (duplicated codes, integer codebooks whose distances are exact, -0.0) on
  every backend and precision -- lowest index everywhere -- and on near-ties by docs/testing.md's
  rule; NaN / Inf codes and latents pick what the reference picks;
* NaN / Inf in attention, padded_conv2d and the group norm's split path and backward land where
  the reference puts them;
* two runs of every op on every CPU-reachable backend give identical bits, forward and backward.

Accuracy on ill-conditioned inputs is judged as docs/testing.md does for low precision: the
error against fp64 at most twice the error of PyTorch's own op in the same dtype, plus a small
absolute term (PyTorch's fp32 group norm is itself ~1e-4 off at mean/std = 1e4).
"""

from __future__ import annotations

import pytest
import torch

import vqvae_fast
from vqvae_fast.reference import ops as R

from helpers import assert_matches_reference, device_for_backend, max_abs_error

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(params=["cpu", "triton"])
def fast_backend(request):
    """``(backend, device)`` with a fast backend forced: cpu, or Triton (interpreter / GPU)."""
    device = device_for_backend(request.param)
    with vqvae_fast.use_backend(request.param):
        yield request.param, device


def assert_as_accurate_as_pytorch(actual, reference_fn, args, dtype, atol=1e-5):
    """Every output within 2x the error of ``reference_fn`` run in ``dtype`` (PyTorch's own op),
    plus ``atol`` of its magnitude, against ``reference_fn`` in fp64."""
    exact = reference_fn(*[a.double() if a is not None else None for a in args])
    same = reference_fn(*[a.to(dtype) if a is not None else None for a in args])
    actual, exact, same = ([actual], [exact], [same]) if isinstance(actual, torch.Tensor) else (actual, exact, same)
    for i, (got, want, baseline) in enumerate(zip(actual, exact, same)):
        bound = 2 * max_abs_error(baseline, want) + atol * max(float(want.abs().max()), 1.0)
        err = max_abs_error(got, want)
        assert err <= bound, f"output {i}: error {err:.3e} exceeds 2x PyTorch's {dtype} error + atol ({bound:.3e})"


# ----------------------------------------------------------------------------------------------
# group_norm_silu: |mean| / std up to 1e4, forward and backward


def _offset_input(shape, mean, std, dtype, device):
    """``x`` whose groups (4 channels each) sit at ``mean`` (a number, or one per group)."""
    x = torch.randn(shape, dtype=torch.float64) * std
    means = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    per_channel = means.repeat_interleave(shape[1] // means.numel()) if means.numel() > 1 else means
    x = x + per_channel.view(1, -1, *([1] * (len(shape) - 2)))
    return x.to(dtype).to(device)


# numpy in the interpreter: masked-off lanes hold (0 - mean) * rstd, which overflows fp16 before
# the masked store drops it (as on the GPU, silently); sigmoid of a large negative overflows exp
@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("mean, std", [(1e4, 1.0), (-1e4, 1.0), (100.0, 1e-2), ([1e4, -1e4, 0.0, 1e3], 1.0)],
                         ids=["+1e4", "-1e4", "1e2/1e-2", "groups apart"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 16, 6, 6), (1, 16, 64, 65)], ids=["fused", "split"])
def test_group_norm_far_from_zero(fast_backend, mean, std, dtype, shape):
    """The split shape's groups (4 x 4160 elements) exceed the fused kernels' limits."""
    _, device = fast_backend
    x = _offset_input(shape, mean, std, dtype, device)
    w = (torch.rand(16) + 0.5).to(dtype).to(device)
    b = torch.randn(16).to(dtype).to(device)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    y = vqvae_fast.group_norm_silu(*leaves[:1], 4, *leaves[1:], eps=1e-6)
    dy = torch.randn(shape).to(dtype).to(device)
    grads = torch.autograd.grad(y, leaves, dy)

    def reference(x_, w_, b_, dy_):
        x_, w_, b_ = (t.detach().requires_grad_() for t in (x_, w_, b_))
        out = R.group_norm_silu(x_, 4, w_, b_, 1e-6)
        return (out.detach(), *torch.autograd.grad(out, (x_, w_, b_), dy_))

    args = [t.cpu() for t in (x, w, b, dy)]
    assert_as_accurate_as_pytorch([y.detach().cpu(), *(g.cpu() for g in grads)], reference, args, dtype, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# spatial_attention: scaled logits up to the fp16 limit


def _extreme_qkv(dtype, device, batch=2, channels=16, n=24):
    """q, k of entries +-120: with s = 1/4 the logits are multiples of 7200 from -57600 to 57600
    (fp16 max 65504), so each softmax row is one-hot or an exact tie of keys with the same logit."""
    g = torch.Generator().manual_seed(1)
    signs = lambda: torch.randint(0, 2, (batch, channels, n), generator=g).double() * 2 - 1  # noqa: E731
    q, k = 120 * signs(), 120 * signs()
    k[:, :, 5] = k[:, :, 3]  # an exact tie for every query whose best key is 3
    q[:, :, 0] = k[:, :, 3]  # ... which query 0's is: logit 57600
    q[:, :, 1] = -k[:, :, 4]  # and logit -57600
    v = torch.randn(batch, channels, n, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(device) for t in (q, k, v)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_attention_logits_at_the_fp16_limit(fast_backend, dtype):
    backend, device = fast_backend
    q, k, v = _extreme_qkv(dtype, device)
    logits = torch.bmm(q.double().cpu().transpose(1, 2), k.double().cpu()) / 4
    assert float(logits.max()) == 57600.0 and float(logits.min()) == -57600.0
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = vqvae_fast.spatial_attention(*leaves)
    dout = torch.randn(out.shape).to(dtype).to(device)
    grads = torch.autograd.grad(out, leaves, dout)
    assert all(torch.isfinite(t).all() for t in (out, *grads))
    # query 0 attends to keys 3 and 5 (identical), half each; query 1 to whatever is least negative
    half_each = (v[:, :, 3].double().cpu() + v[:, :, 5].double().cpu()) / 2
    torch.testing.assert_close(out[:, :, 0].double().cpu(), half_each, rtol=0, atol=2e-2)

    def reference(q_, k_, v_, dout_):
        q_, k_, v_ = (t.detach().requires_grad_() for t in (q_, k_, v_))
        o = R.spatial_attention(q_, k_, v_)
        return (o.detach(), *torch.autograd.grad(o, (q_, k_, v_), dout_))

    args = [t.cpu() for t in (q, k, v, dout)]
    assert_matches_reference([out.detach().cpu(), *(g.cpu() for g in grads)], reference, args, dtype=dtype, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# codebook_argmin: exact ties, near-ties, non-finite values


def assert_argmin_rule(z, codebook, indices, distances=None, compute=torch.float32):
    """docs/testing.md: the chosen code's fp64 distance within the rounding of the distance in
    the ``compute`` dtype (fp32 for the fast backends) of the best, and the best index wherever the
    best two differ by more than that rounding."""
    if indices.numel() == 0:
        return
    flat = R.flatten_latents(z).double().cpu()
    e = codebook.double().cpu()
    exact = (flat[:, None, :] - e[None]).pow(2).sum(-1)  # (N, K)
    tol = (flat.shape[1] + 4) * torch.finfo(compute).eps * (flat.pow(2).sum(1) + e.pow(2).sum(1).max())
    chosen = exact.gather(1, indices.reshape(-1, 1).cpu()).squeeze(1)
    best, order = exact.topk(min(2, e.shape[0]), dim=1, largest=False)
    assert (chosen - best[:, 0] <= tol).all(), "a chosen code is worse than the best by more than rounding"
    if e.shape[0] > 1:
        clear = best[:, 1] - best[:, 0] > tol
        assert torch.equal(indices.reshape(-1).cpu()[clear], order[clear, 0]), "a clear winner was missed"
    if distances is not None:
        torch.testing.assert_close(distances.reshape(-1).double().cpu(), chosen, rtol=1e-5, atol=float(tol.max()))


ARGMIN_RUNS = [("reference", "ieee"), ("cpu", "ieee"), ("triton", "ieee"), ("triton", "fast")]


@pytest.fixture(params=ARGMIN_RUNS, ids=[f"{b}-{p}" for b, p in ARGMIN_RUNS])
def argmin_run(request):
    """``(backend, argmin(z, codebook, **kwargs))`` with the backend forced."""
    backend, precision = request.param
    device = device_for_backend(backend)

    def argmin(z, codebook, **kwargs):
        result = vqvae_fast.codebook_argmin(z.to(device), codebook.to(device), precision, **kwargs)
        return tuple(t.cpu() for t in result) if isinstance(result, tuple) else result.cpu()

    with vqvae_fast.use_backend(backend):
        yield backend, argmin


def _compute_dtype(backend, dtype):
    """The reference computes in the inputs' dtype (as taming does); the fast backends in fp32."""
    return dtype if backend == "reference" else torch.promote_types(dtype, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_argmin_exact_ties_go_to_the_lowest_index(argmin_run, dtype):
    """Integer codebooks: every distance is exact in every dtype and dot kind, so ties are exact
    ties, and every backend must return the lowest index among them."""
    backend, argmin = argmin_run
    g = torch.Generator().manual_seed(2)
    K, D = 200, 8
    codebook = torch.randint(-4, 5, (K, D), generator=g).double()
    codebook[150] = codebook[3]  # duplicates in different tiles and splits
    codebook[199] = codebook[7]
    codebook[120] = -codebook[60]  # the same distance from z = 0
    codebook[60, 0], codebook[61] = 0.0, codebook[60]
    codebook[61, 0] = -0.0  # a bitwise-different copy of code 60
    mid = (codebook[10] + codebook[11]) / 2  # equidistant (exactly) from codes 10 and 11
    z = torch.stack([codebook[150], codebook[199], codebook[61], torch.zeros(D), mid, codebook[3] + 0.25])
    indices, distances = argmin(z.to(dtype), codebook.to(dtype), return_distance=True)
    exact = (z[:, None, :] - codebook[None]).pow(2).sum(-1)  # exact: small integers and halves
    first_best = (exact == exact.min(1, keepdim=True).values).double().argmax(1)  # lowest tied index
    assert indices.tolist() == first_best.tolist()
    assert indices[:3].tolist() == [3, 7, 60]
    if backend != "reference":  # the reference's distances are computed in the input dtype
        torch.testing.assert_close(distances.double(), exact.min(1).values, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_argmin_near_ties(argmin_run, dtype):
    """Latents near the midpoint of two codes: best and second best closer than fp32 rounding."""
    backend, argmin = argmin_run
    g = torch.Generator().manual_seed(3)
    codebook = torch.randn(64, 16, generator=g)
    a, b = torch.randint(0, 64, (2, 40), generator=g)
    b = torch.where(a == b, (b + 1) % 64, b)
    z = (codebook[a] + codebook[b]) / 2 + 1e-7 * torch.randn(40, 16, generator=g)
    z, codebook = z.to(dtype), codebook.to(dtype)
    indices, distances = argmin(z, codebook, return_distance=True)
    assert_argmin_rule(z, codebook, indices, distances if backend != "reference" else None,
                       compute=_compute_dtype(backend, dtype))


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # numpy, in the interpreter
def test_argmin_non_finite_values_pick_what_the_reference_picks(argmin_run):
    """A NaN distance is the smallest, ties to the lowest index (torch.argmin's rule, and the
    reference's): a NaN latent gets code 0, a NaN code wins every row, an infinite code wins where
    its distance is inf - inf. The returned distance is sum (z - e)^2 of the chosen code.
    The cpu backend (torch.argmin on ||e||^2 - 2 z.e, without the reference's ||z||^2 term)
    differs where an infinite latent meets a code whose distance is NaN: there torch.argmin puts
    the NaN code before the -inf ones, which the reference's ||z||^2 = inf had turned to NaN too."""
    backend, argmin = argmin_run
    g = torch.Generator().manual_seed(4)
    z_nan, z_inf = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    z_nan[0, 1, 0, 0] = float("nan")
    z_inf[1, 0, 2, 2] = float("inf")
    codebook = torch.randn(40, 4, generator=g)
    nan_code, inf_code = codebook.clone(), codebook.clone()
    nan_code[17, 2] = float("nan")
    inf_code[9, 0] = float("inf")
    for z in (z_nan, z_inf):
        for e in (codebook, nan_code, inf_code):
            if backend == "cpu" and z is z_inf and e is not codebook:
                continue
            indices, distances = argmin(z, e, return_distance=True)
            assert torch.equal(indices, R.codebook_argmin(z, e))
            if backend != "reference":  # the reference's expanded formula gives NaN for inf - inf
                chosen = (R.flatten_latents(z).double() - e.double()[indices.reshape(-1)]).pow(2).sum(1)
                torch.testing.assert_close(distances.reshape(-1), chosen.float(), equal_nan=True)


# ----------------------------------------------------------------------------------------------
# NaN and Inf land where the reference puts them


def _assert_same_non_finite(actual, expected, superset=False):
    for name, test in (("NaN", torch.isnan), ("Inf", torch.isinf)):
        got, want = test(actual.double().cpu()), test(expected.double().cpu())
        if superset:
            assert (got | ~want).all(), f"{name} missing where the reference has it"
        else:
            assert torch.equal(got, want), f"{name} at {int(got.sum())} places, the reference at {int(want.sum())}"
    both = torch.isfinite(actual.double().cpu()) & torch.isfinite(expected.double().cpu())
    torch.testing.assert_close(actual.double().cpu()[both], expected.double().cpu()[both], rtol=2e-2, atol=2e-2)


ATTENTION_PATTERNS = {  # where: (tensor, index, value)
    "NaN query": ("q", (0, slice(None), 3), float("nan")),
    "NaN key channel": ("k", (1, 2, 5), float("nan")),
    "NaN value": ("v", (0, 4, 7), float("nan")),
    "+Inf key": ("k", (0, 1, 2), float("inf")),
    "-Inf query": ("q", (1, 0, 0), float("-inf")),
    "+Inf value": ("v", (0, 0, 0), float("inf")),
}


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # numpy, in the interpreter
@pytest.mark.parametrize("pattern", list(ATTENTION_PATTERNS))
def test_attention_non_finite(fast_backend, pattern):
    backend, device = fast_backend
    dtype = torch.float16 if backend == "triton" else torch.float32
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 16, 24, generator=g) for _ in range(3))
    name, index, value = ATTENTION_PATTERNS[pattern]
    {"q": q, "k": k, "v": v}[name][index] = value
    leaves = [t.to(dtype).to(device).requires_grad_() for t in (q, k, v)]
    out = vqvae_fast.spatial_attention(*leaves)
    dout = torch.randn(out.shape, generator=g).to(dtype).to(device)
    grads = torch.autograd.grad(out, leaves, dout)
    exact = [t.detach().double().cpu().requires_grad_() for t in leaves]
    expected = R.spatial_attention(*exact)
    expected_grads = torch.autograd.grad(expected, exact, dout.double().cpu())
    for got, want in zip((out, *grads), (expected, *expected_grads)):
        _assert_same_non_finite(got.detach(), want)


CONV_PATTERNS = {
    "NaN inside": ("x", (0, 1, 3, 3), float("nan")),
    "NaN on the bottom row": ("x", (1, 2, 6, 2), float("nan")),
    "+Inf on the right column": ("x", (0, 0, 2, 6), float("inf")),
    "-Inf in the corner": ("x", (1, 3, 6, 6), float("-inf")),
    "NaN weight": ("weight", (2, 1, 2, 2), float("nan")),
    "+Inf bias": ("bias", (3,), float("inf")),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("pattern", list(CONV_PATTERNS))
def test_padded_conv2d_non_finite(pattern, channels_last):
    """The C++ backend (border strips by im2col + GEMM) against pad-then-conv, forward and backward.
    A NaN weight makes ATen's convolution backward (which the bulk of the compiled op is, on the
    unpadded geometry) mark a few more input gradients NaN than the reference's padded geometry
    does, as F.conv2d itself would (NaN times a structural zero): there the test asks for a superset."""
    g = torch.Generator().manual_seed(6)
    tensors = {"x": torch.randn(2, 4, 7, 7, generator=g), "weight": torch.randn(6, 4, 3, 3, generator=g),
               "bias": torch.randn(6, generator=g)}
    name, index, value = CONV_PATTERNS[pattern]
    tensors[name][index] = value
    x, w, b = (tensors[n].clone().requires_grad_() for n in ("x", "weight", "bias"))
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    with vqvae_fast.use_backend("cpu", ops="padded_conv2d"):
        y = vqvae_fast.padded_conv2d(x, w, b, stride=2, padding=(0, 1, 0, 1))
    dy = torch.randn(y.shape, generator=g)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    exact = [t.detach().double().requires_grad_() for t in (x, w, b)]
    expected = R.padded_conv2d(*exact, stride=2, padding=(0, 1, 0, 1))
    expected_grads = torch.autograd.grad(expected, exact, dy.double())
    _assert_same_non_finite(y.detach(), expected)
    for i, (got, want) in enumerate(zip(grads, expected_grads)):
        _assert_same_non_finite(got, want, superset=pattern == "NaN weight" and i == 0)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["NaN", "+Inf", "-Inf"])
@pytest.mark.parametrize("shape", [(2, 8, 6, 6), (1, 8, 64, 65)], ids=["fused", "split"])
def test_group_norm_non_finite_forward_and_backward(fast_backend, value, shape):
    """Groups holding a NaN / Inf become NaN, others stay exact, forward and backward (the op test
    covers the fused forward)."""
    _, device = fast_backend
    g = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=g)
    x[0, 1, 3, 3] = value  # group 0 of sample 0
    w, b = torch.rand(8, generator=g) + 0.5, torch.randn(8, generator=g)
    leaves = [t.to(device).requires_grad_() for t in (x, w, b)]
    y = vqvae_fast.group_norm_silu(leaves[0], 4, leaves[1], leaves[2], eps=1e-6)
    dy = torch.randn(shape, generator=g).to(device)
    grads = torch.autograd.grad(y, leaves, dy)
    exact = [t.detach().double().cpu().requires_grad_() for t in leaves]
    expected = R.group_norm_silu(exact[0], 4, exact[1], exact[2], 1e-6)
    expected_grads = torch.autograd.grad(expected, exact, dy.double().cpu())
    for got, want in zip((y, *grads), (expected, *expected_grads)):
        _assert_same_non_finite(got.detach(), want)


# ----------------------------------------------------------------------------------------------
# Bit-identical reruns: no order-dependent reductions or atomics, on every backend


@pytest.fixture(params=["reference", "cpu", "triton"])
def any_backend(request):
    """``(backend, device)``: the reference and cpu backends on CPU, Triton in its interpreter or
    on the GPU (where the order of the argmin's atomics really varies)."""
    device = device_for_backend(request.param)
    with vqvae_fast.use_backend(request.param):
        yield request.param, device


def _twice(fn):
    runs = [fn(), fn()]
    for a, b in zip(*runs):
        assert a.dtype == b.dtype and torch.equal(a, b), "two runs differ"


def test_every_op_is_deterministic(any_backend):
    backend, device = any_backend
    g = torch.Generator().manual_seed(8)
    half = torch.float16 if backend == "triton" else torch.float32
    leaf = lambda t: t.to(device).requires_grad_()  # noqa: E731
    x = leaf(torch.randn(1, 8, 64, 65, generator=g))  # the split group norm path
    w, b = leaf(torch.rand(8, generator=g) + 0.5), leaf(torch.randn(8, generator=g))

    def group_norm():
        y = vqvae_fast.group_norm_silu(x, 4, w, b)
        return (y, *torch.autograd.grad(y.square().sum(), (x, w, b)))

    qkv = leaf(torch.randn(1, 48, 520, generator=g).to(half))  # 9 key blocks: split keys on the Triton path

    def attention():
        out = vqvae_fast.spatial_attention(*qkv.split(16, dim=1))
        return (out, *torch.autograd.grad(out.float().square().sum(), qkv))

    z, codebook = torch.randn(3, 16, 10, 10, generator=g).to(device), torch.randn(700, 16, generator=g).to(device)

    def argmin():  # Triton: codebook splits combined by atomic min
        ieee = vqvae_fast.codebook_argmin(z, codebook, "ieee", True)
        return (*ieee, *vqvae_fast.codebook_argmin(z, codebook, "fast", True))

    xc = leaf(torch.randn(2, 8, 9, 9, generator=g))
    wc, bc = leaf(torch.randn(8, 8, 3, 3, generator=g)), leaf(torch.randn(8, generator=g))

    def conv():
        y = vqvae_fast.padded_conv2d(xc, wc, bc, stride=2, padding=(0, 1, 0, 1))
        return (y, *torch.autograd.grad(y.square().sum(), (xc, wc, bc)))

    for fn in (group_norm, attention, argmin, conv):
        _twice(fn)
