"""Property-based tests: random shapes, dtypes, layouts, strides and scales, fast path vs reference.

For each op, hypothesis draws a problem -- sizes including 1 and odd ones, every dtype the path
takes, NCHW / channels_last / channel slices / strided and transposed views, input magnitudes
and scalar arguments -- and runs the fast paths on CPU tensors: the Triton kernels through the
interpreter (``use_backend("triton")``, ``TRITON_INTERPRET=1``) and the cpu backends (the C++
extension for ``padded_conv2d``). Results are compared with the fp64 reference at docs/testing.md's
tolerances (``helpers.assert_matches_reference``; for argmin, the rule on the chosen
code's distance and on clear winners), forward and backward.

Runs are bounded and reproducible: few examples per op (the interpreter is slow), no deadline,
``derandomize=True`` (the examples are a fixed function of the test) and no example database;
a failure prints the falsifying example and a ``@reproduce_failure`` blob. A deeper, random
search: ``VQVAE_FAST_PROPERTY_EXAMPLES=10 pytest tests/test_robustness_properties.py``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import vqvae_fast  # noqa: E402
from vqvae_fast import _backend  # noqa: E402
from vqvae_fast.reference import ops as R  # noqa: E402

from helpers import assert_matches_reference  # noqa: E402
from test_robustness_numerics import assert_argmin_rule, assert_as_accurate_as_pytorch  # noqa: E402

HALF = (torch.float16, torch.bfloat16)
# the Triton interpreter emits numpy warnings for what masked lanes compute
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")


def assert_close_to_reference(actual, reference, args, dtype):
    """docs/testing.md's tolerances. In fp16 / bf16 the atol is one rounding of the output
    (a fast path keeping more in fp32 still rounds its outputs, and a backward reads the rounded
    forward output, as flash attention's Delta does). In fp32 / fp64 a random draw can be
    ill-conditioned (a group of two nearly equal values: its gradient is a cancellation times
    rstd), so there the result may instead be within 2x the error of the reference's own run."""
    try:
        atol = torch.finfo(dtype).eps if dtype in HALF else 1e-4
        assert_matches_reference(actual, reference, args, dtype=dtype, atol=atol)
    except AssertionError:
        if dtype in HALF:
            raise
        assert_as_accurate_as_pytorch(actual, reference, args, dtype, atol=1e-5)


#: ``VQVAE_FAST_PROPERTY_EXAMPLES=k`` runs k times as many examples, freshly random each run (a
#: deeper search by hand; failures still print their reproduction blob). Unset: the CI budget,
#: the same examples every run.
_DEEPER = float(os.environ.get("VQVAE_FAST_PROPERTY_EXAMPLES", "0") or 0)


def bounded(max_examples: int):
    return settings(
        max_examples=int(max_examples * _DEEPER) if _DEEPER else max_examples, deadline=None,
        derandomize=not _DEEPER, database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def _triton_available() -> bool:
    return _backend.triton_status() is None and _backend.triton_interpreting()


BACKENDS = [pytest.param("triton", marks=pytest.mark.skipif(not _triton_available(),
                                                           reason="Triton on CPU tensors needs its interpreter")),
            "cpu"]


# ----------------------------------------------------------------------------------------------
# Layouts: the same values, laid out in memory in different ways


def laid_out(values: torch.Tensor, layout: str) -> torch.Tensor:
    """``values`` (contiguous, >= 2-D) as a tensor of the same shape with the given layout.

    ``contiguous``; ``channels_last`` (4-D / 5-D); ``channel_slice``: dim 1 of a wider tensor;
    ``strided``: every other element of a twice-as-long last dim; ``transposed``: stored with its
    last two dims swapped (a transposed view).
    """
    if layout == "channels_last" and values.dim() in (4, 5):
        fmt = torch.channels_last if values.dim() == 4 else torch.channels_last_3d
        return values.contiguous(memory_format=fmt)
    if layout == "channel_slice":
        wide = torch.zeros(values.shape[0], values.shape[1] + 3, *values.shape[2:], dtype=values.dtype)
        wide[:, 2:2 + values.shape[1]] = values
        return wide[:, 2:2 + values.shape[1]]
    if layout == "strided":
        wide = torch.zeros(*values.shape[:-1], 2 * values.shape[-1], dtype=values.dtype)
        wide[..., ::2] = values
        return wide[..., ::2]
    if layout == "transposed":
        return values.transpose(-1, -2).contiguous().transpose(-1, -2)
    return values


LAYOUTS = st.sampled_from(["contiguous", "channels_last", "channel_slice", "strided", "transposed"])


def values(shape, dtype, scale: float, offset: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)


def grads_of(fn, args, dy):
    """``(output, *grads of the tensor args)`` of ``fn(*args)`` against ``dy``; ``None`` args are
    passed through. The args are detached views, so their layouts reach ``fn`` unchanged."""
    args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    out = fn(*args)
    inputs = [a for a in args if isinstance(a, torch.Tensor)]
    return (out.detach(), *torch.autograd.grad(out, inputs, dy))


# ----------------------------------------------------------------------------------------------
# group_norm_silu


@st.composite
def group_norm_problems(draw, backend):
    groups = draw(st.sampled_from([1, 2, 4]))
    channels = groups * draw(st.integers(1, 4))
    spatial = draw(st.lists(st.integers(1, 7), min_size=0, max_size=3))
    # F.group_norm (the reference) refuses groups of one value (the op gives silu(bias) there)
    hypothesis.assume(channels // groups * math.prod(spatial) > 1)
    shape = (draw(st.integers(1, 3)), channels, *spatial)
    dtypes = [torch.float32, *HALF] + ([torch.float64] if backend == "cpu" else [])
    dtype = draw(st.sampled_from(dtypes))
    layout = draw(LAYOUTS)
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    offset = draw(st.sampled_from([0.0, 1.0, -10.0])) * scale * 10
    x = laid_out(values(shape, dtype, scale, offset, seed=draw(st.integers(0, 99))), layout)
    param_dtype = draw(st.sampled_from([dtype, torch.float32])) if dtype in HALF else dtype
    weight = (torch.rand(channels, dtype=torch.float64) + 0.5).to(param_dtype) if draw(st.booleans()) else None
    bias = values((channels,), param_dtype, 0.5, seed=1) if draw(st.booleans()) else None
    eps = draw(st.sampled_from([1e-6, 1e-5, 0.1]))
    activation = draw(st.sampled_from(["silu", None]))
    return x, groups, weight, bias, eps, activation


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
@bounded(40)
def test_group_norm_silu_property(backend, data):
    x, groups, weight, bias, eps, activation = data.draw(group_norm_problems(backend))
    dy = values(x.shape, x.dtype, 1.0, seed=7)
    with vqvae_fast.use_backend(backend):
        fast = grads_of(lambda *a: vqvae_fast.group_norm_silu(a[0], groups, *a[1:], eps=eps, activation=activation),
                        [x, weight, bias], dy)
    assert fast[0].dtype == x.dtype and fast[0].shape == x.shape

    def reference(x_, w_, b_, dy_):
        return grads_of(lambda *a: R.group_norm_silu(a[0], groups, *a[1:], eps, activation), [x_, w_, b_], dy_)

    assert_close_to_reference(list(fast), reference, [x, weight, bias, dy], x.dtype)


@st.composite
def split_path_choices(draw):
    return dict(path="split", chunk_tiles=draw(st.integers(1, 3)))


@pytest.mark.skipif(not _triton_available(), reason="Triton on CPU tensors needs its interpreter")
@given(data=st.data())
@bounded(25)
def test_group_norm_split_path_property(data):
    """The split kernels (many programs per group) with the table's tiles and short chunks."""
    from vqvae_fast.kernels import group_norm_silu as K

    x, groups, weight, bias, eps, activation = data.draw(group_norm_problems("triton"))
    choices = data.draw(split_path_choices())
    silu = activation == "silu"
    y, mean, rstd = K.forward(x, groups, weight, bias, eps, silu, **choices)
    dy = values(x.shape, x.dtype, 1.0, seed=8)
    dx, dw, db = K.backward(dy, x, mean, rstd, weight, bias, groups, silu, **choices)
    got = [y, dx] + [g for g in (dw, db) if g is not None]

    def reference(x_, w_, b_, dy_):
        out = grads_of(lambda *a: R.group_norm_silu(a[0], groups, *a[1:], eps, activation), [x_, w_, b_], dy_)
        return list(out)

    assert_close_to_reference(got, reference, [x, weight, bias, dy], x.dtype)


# ----------------------------------------------------------------------------------------------
# spatial_attention


@st.composite
def attention_problems(draw, backend):
    batch = draw(st.integers(1, 2))
    channels = draw(st.sampled_from([1, 3, 8, 16, 24, 40]))
    four_d = draw(st.booleans())
    positions = (draw(st.integers(1, 6)), draw(st.integers(1, 6))) if four_d else (draw(st.integers(1, 40)),)
    dtypes = list(HALF) if backend == "triton" else [torch.float32, torch.float64, *HALF]
    dtype = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "fused", "strided", "transposed"]))
    scale = draw(st.sampled_from([0.3, 1.0, 2.0]))
    shape = (batch, channels, *positions)
    seed = draw(st.integers(0, 99))
    if layout == "fused":  # q, k, v: channel slices of one (B, 3C, ...) projection
        fused = values((batch, 3 * channels, *positions), dtype, scale, seed=seed)
        if draw(st.booleans()):  # ... stored channels-innermost
            fused = fused.movedim(1, -1).contiguous().movedim(-1, 1)
        q, k, v = fused.split(channels, dim=1)
    else:
        q, k, v = (laid_out(values(shape, dtype, scale, seed=seed + i), layout if four_d or layout != "channels_last"
                            else "transposed") for i in range(3))
    softmax_scale = draw(st.sampled_from([None, 0.05, 1.0]))
    return q, k, v, softmax_scale


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
@bounded(50)
def test_spatial_attention_property(backend, data):
    q, k, v, scale = data.draw(attention_problems(backend))
    dy = values(q.shape, q.dtype, 1.0, seed=9)
    with vqvae_fast.use_backend(backend):
        fast = grads_of(lambda *a: vqvae_fast.spatial_attention(*a, scale=scale), [q, k, v], dy)
    assert fast[0].shape == q.shape and fast[0].dtype == q.dtype

    def reference(q_, k_, v_, dy_):
        return grads_of(lambda *a: R.spatial_attention(*a, scale=scale), [q_, k_, v_], dy_)

    assert_close_to_reference(fast[:1] + fast[3:], lambda *a: [reference(*a)[i] for i in (0, 3)],
                              [q, k, v, dy], q.dtype)  # out, dv
    if q.dtype not in HALF:
        assert_close_to_reference(list(fast[1:3]), lambda *a: reference(*a)[1:3], [q, k, v, dy], q.dtype)
        return
    # dq, dk in 16 bits: the backward reads Delta_i = sum_c out_ci dO_ci from the rounded output,
    # as flash attention does, and the Triton forward's out also carries the rounding of the
    # 16-bit probabilities it multiplies v by; where the softmax is sharp the exact dS nearly
    # cancels and what is left is that error: |dDelta_i| <= eps max|v| sum_c |dO_ci|, hence
    # dq <= s max|k| |dDelta|, dk <= s max|q| |dDelta| sum_i P_ij. PyTorch's own 16-bit
    # backward uses one rounded P throughout and can be far more accurate there (reported).
    eps = torch.finfo(q.dtype).eps
    q64, k64, v64, dy64 = (t.double().flatten(2) for t in (q, k, v, dy))
    s = scale if scale is not None else q.shape[1] ** -0.5
    probs = torch.softmax(s * q64.transpose(1, 2) @ k64, dim=2)  # (B, N, N)
    d_delta = eps * v64.abs().amax() * dy64.abs().sum(1).amax()
    allowance = [s * k64.abs().amax() * d_delta, s * q64.abs().amax() * d_delta * probs.sum(1).amax()]
    expected = reference(*(t.double() for t in (q, k, v, dy)))
    same_dtype = reference(q, k, v, dy)
    for name, got, want, base, extra in zip(("dq", "dk"), fast[1:3], expected[1:3], same_dtype[1:3], allowance):
        err, base_err = (got.double() - want).abs().max(), (base.double() - want).abs().max()
        bound = 2 * base_err + 2 * eps * max(float(want.abs().max()), 1.0) + extra
        assert err <= bound, f"{name}: error {float(err):.3e} exceeds {float(bound):.3e} (Delta allowance {float(extra):.3e})"


# ----------------------------------------------------------------------------------------------
# codebook_argmin


@st.composite
def argmin_problems(draw):
    code_dim = draw(st.integers(1, 40))
    if draw(st.booleans()):
        z_values = values((draw(st.integers(0, 60)), code_dim), torch.float64, 1.0, seed=draw(st.integers(0, 99)))
        layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    else:
        shape = (draw(st.integers(0, 3)), code_dim, draw(st.integers(0, 6)), draw(st.integers(1, 6)))
        z_values = values(shape, torch.float64, 1.0, seed=draw(st.integers(0, 99)))
        layout = draw(LAYOUTS)
    scale = draw(st.sampled_from([1e-2, 1.0, 50.0]))
    z_dtype = draw(st.sampled_from([torch.float32, *HALF]))
    e_dtype = draw(st.sampled_from([z_dtype, torch.float32, *HALF]))
    z = laid_out((z_values * scale).to(z_dtype), layout)
    codebook = values((draw(st.integers(1, 300)), code_dim), torch.float64, scale, seed=3).to(e_dtype)
    if draw(st.booleans()):
        codebook = codebook.t().contiguous().t()  # codes as columns: the launcher copies them to rows
    if draw(st.booleans()) and codebook.shape[0] > 2:  # a few exact duplicates
        codebook[-1] = codebook[0]
    return z, codebook, draw(st.sampled_from(["ieee", "fast"]))


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
@bounded(80)
def test_codebook_argmin_property(backend, data):
    z, codebook, precision = data.draw(argmin_problems())
    with vqvae_fast.use_backend(backend):
        indices, distances = vqvae_fast.codebook_argmin(z, codebook, precision, return_distance=True)
        only = vqvae_fast.codebook_argmin(z, codebook, precision)
    expected_shape = (z.shape[0],) if z.dim() == 2 else (z.shape[0], z.shape[2], z.shape[3])
    assert indices.shape == expected_shape and indices.dtype == torch.int64 and torch.equal(only, indices)
    assert distances.dtype == torch.float32
    assert_argmin_rule(z, codebook, indices, distances)


# ----------------------------------------------------------------------------------------------
# padded_conv2d (the C++ extension on CPU)


@st.composite
def conv_problems(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    padding = tuple(draw(st.integers(0, 3)) for _ in range(4))  # left, right, top, bottom
    left, right, top, bottom = padding
    height = draw(st.integers(max(1, kernel[0] - top - bottom), 9))
    width = draw(st.integers(max(1, kernel[1] - left - right), 9))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    c_in, c_out = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, *HALF]))
    x = laid_out(values((draw(st.integers(1, 2)), c_in, height, width), dtype, 1.0, seed=draw(st.integers(0, 99))),
                 draw(st.sampled_from(["contiguous", "channels_last", "channel_slice", "strided"])))
    weight = laid_out(values((c_out, c_in, *kernel), dtype, 0.3, seed=4),
                      draw(st.sampled_from(["contiguous", "channels_last"])))
    bias = values((c_out,), dtype, 0.5, seed=5) if draw(st.booleans()) else None
    stride_arg = stride if stride[0] != stride[1] or draw(st.booleans()) else stride[0]
    return x, weight, bias, stride_arg, padding


def stride_pair(stride):
    return (stride, stride) if isinstance(stride, int) else stride


@given(data=st.data())
@bounded(80)
def test_padded_conv2d_property(data):
    from vqvae_fast import _extension

    if _extension.status() is not None:
        pytest.skip(_extension.status())
    x, weight, bias, stride, padding = data.draw(conv_problems())
    left, right, top, bottom = padding
    out_shape = (x.shape[0], weight.shape[0], (x.shape[2] + top + bottom - weight.shape[2]) // stride_pair(stride)[0] + 1,
                 (x.shape[3] + left + right - weight.shape[3]) // stride_pair(stride)[1] + 1)
    dy = values(out_shape, x.dtype, 1.0, seed=6)
    with vqvae_fast.use_backend("cpu", ops="padded_conv2d"):
        fast = grads_of(lambda *a: vqvae_fast.padded_conv2d(*a, stride=stride, padding=padding), [x, weight, bias], dy)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert fast[0].shape == out_shape
    assert fast[0].is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def reference(x_, w_, b_, dy_):
        return grads_of(lambda *a: R.padded_conv2d(*a, stride=stride, padding=padding), [x_, w_, b_], dy_)

    assert_close_to_reference(list(fast), reference, [x, weight, bias, dy], x.dtype)
