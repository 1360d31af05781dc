"""padded_conv2d (the compiled extension's op) against F.pad + F.conv2d, and the fast Downsample.

The CPU tests run the extension's C++ implementation; the same tests run the CUDA implementation
when a GPU is present (``device`` fixture), plus the CUDA-only tests at the end that compare the
cuDNN and decomposed implementations (``VQVAE_FAST_PADDED_CONV2D_IMPL``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch
import torch.nn.functional as F

import vqvae_fast
from vqvae_fast import _extension, reference
from vqvae_fast.nn import Downsample

from helpers import assert_matches_reference

# Every test needs the compiled extension except the fallback test and the Python-side checks.
requires_extension = pytest.mark.skipif(
    _extension.status() is not None, reason=f"extension not available: {_extension.status()}"
)

PADDINGS = [(0, 1, 0, 1), (1, 1, 1, 1), (0, 0, 0, 0), (2, 0, 1, 3), (3, 2, 0, 1)]
STRIDES = [(2, 2), (1, 1), (1, 2)]
# odd and even, 1 to 67 (pairs that the padding makes too small for the kernel are skipped)
SIZES = [(1, 67), (2, 3), (5, 4), (8, 8), (13, 6), (67, 2), (33, 34)]


def backend_for(device: str) -> str:
    return "cuda" if device == "cuda" else "cpu"


def fast(x, weight, bias, stride, padding):
    """vqvae_fast.padded_conv2d with the extension's backend forced (never the reference)."""
    with vqvae_fast.use_backend(backend_for(x.device.type), ops="padded_conv2d"):
        return vqvae_fast.padded_conv2d(x, weight, bias, stride, padding)


def pad_conv(x, weight, bias, stride, padding):
    return F.conv2d(F.pad(x, tuple(padding)), weight, bias, stride=stride)


def fits(size, padding, kernel=(3, 3)):
    return size[0] + padding[2] + padding[3] >= kernel[0] and size[1] + padding[0] + padding[1] >= kernel[1]


@pytest.fixture
def no_tf32():
    """fp32 on CUDA compared at fp32 tolerances: no TF32 in cuDNN (the op honours the flag)."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield


# ----------------------------------------------------------------------------------------------
# Forward


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_matches_pad_then_conv(device, padding, stride, dtype, no_tf32):
    for H, W in SIZES:
        if not fits((H, W), padding):
            continue
        for with_bias in (True, False):
            x = torch.randn(2, 3, H, W, dtype=dtype, device=device)
            w = torch.randn(5, 3, 3, 3, dtype=dtype, device=device)  # C_out != C_in
            b = torch.randn(5, dtype=dtype, device=device) if with_bias else None
            y = fast(x, w, b, stride, padding)
            assert y.dtype == dtype and y.device == x.device
            assert_matches_reference(y, pad_conv, (x, w, b, stride, padding), dtype=dtype)


@requires_extension
@pytest.mark.parametrize("kernel", [(1, 1), (2, 3), (5, 5), (4, 1)])
@pytest.mark.parametrize("padding", [(0, 1, 0, 1), (2, 0, 1, 3), (0, 4, 4, 0)])
def test_other_kernel_sizes(device, kernel, padding, no_tf32):
    for H, W in [(1, 1), (6, 7), (9, 4)]:
        if not fits((H, W), padding, kernel):
            continue
        for stride in [(1, 1), (2, 2), (2, 1)]:
            x = torch.randn(2, 4, H, W, dtype=torch.float64, device=device)
            w = torch.randn(3, 4, *kernel, dtype=torch.float64, device=device)
            b = torch.randn(3, dtype=torch.float64, device=device)
            y = fast(x, w, b, stride, padding)
            torch.testing.assert_close(y, pad_conv(x, w, b, stride, padding))


@requires_extension
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "expanded"])
def test_layouts(device, layout, no_tf32):
    base = torch.randn(2, 6, 11, 14, dtype=torch.float64, device=device)
    if layout == "channels_last":
        x = base.to(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = base[:, 1:4, :, ::2]  # neither NCHW- nor NHWC-contiguous
    else:
        x = base[:1, :3].expand(3, 3, 11, 14)  # zero batch stride
    w = torch.randn(4, x.shape[1], 3, 3, dtype=torch.float64, device=device)
    b = torch.randn(4, dtype=torch.float64, device=device)
    y = fast(x, w, b, (2, 2), (0, 1, 0, 1))
    torch.testing.assert_close(y, pad_conv(x, w, b, (2, 2), (0, 1, 0, 1)))
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


@requires_extension
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_low_precision(device, dtype, channels_last):
    x = torch.randn(2, 16, 17, 12, device=device).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = (torch.randn(8, 16, 3, 3, device=device) * 0.2).to(dtype)
    b = torch.randn(8, device=device).to(dtype)
    for stride, padding in [((2, 2), (0, 1, 0, 1)), ((1, 1), (2, 0, 1, 3))]:
        y = fast(x, w, b, stride, padding)
        assert y.dtype == dtype
        assert_matches_reference(y, pad_conv, (x, w, b, stride, padding), dtype=dtype, atol=1e-2)


@requires_extension
def test_empty_inputs(device):
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    x = torch.randn(0, 3, 8, 8, device=device, requires_grad=True)
    y = fast(x, w, b, 2, (0, 1, 0, 1))
    assert y.shape == (0, 4, 4, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape and float(w.grad.abs().sum()) == 0.0
    # no input channels: every output is the bias
    x = torch.randn(2, 0, 8, 8, device=device)
    y = fast(x, torch.randn(4, 0, 3, 3, device=device), b.detach(), 2, (0, 1, 0, 1))
    torch.testing.assert_close(y, b.detach()[None, :, None, None].expand(2, 4, 4, 4))


@requires_extension
def test_inputs_are_not_modified(device):
    x = torch.randn(2, 3, 9, 8, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, device=device, dtype=torch.float64, requires_grad=True)
    copies = [t.detach().clone() for t in (x, w, b)]
    grad = torch.randn(2, 4, 4, 4, device=device, dtype=torch.float64)
    grad_copy = grad.clone()
    fast(x, w, b, 2, (0, 1, 0, 1)).backward(grad)
    for t, c in zip((x, w, b, grad), copies + [grad_copy]):
        assert torch.equal(t.detach(), c)


# ----------------------------------------------------------------------------------------------
# Backward


@requires_extension
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_gradients_match_pad_then_conv(device, padding, stride):
    for H, W in [(2, 3), (8, 8), (13, 6), (1, 67)]:
        if not fits((H, W), padding):
            continue
        for channels_last in (False, True):
            x = torch.randn(2, 3, H, W, dtype=torch.float64, device=device)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            w = torch.randn(5, 3, 3, 3, dtype=torch.float64, device=device)
            b = torch.randn(5, dtype=torch.float64, device=device)
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            y = fast(*leaves, stride, padding)
            grad = torch.randn_like(y)
            y.backward(grad)
            pad_conv(*ref_leaves, stride, padding).backward(grad)
            for name, got, want in zip(("x", "weight", "bias"), leaves, ref_leaves):
                torch.testing.assert_close(got.grad, want.grad, msg=lambda m: f"grad of {name}: {m}")
            if channels_last:
                assert leaves[0].grad.is_contiguous(memory_format=torch.channels_last)


@requires_extension
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, True), (False, False, True)])
def test_partial_gradients(device, needs):
    x, w, b = (torch.randn(s, dtype=torch.float64, device=device) for s in ((2, 3, 7, 6), (4, 3, 3, 3), (4,)))
    leaves = [t.clone().requires_grad_(n) for t, n in zip((x, w, b), needs)]
    ref_leaves = [t.clone().requires_grad_(n) for t, n in zip((x, w, b), needs)]
    fast(*leaves, 2, (0, 1, 0, 1)).square().sum().backward()
    pad_conv(*ref_leaves, 2, (0, 1, 0, 1)).square().sum().backward()
    for got, want, n in zip(leaves, ref_leaves, needs):
        assert (got.grad is not None) == n
        if n:
            torch.testing.assert_close(got.grad, want.grad)


@requires_extension
def test_gradcheck(device):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    for stride, padding in [((2, 2), (0, 1, 0, 1)), ((1, 2), (2, 0, 1, 3))]:
        assert torch.autograd.gradcheck(lambda *t: fast(*t, stride, padding), (x, w, b))


# ----------------------------------------------------------------------------------------------
# Registration: opcheck, torch.compile


@pytest.mark.parametrize(
    "stride, padding, with_bias, channels_last",
    [([2, 2], [0, 1, 0, 1], True, False), ([1, 2], [2, 0, 1, 3], False, True)],
)
@requires_extension
def test_opcheck(device, stride, padding, with_bias, channels_last):
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device)
    b = torch.randn(4, dtype=torch.float64, device=device) if with_bias else None
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_() if with_bias else None, stride, padding)
    torch.library.opcheck(torch.ops.vqvae_fast.padded_conv2d.default, args)
    grad = torch.randn_like(pad_conv(x, w, b, stride, padding))
    for mask in ([True, True, True], [False, True, False]):
        bargs = (grad, x.detach(), w.detach(), stride, padding, mask)
        torch.library.opcheck(torch.ops.vqvae_fast.padded_conv2d_backward.default, bargs)


@requires_extension
def test_compile_fullgraph(device):
    x = torch.randn(2, 3, 8, 9, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, requires_grad=True)

    def f(a, c):  # the automatic backend choice: the extension's on CPU and CUDA tensors
        return vqvae_fast.padded_conv2d(a, c, None, 2, (0, 1, 0, 1)).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    compiled(x, w).backward()
    got = [x.grad.clone(), w.grad.clone()]
    x.grad = w.grad = None
    f(x, w).backward()
    torch.testing.assert_close(got, [x.grad, w.grad])


def run_python(code: str, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=600
    )


@requires_extension
def test_compiled_first_call_loads_extension_without_graph_break():
    result = run_python(
        """
        import torch, vqvae_fast
        from vqvae_fast import _extension
        assert _extension._loaded is None
        f = torch.compile(lambda x, w: vqvae_fast.padded_conv2d(x, w, None, 2, (0, 1, 0, 1)),
                          fullgraph=True, backend="aot_eager")
        x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
        y = f(x, w)
        assert _extension._loaded
        torch.testing.assert_close(y, torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), w, stride=2))
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


# ----------------------------------------------------------------------------------------------
# Memory: no padded copy of the input (CPU)


def allocation_trace(fn) -> tuple[int, int]:
    """(peak bytes live, largest single allocation) of the CPU allocations made by fn()."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as handle:
            events = json.load(handle)["traceEvents"]
    memory = sorted(
        (float(e["ts"]), e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]"
    )
    live = peak = largest = 0
    for _, change in memory:
        live += change
        peak = max(peak, live)
        largest = max(largest, change)
    return peak, largest


@requires_extension
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_peak_memory_has_no_padded_copy(channels_last):
    x = torch.randn(2, 32, 64, 64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(32, 32, 3, 3)
    b = torch.randn(32)
    padded_bytes = 2 * 32 * 65 * 65 * 4
    fast(x, w, b, 2, (0, 1, 0, 1))  # warm-up: one-time allocations of the library
    ours_peak, ours_largest = allocation_trace(lambda: fast(x, w, b, 2, (0, 1, 0, 1)))
    ref_peak, ref_largest = allocation_trace(lambda: pad_conv(x, w, b, 2, (0, 1, 0, 1)))
    assert ref_largest >= padded_bytes, "the trace should see the reference's padded copy"
    assert ours_largest < padded_bytes, f"an allocation of {ours_largest} bytes >= the padded input"
    # the reference holds the padded input (and what the convolution needs); we hold at most an
    # output-sized intermediate (a quarter of the padded input here) instead
    assert ours_peak <= ref_peak - padded_bytes // 2, (ours_peak, ref_peak)


# ----------------------------------------------------------------------------------------------
# Downsample


@requires_extension
@pytest.mark.parametrize("with_conv", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_downsample_loads_reference_state_dict_and_matches(device, with_conv, dtype, no_tf32):
    ref = reference.Downsample(16, with_conv).to(device=device, dtype=dtype)
    block = Downsample(16, with_conv, device=device, dtype=dtype)
    assert list(block.state_dict()) == list(ref.state_dict())
    block.load_state_dict(ref.state_dict())
    for H, W in [(32, 32), (9, 14)]:
        x = torch.randn(2, 16, H, W, device=device, dtype=dtype)
        for inp in (x, x.to(memory_format=torch.channels_last)):
            y = block(inp)
            assert y.shape == (2, 16, H // 2, W // 2)
            torch.testing.assert_close(y, ref(inp))


@requires_extension
def test_downsample_from_reference_shares_parameters(device, no_tf32):
    ref = reference.Downsample(8, with_conv=True).to(device).double()
    block = Downsample.from_reference(ref)
    assert block.conv.weight is ref.conv.weight and block.conv.bias is ref.conv.bias
    assert dict(block.named_parameters()).keys() == dict(ref.named_parameters()).keys()
    x = torch.randn(2, 8, 10, 12, device=device, dtype=torch.float64)
    block(x).square().sum().backward()
    grads = [p.grad.clone() for p in ref.parameters()]
    ref.zero_grad()
    ref(x).square().sum().backward()
    torch.testing.assert_close(grads, [p.grad for p in ref.parameters()])
    pool = Downsample.from_reference(reference.Downsample(8, with_conv=False))
    assert not pool.with_conv and not list(pool.parameters())
    torch.testing.assert_close(pool(x), F.avg_pool2d(x, 2, 2))


@requires_extension
def test_downsample_uses_the_extension(device):
    block = Downsample(4, with_conv=True, device=device)
    x = torch.randn(1, 4, 8, 8, device=device)
    with vqvae_fast.use_backend("reference"):
        expected = block(x)
    with vqvae_fast.use_backend(backend_for(device), ops="padded_conv2d"):
        torch.testing.assert_close(block(x), expected)


# ----------------------------------------------------------------------------------------------
# Without the extension


def test_falls_back_to_reference_with_one_warning_when_extension_is_missing():
    result = run_python(
        """
        import sys, warnings
        sys.modules["vqvae_fast._C"] = None  # `import vqvae_fast._C` now fails as if not built
        import torch, torch.nn.functional as F
        import vqvae_fast
        from vqvae_fast.nn import Downsample
        x, w = torch.randn(2, 3, 8, 7), torch.randn(4, 3, 3, 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = vqvae_fast.padded_conv2d(x, w, None, 2, (0, 1, 0, 1))
            vqvae_fast.padded_conv2d(x, w, None, 2, (0, 1, 0, 1))
            Downsample(3, with_conv=True)(x)
        messages = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
        assert len(messages) == 1, messages
        assert "reference" in messages[0] and "vqvae_fast._C" in messages[0], messages[0]
        torch.testing.assert_close(y, F.conv2d(F.pad(x, (0, 1, 0, 1)), w, stride=2))
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_raises_clear_python_errors():
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="input channels"):
        vqvae_fast.padded_conv2d(x, torch.randn(4, 5, 3, 3), None, 2, (0, 1, 0, 1))
    with pytest.raises(ValueError, match=r"padding\[1\]"):
        vqvae_fast.padded_conv2d(x, w, None, 2, (0, -1, 0, 1))
    with pytest.raises(ValueError, match="stride"):
        vqvae_fast.padded_conv2d(x, w, None, 0, (0, 1, 0, 1))
    with pytest.raises(ValueError, match="padding"):
        vqvae_fast.padded_conv2d(x, w, None, 2, (0, 1, 0))
    with pytest.raises(TypeError, match="x must have dtype"):
        vqvae_fast.padded_conv2d(x.long(), w, None, 2, (0, 1, 0, 1))
    with pytest.raises(TypeError, match="weight has dtype"):
        vqvae_fast.padded_conv2d(x, w.double(), None, 2, (0, 1, 0, 1))
    with pytest.raises(ValueError, match="bias must have shape"):
        vqvae_fast.padded_conv2d(x, w, torch.randn(3), 2, (0, 1, 0, 1))
    with pytest.raises(ValueError, match="weight is on meta"):
        vqvae_fast.padded_conv2d(x, w.to("meta"), None, 2, (0, 1, 0, 1))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        vqvae_fast.padded_conv2d(torch.randn(1, 3, 1, 1), w, None, 1, (0, 1, 0, 1))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        vqvae_fast.padded_conv2d(torch.randn(3, 8, 8), w, None, 2, (0, 1, 0, 1))


@requires_extension
def test_bad_input_raises_clear_errors_from_the_op():
    op = torch.ops.vqvae_fast.padded_conv2d
    x, w = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    cases = [
        ((x, torch.randn(4, 5, 3, 3), None, [2, 2], [0, 1, 0, 1]), "weight expects 5 input channels"),
        ((x, w, None, [2, 2], [0, -1, 0, 1]), r"padding\[1\] = -1"),
        ((x, w, None, [2, 2], [0, 1, 0]), "padding must have 4 elements"),
        ((x, w, None, [0, 2], [0, 1, 0, 1]), "stride must be >= 1"),
        ((x.long(), w.long(), None, [2, 2], [0, 1, 0, 1]), "x must have dtype"),
        ((x, w.double(), None, [2, 2], [0, 1, 0, 1]), "weight has dtype"),
        ((x, w, torch.randn(3), [2, 2], [0, 1, 0, 1]), "bias must have shape"),
        ((x, w, torch.randn(4).double(), [2, 2], [0, 1, 0, 1]), "bias has dtype"),
        ((x[0], w, None, [2, 2], [0, 1, 0, 1]), "x must be 4-D"),
        ((torch.randn(1, 3, 1, 1), w, None, [1, 1], [0, 1, 0, 1]), "smaller than the kernel"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            op(*args)
    backward = torch.ops.vqvae_fast.padded_conv2d_backward
    with pytest.raises(RuntimeError, match="grad_output must have the output's shape"):
        backward(torch.randn(1, 4, 3, 4), x, w, [2, 2], [0, 1, 0, 1], [True, True, True])
    with pytest.raises(RuntimeError, match="grad_output has dtype"):
        backward(torch.randn(1, 4, 4, 4).double(), x, w, [2, 2], [0, 1, 0, 1], [True, True, True])


@requires_extension
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_errors():
    x, w = torch.randn(1, 3, 8, 8, device="cuda"), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="weight is on cpu"):
        vqvae_fast.padded_conv2d(x, w, None, 2, (0, 1, 0, 1))
    with pytest.raises(RuntimeError, match="weight is on cpu"):
        torch.ops.vqvae_fast.padded_conv2d(x, w, None, [2, 2], [0, 1, 0, 1])


# ----------------------------------------------------------------------------------------------
# CUDA only: both implementations, TF32


cuda_only = pytest.mark.skipif(
    not torch.cuda.is_available() or _extension.status(need_cuda=True) is not None,
    reason="needs a CUDA device and the extension's CUDA part",
)


@requires_extension
@cuda_only
@pytest.mark.parametrize("impl", ["cudnn", "decomposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_implementations(monkeypatch, impl, dtype, channels_last, no_tf32):
    monkeypatch.setenv("VQVAE_FAST_PADDED_CONV2D_IMPL", impl)
    for shape, stride, padding in [
        ((2, 32, 32, 32), (2, 2), (0, 1, 0, 1)),
        ((2, 32, 33, 17), (2, 2), (0, 1, 0, 1)),
        ((1, 16, 9, 12), (1, 2), (2, 0, 1, 3)),
    ]:
        x = torch.randn(shape, device="cuda").to(dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        w = (torch.randn(24, shape[1], 3, 3, device="cuda") * 0.1).to(dtype)
        b = torch.randn(24, device="cuda").to(dtype)
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        y = fast(*leaves, stride, padding)
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert_matches_reference(y, pad_conv, (x, w, b, stride, padding), dtype=dtype, atol=1e-2)
        grad = torch.randn_like(y)
        y.backward(grad)

        def grads(x, w, b, grad):
            leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
            pad_conv(*leaves, stride, padding).backward(grad)
            return tuple(t.grad for t in leaves)

        assert_matches_reference(
            tuple(t.grad for t in leaves), grads, (x, w, b, grad), dtype=dtype, atol=1e-2
        )


@requires_extension
@cuda_only
@pytest.mark.parametrize("impl", ["cudnn", "decomposed"])
def test_cuda_fp32_honours_allow_tf32(monkeypatch, impl):
    monkeypatch.setenv("VQVAE_FAST_PADDED_CONV2D_IMPL", impl)
    x = torch.randn(4, 64, 32, 32, device="cuda")
    w = torch.randn(64, 64, 3, 3, device="cuda")
    expected = pad_conv(x.double(), w.double(), None, (2, 2), (0, 1, 0, 1))
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        exact = fast(x, w, None, 2, (0, 1, 0, 1))
    # without TF32 the error is fp32 rounding over 576 products, far below TF32's 10-bit mantissa
    scale = float(expected.abs().max())
    assert float((exact.double() - expected).abs().max()) < 1e-5 * scale
