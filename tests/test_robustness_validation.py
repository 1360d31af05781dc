"""Bad inputs, empty inputs and input preservation across every public op, module and model.

* The table: for every public op (``vqvae_fast.group_norm_silu``, ``spatial_attention``,
  ``codebook_argmin``, ``padded_conv2d``), module (``vqvae_fast.nn``) and model (``VQModel``,
  ``Encoder``, ``Decoder``, ``AutoencoderKL``), each bad input -- not a tensor, integer, complex
  and bool dtypes, wrong rank, wrong channels or shapes that disagree, ``C % G``, tensors on
  another device (``meta`` stands in for a GPU), dtypes that disagree, scalars of the wrong kind,
  gradients asked of a non-differentiable op -- raises a ``TypeError`` or ``ValueError`` whose
  message names the argument.
* Empty inputs (a zero batch, zero positions) give empty results of the right shape, dtype and
  gradient on every backend that runs on CPU tensors (Triton through its interpreter).
* Nothing the caller passes is modified -- inputs, parameters, buffers -- forward or backward,
  and no output shares memory with an input.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re

import pytest
import torch
from torch import nn

import vqvae_fast
import vqvae_fast.nn as fast_nn
from vqvae_fast.reference import blocks as ref_blocks

from helpers import device_for_backend

# ----------------------------------------------------------------------------------------------
# Small modules and models


def ddconfig(**overrides):
    cfg = dict(ch=32, out_ch=3, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0,
               in_channels=3, resolution=8, z_channels=4, double_z=False)
    cfg.update(overrides)
    return cfg


@functools.lru_cache(maxsize=None)
def module(name: str) -> nn.Module:
    """One instance per kind, built once (``eval``: dropout off)."""
    torch.manual_seed(0)
    make = {
        "GroupNormSiLU": lambda: fast_nn.GroupNormSiLU(8, 32, eps=1e-6),
        "AttnBlock": lambda: fast_nn.AttnBlock(32),
        "VectorQuantizer": lambda: fast_nn.VectorQuantizer(16, 4, beta=0.25),
        "Downsample": lambda: fast_nn.Downsample(32, with_conv=True),
        "Downsample (pool)": lambda: fast_nn.Downsample(32, with_conv=False),
        "ResnetBlock": lambda: fast_nn.ResnetBlock(in_channels=32, out_channels=64, temb_channels=0),
        "Upsample": lambda: fast_nn.Upsample(32, with_conv=True),
        "Upsample (no conv)": lambda: fast_nn.Upsample(32, with_conv=False),
        "Encoder": lambda: vqvae_fast.Encoder(**ddconfig()),
        "Decoder": lambda: vqvae_fast.Decoder(**ddconfig()),
        "VQModel": lambda: vqvae_fast.VQModel(ddconfig(), n_embed=16, embed_dim=4),
        "AutoencoderKL": lambda: vqvae_fast.AutoencoderKL(ddconfig(double_z=True), embed_dim=4),
    }[name]
    return make().eval()


def x32():
    return torch.randn(2, 32, 4, 4)


def image():
    return torch.randn(2, 3, 8, 8)


def latent():
    return torch.randn(2, 4, 4, 4)


# ----------------------------------------------------------------------------------------------
# The table of bad inputs: (label, call, exception type, argument the message must name)

W32 = lambda: torch.ones(32)  # noqa: E731


def gn(x=None, num_groups=8, weight="default", bias="default", **kwargs):
    x = x32() if x is None else x
    weight = W32() if isinstance(weight, str) else weight
    bias = torch.zeros(32) if isinstance(bias, str) else bias
    return vqvae_fast.group_norm_silu(x, num_groups, weight, bias, **kwargs)


def attn(q=None, k=None, v=None, **kwargs):
    q = torch.randn(2, 16, 10) if q is None else q
    return vqvae_fast.spatial_attention(q, torch.randn(2, 16, 10) if k is None else k,
                                        torch.randn(2, 16, 10) if v is None else v, **kwargs)


def argmin(z=None, codebook=None, **kwargs):
    return vqvae_fast.codebook_argmin(torch.randn(2, 8, 3, 3) if z is None else z,
                                      torch.randn(20, 8) if codebook is None else codebook, **kwargs)


def conv(x=None, weight=None, bias="default", **kwargs):
    x = torch.randn(2, 4, 7, 7) if x is None else x
    weight = torch.randn(6, 4, 3, 3) if weight is None else weight
    bias = torch.randn(6) if isinstance(bias, str) else bias
    return vqvae_fast.padded_conv2d(x, weight, bias, **{"stride": 2, "padding": (0, 1, 0, 1), **kwargs})


def kinds_of_wrong_tensor(good, call, name, *, meta=True, rank=True):
    """The bad inputs every tensor argument gets: ``good()`` made wrong in each way."""
    yield f"{name} not a tensor", lambda: call(good().tolist()), TypeError, name
    yield f"{name} int64", lambda: call(good().long()), TypeError, name
    yield f"{name} complex64", lambda: call(good().to(torch.complex64)), TypeError, name
    yield f"{name} bool", lambda: call(good() > 0), TypeError, name
    if rank:
        yield f"{name} one dimension short", lambda: call(good()[0]), ValueError, name
    if meta:
        yield f"{name} on another device", lambda: call(good().to("meta")), ValueError, name


def op_cases():
    # group_norm_silu
    yield from kinds_of_wrong_tensor(x32, lambda x: gn(x), "x")
    yield from kinds_of_wrong_tensor(W32, lambda w: gn(weight=w), "weight")
    yield from kinds_of_wrong_tensor(W32, lambda b: gn(bias=b), "bias", rank=False)
    yield "x channels not divisible by num_groups", lambda: gn(num_groups=3), ValueError, "num_groups"
    yield "num_groups zero", lambda: gn(num_groups=0), ValueError, "num_groups"
    yield "num_groups float", lambda: gn(num_groups=8.0), TypeError, "num_groups"
    yield ("num_groups bool",
           lambda: gn(torch.randn(2, 1, 3), num_groups=True, weight=None, bias=None), TypeError, "num_groups")
    yield "weight of the wrong length", lambda: gn(weight=torch.ones(16)), ValueError, "weight"
    yield "weight float64 with float32 x", lambda: gn(weight=W32().double()), TypeError, "weight"
    yield ("bias float16 with float32 weight",
           lambda: gn(x32().half(), weight=W32(), bias=W32().half()), TypeError, "bias")
    yield "eps negative", lambda: gn(eps=-1e-6), ValueError, "eps"
    yield "eps NaN", lambda: gn(eps=float("nan")), ValueError, "eps"
    yield "eps a tensor", lambda: gn(eps=torch.tensor(1e-6)), TypeError, "eps"
    yield "activation unknown", lambda: gn(activation="gelu"), ValueError, "activation"
    # spatial_attention
    q = lambda: torch.randn(2, 16, 10)  # noqa: E731
    yield from kinds_of_wrong_tensor(q, lambda t: attn(q=t), "q")
    yield from kinds_of_wrong_tensor(q, lambda t: attn(k=t), "k")
    yield from kinds_of_wrong_tensor(q, lambda t: attn(v=t), "v")
    yield "k of another shape", lambda: attn(k=torch.randn(2, 16, 11)), ValueError, "k"
    yield "v of another batch", lambda: attn(v=torch.randn(3, 16, 10)), ValueError, "v"
    yield "k float16 with float32 q", lambda: attn(k=q().half()), TypeError, "k"
    yield "q of 5 dimensions", lambda: attn(*(torch.randn(2, 16, 2, 2, 2) for _ in range(3))), ValueError, "q"
    yield "no channels", lambda: attn(*(torch.randn(2, 0, 10) for _ in range(3))), ValueError, "q"
    yield "scale zero", lambda: attn(scale=0.0), ValueError, "scale"
    yield "scale infinite", lambda: attn(scale=float("inf")), ValueError, "scale"
    yield "scale NaN", lambda: attn(scale=float("nan")), ValueError, "scale"
    yield "scale a string", lambda: attn(scale="0.1"), TypeError, "scale"
    # codebook_argmin
    z = lambda: torch.randn(2, 8, 3, 3)  # noqa: E731
    e = lambda: torch.randn(20, 8)  # noqa: E731
    yield from kinds_of_wrong_tensor(z, lambda t: argmin(z=t), "z")
    yield from kinds_of_wrong_tensor(e, lambda t: argmin(codebook=t), "codebook")
    yield "z of 3 dimensions", lambda: argmin(z=torch.randn(2, 8, 3)), ValueError, "z"
    yield "codebook of another code size", lambda: argmin(codebook=torch.randn(20, 7)), ValueError, "codebook"
    yield "codebook without codes", lambda: argmin(codebook=torch.randn(0, 8)), ValueError, "codebook"
    yield "z without code dimension", lambda: argmin(z=torch.randn(4, 0), codebook=torch.randn(3, 0)), ValueError, "z"
    yield "z requires grad", lambda: argmin(z=z().requires_grad_()), ValueError, "z"
    yield "codebook requires grad", lambda: argmin(codebook=e().requires_grad_()), ValueError, "codebook"
    yield "precision unknown", lambda: argmin(precision="tf32"), ValueError, "precision"
    yield "return_distance an int", lambda: argmin(return_distance=1), TypeError, "return_distance"
    # padded_conv2d
    x4 = lambda: torch.randn(2, 4, 7, 7)  # noqa: E731
    w4 = lambda: torch.randn(6, 4, 3, 3)  # noqa: E731
    yield from kinds_of_wrong_tensor(x4, lambda t: conv(x=t), "x")
    yield from kinds_of_wrong_tensor(w4, lambda t: conv(weight=t), "weight")
    yield from kinds_of_wrong_tensor(lambda: torch.randn(6), lambda t: conv(bias=t), "bias", rank=False)
    yield "weight for other input channels", lambda: conv(weight=torch.randn(6, 5, 3, 3)), ValueError, "weight"
    yield "weight without a kernel", lambda: conv(weight=torch.randn(6, 4, 0, 3)), ValueError, "weight"
    yield "bias of the wrong length", lambda: conv(bias=torch.randn(5)), ValueError, "bias"
    yield "weight float64 with float32 x", lambda: conv(weight=w4().double()), TypeError, "weight"
    yield "bias float16 with float32 x", lambda: conv(bias=torch.randn(6).half()), TypeError, "bias"
    yield "stride zero", lambda: conv(stride=0), ValueError, "stride"
    yield "stride of three", lambda: conv(stride=(1, 2, 1)), ValueError, "stride"
    yield "stride a float", lambda: conv(stride=2.0), ValueError, "stride"
    yield "padding negative", lambda: conv(padding=(0, -1, 0, 1)), ValueError, "padding"
    yield "padding of two", lambda: conv(padding=(1, 1)), ValueError, "padding"
    yield "kernel larger than the padded input", lambda: conv(x=torch.randn(2, 4, 1, 1)), ValueError, "x"


def module_cases():
    for name, good, arg in [("GroupNormSiLU", x32, "x"), ("AttnBlock", x32, "x"), ("VectorQuantizer", latent, "z"),
                            ("Downsample", x32, "x"), ("Downsample (pool)", x32, "x"), ("ResnetBlock", x32, "x"),
                            ("Upsample", x32, "x"), ("Upsample (no conv)", x32, "x"), ("Encoder", image, "x"),
                            ("Decoder", latent, "z")]:
        call = lambda t, name=name: module(name)(t)  # noqa: E731
        has_params = name not in ("Downsample (pool)", "Upsample (no conv)")
        for label, thunk, error, names in kinds_of_wrong_tensor(good, call, arg, meta=has_params):
            yield f"{name}: {label}", thunk, error, names
        wrong = lambda good=good: torch.randn(good().shape[0], good().shape[1] + 1, *good().shape[2:])  # noqa: E731
        if has_params:
            yield f"{name}: {arg} with other channels", lambda call=call, wrong=wrong: call(wrong()), ValueError, arg
        if has_params and name != "VectorQuantizer":  # the quantizer computes in the promoted dtype
            double = lambda call=call, good=good: call(good().double())  # noqa: E731
            yield f"{name}: {arg} float64, parameters float32", double, TypeError, arg
    yield ("Encoder: x not divisible by the downsampling",
           lambda: module("Encoder")(torch.randn(2, 3, 7, 7)), ValueError, "x")
    yield ("ResnetBlock: temb without temb_proj",
           lambda: module("ResnetBlock")(x32(), torch.randn(2, 8)), ValueError, "temb")
    yield "VectorQuantizer: temp", lambda: module("VectorQuantizer")(latent(), temp=0.5), ValueError, "temp"
    yield "GroupNormSiLU: channels not divisible", lambda: fast_nn.GroupNormSiLU(3, 32), ValueError, "num_groups"
    for model_name, x_name in (("VQModel", "x|input"), ("AutoencoderKL", "x|input")):
        model = lambda model_name=model_name: module(model_name)  # noqa: E731
        for label, thunk, error, names in kinds_of_wrong_tensor(image, lambda t, model=model: model()(t), "x"):
            yield f"{model_name}: {label}", thunk, error, x_name
        yield (f"{model_name}: image of other channels",
               lambda model=model: model()(torch.randn(2, 4, 8, 8)), ValueError, x_name)
        yield f"{model_name}: image float64", lambda model=model: model()(image().double()), TypeError, x_name
    vq = lambda: module("VQModel")  # noqa: E731
    yield "VQModel.decode: quant of other channels", lambda: vq().decode(torch.randn(2, 5, 4, 4)), ValueError, "quant"
    yield "VQModel.decode: quant on another device", lambda: vq().decode(latent().to("meta")), ValueError, "quant"
    yield "VQModel.decode_code: float codes", lambda: vq().decode_code(torch.zeros(2, 4, 4)), TypeError, "code_b"
    yield ("VQModel.decode_code: codes out of range",
           lambda: vq().decode_code(torch.full((2, 4, 4), 99)), ValueError, "code_b|indices")
    yield ("VQModel.decode_code: flat codes without shape",
           lambda: vq().decode_code(torch.zeros(32, dtype=torch.long)), ValueError, "code_b")
    kl = lambda: module("AutoencoderKL")  # noqa: E731
    yield "AutoencoderKL.decode: z of other channels", lambda: kl().decode(torch.randn(2, 5, 4, 4)), ValueError, "z"
    yield "AutoencoderKL.decode: z int", lambda: kl().decode(latent().long()), TypeError, "z"


CASES = list(op_cases()) + list(module_cases())


@pytest.mark.parametrize("label, call, error, names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(label, call, error, names):
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__} (expected {error.__name__}): {info.value}"
    message = str(info.value)
    assert re.search(rf"(?<![\w.])({names})(?![\w(])", message), f"message does not name {names!r}: {message}"


def test_module_device_errors_come_from_the_checks():
    """A meta input would pass some PyTorch layers silently; the message must come from our check."""
    for name in ("AttnBlock", "ResnetBlock", "Upsample", "Downsample", "Encoder"):
        x = (image() if name == "Encoder" else x32()).to("meta")
        with pytest.raises(ValueError, match=r"x is on meta but the \w+'s parameters are on cpu"):
            module(name)(x)


def test_float_inputs_of_other_dtypes_are_fine_under_autocast():
    block = module("ResnetBlock")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x32().bfloat16())
    assert y.shape == (2, 64, 4, 4)


# ----------------------------------------------------------------------------------------------
# Empty inputs: empty results of the right shape, dtype and gradients, on every backend


@pytest.fixture(params=["reference", "cpu", "triton"])
def backend_device(request):
    """``(backend, device)`` with that backend forced (ops without it keep their own choice)."""
    device = device_for_backend(request.param)
    with vqvae_fast.use_backend(request.param):
        yield request.param, device


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() if t is not None and t.is_floating_point() else t for t in tensors]


def _check_empty(out, expected_shape, dtype, leaves):
    assert out.shape == expected_shape and out.dtype == dtype
    if any(t is not None and t.requires_grad for t in leaves):
        grads = torch.autograd.grad(out.float().sum(), [t for t in leaves if t is not None], allow_unused=True)
        for t, g in zip([t for t in leaves if t is not None], grads):
            assert g is None or (g.shape == t.shape and not g.any())


@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (2, 8, 0, 3), (0, 8)], ids=str)
def test_group_norm_silu_empty(backend_device, shape):
    _, device = backend_device
    dtype = torch.float16 if device == "cuda" else torch.float32
    x, w, b = _leaves(torch.randn(shape, device=device, dtype=dtype), torch.ones(8, device=device, dtype=dtype),
                      torch.zeros(8, device=device, dtype=dtype))
    _check_empty(vqvae_fast.group_norm_silu(x, 4, w, b), shape, dtype, [x, w, b])


@pytest.mark.parametrize("shape", [(0, 16, 10), (2, 16, 0), (2, 16, 0, 3), (0, 16, 2, 2)], ids=str)
def test_spatial_attention_empty(backend_device, shape):
    backend, device = backend_device
    dtype = torch.float16 if backend == "triton" else torch.float32
    q, k, v = _leaves(*(torch.randn(shape, device=device, dtype=dtype) for _ in range(3)))
    _check_empty(vqvae_fast.spatial_attention(q, k, v), shape, dtype, [q, k, v])


@pytest.mark.parametrize("shape", [(0, 8), (0, 8, 3, 3), (2, 8, 0, 3), (2, 8, 3, 0)], ids=str)
@pytest.mark.parametrize("precision", ["ieee", "fast"])
def test_codebook_argmin_empty(backend_device, shape, precision):
    _, device = backend_device
    z, codebook = torch.randn(shape, device=device), torch.randn(5, 8, device=device)
    expected = (shape[0],) if len(shape) == 2 else (shape[0], *shape[2:])
    indices = vqvae_fast.codebook_argmin(z, codebook, precision)
    indices2, distances = vqvae_fast.codebook_argmin(z, codebook, precision, return_distance=True)
    for t, dtype in ((indices, torch.int64), (indices2, torch.int64), (distances, torch.float32)):
        assert t.shape == expected and t.dtype == dtype


@pytest.mark.parametrize("shape, padding, out_shape", [
    ((0, 4, 5, 5), (0, 1, 0, 1), (0, 6, 2, 2)),
    ((2, 4, 0, 5), (1, 1, 2, 1), (2, 6, 1, 3)),  # zero rows: the output reads only padding (bias)
    ((2, 4, 5, 0), (2, 1, 1, 1), (2, 6, 3, 1)),
], ids=str)
def test_padded_conv2d_empty(backend_device, shape, padding, out_shape):
    backend, device = backend_device
    if backend == "triton":
        pytest.skip("padded_conv2d has no triton backend")
    x, w, b = _leaves(torch.randn(shape, device=device), torch.randn(6, 4, 3, 3, device=device),
                      torch.randn(6, device=device))
    y = vqvae_fast.padded_conv2d(x, w, b, stride=2, padding=padding)
    assert y.shape == out_shape
    if y.numel():  # zero positions in x: every output is the bias
        torch.testing.assert_close(y, b.detach().view(1, 6, 1, 1).expand(out_shape))
    gx, gw, gb = torch.autograd.grad(y.sum(), [x, w, b])
    assert gx.shape == x.shape and gw.shape == w.shape and not gw.any()
    torch.testing.assert_close(gb, torch.full((6,), float(y[:, 0].numel())))


MODULE_EMPTY = [  # (module, input shape, output shape)
    ("GroupNormSiLU", (0, 32, 4, 4), (0, 32, 4, 4)),
    ("GroupNormSiLU", (2, 32, 0, 4), (2, 32, 0, 4)),
    ("AttnBlock", (0, 32, 4, 4), (0, 32, 4, 4)),
    ("AttnBlock", (2, 32, 0, 4), (2, 32, 0, 4)),
    ("VectorQuantizer", (0, 4, 4, 4), (0, 4, 4, 4)),
    ("VectorQuantizer", (2, 4, 0, 4), (2, 4, 0, 4)),
    ("Downsample", (0, 32, 4, 4), (0, 32, 2, 2)),
    ("Downsample (pool)", (0, 32, 4, 4), (0, 32, 2, 2)),
    ("ResnetBlock", (0, 32, 4, 4), (0, 64, 4, 4)),
    ("Upsample", (0, 32, 4, 4), (0, 32, 8, 8)),
    ("Upsample (no conv)", (0, 32, 4, 4), (0, 32, 8, 8)),
    ("Encoder", (0, 3, 8, 8), (0, 4, 4, 4)),
    ("Decoder", (0, 4, 4, 4), (0, 3, 8, 8)),
    ("VQModel", (0, 3, 8, 8), (0, 3, 8, 8)),
    ("AutoencoderKL", (0, 3, 8, 8), (0, 3, 8, 8)),
]


@pytest.mark.parametrize("name, shape, out_shape", MODULE_EMPTY, ids=[f"{m}-{s}" for m, s, _ in MODULE_EMPTY])
def test_modules_on_empty_inputs(name, shape, out_shape):
    """Zero batch everywhere; zero positions where no layer needs any (convolutions with a kernel
    larger than the padded input, interpolation: PyTorch refuses those, as for the reference)."""
    x = torch.randn(shape, requires_grad=True)
    out = module(name)(x)
    y = out[0] if isinstance(out, tuple) else out
    assert y.shape == out_shape
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.shape == x.shape


# ----------------------------------------------------------------------------------------------
# Nothing the caller passes is modified, forward or backward; outputs never alias inputs


def fingerprint(t: torch.Tensor) -> tuple:
    """Everything observable about a tensor's data: layout, version counter and a hash of its bytes."""
    data = t.detach()
    raw = data.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes() if data.numel() else b""
    return (tuple(data.shape), data.stride(), data.storage_offset(), data.dtype, data._version,
            hashlib.sha256(raw).hexdigest())


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif hasattr(obj, "mean") and hasattr(obj, "std"):  # a posterior distribution
        yield from _tensors([obj.mean, obj.std])


def _assert_untouched(run, inputs, module_=None):
    """``run()`` (forward and backward) leaves ``inputs`` and the module's state as they were."""
    state = list(inputs) + ([] if module_ is None else list(module_.parameters()) + list(module_.buffers()))
    before = [fingerprint(t) for t in state]
    outputs = run()
    after = [fingerprint(t) for t in state]
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert not changed, f"inputs/state {changed} modified"
    for out in _tensors(outputs):
        for inp in inputs:
            if out.numel() and inp.numel():
                assert out.untyped_storage().data_ptr() != inp.untyped_storage().data_ptr(), "output aliases an input"


def _forward_backward(fn, leaves):
    def run():
        out = fn()
        floats = [t for t in _tensors(out) if t.is_floating_point() and t.requires_grad]
        if floats:
            targets = [t for t in leaves if t.requires_grad]
            torch.autograd.grad(sum(t.float().sum() for t in floats), targets, allow_unused=True)
        return out
    return run


def test_ops_do_not_modify_their_inputs(backend_device):
    backend, device = backend_device
    half = torch.float16 if backend == "triton" else torch.float32
    x = torch.randn(2, 32, 5, 6, device=device).to(memory_format=torch.channels_last).requires_grad_()
    w, b = torch.rand(32, device=device).requires_grad_(), torch.randn(32, device=device).requires_grad_()
    _assert_untouched(_forward_backward(lambda: vqvae_fast.group_norm_silu(x, 8, w, b), [x, w, b]), [x, w, b])

    fused = torch.randn(2, 48, 20, device=device, dtype=half).requires_grad_()  # q, k, v read in place
    q, k, v = fused.split(16, dim=1)
    _assert_untouched(_forward_backward(lambda: vqvae_fast.spatial_attention(q, k, v), [fused]), [fused])

    z = torch.randn(2, 8, 5, 5, device=device).to(memory_format=torch.channels_last)
    codebook = torch.randn(30, 8, device=device)
    for precision in ("ieee", "fast"):
        _assert_untouched(lambda: vqvae_fast.codebook_argmin(z, codebook, precision, return_distance=True),
                          [z, codebook])

    if backend != "triton":
        xc = torch.randn(2, 4, 7, 7, device=device).to(memory_format=torch.channels_last).requires_grad_()
        wc, bc = torch.randn(6, 4, 3, 3, device=device).requires_grad_(), torch.randn(6, device=device).requires_grad_()
        run = lambda: vqvae_fast.padded_conv2d(xc, wc, bc, stride=2, padding=(0, 1, 0, 1))  # noqa: E731
        _assert_untouched(_forward_backward(run, [xc, wc, bc]), [xc, wc, bc])


@pytest.mark.parametrize("name", ["GroupNormSiLU", "AttnBlock", "VectorQuantizer", "Downsample", "ResnetBlock",
                                  "Upsample", "Encoder", "Decoder", "VQModel", "AutoencoderKL"])
@pytest.mark.parametrize("training", [False, True])
def test_modules_do_not_modify_inputs_or_state(name, training):
    m = module(name).train(training)
    try:
        shape = {"VectorQuantizer": (2, 4, 4, 4), "Decoder": (2, 4, 4, 4), "Encoder": (2, 3, 8, 8),
                 "VQModel": (2, 3, 8, 8), "AutoencoderKL": (2, 3, 8, 8)}.get(name, (2, 32, 4, 4))
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(shape).to(memory_format=fmt).requires_grad_()
            _assert_untouched(_forward_backward(lambda: m(x), [x, *m.parameters()]), [x], m)
    finally:
        m.eval()
