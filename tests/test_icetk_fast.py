"""icetk's HVQVAE made fast: ``accelerate`` on icetk's own modules and the fast model class
(``vqvae_fast.icetk.HVQVAE``), against icetk's modules and our reference; the fast
``ResidualDownSample`` and quantizers block by block. Tests that need icetk's own code skip
without it (tests/icetk_peer.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import vqvae_fast
from vqvae_fast import icetk as fast_icetk
from vqvae_fast.nn import ResidualDownSample, VectorQuantize, VectorQuantizeEMA
from vqvae_fast.reference import icetk as ref

import peers
from helpers import assert_matches_reference
from icetk_peer import build_icetk, spread_codebook

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def icetk_tiny(quantizer="VectorQuantizeEMA", **kwargs):
    return spread_codebook(build_icetk(ref.tiny_config(quantizer=quantizer, **kwargs)))


def reference_tiny(quantizer="VectorQuantizeEMA", **kwargs):
    torch.manual_seed(0)
    return spread_codebook(ref.HVQVAE.from_config(ref.tiny_config(quantizer=quantizer, **kwargs)))


def executed_classes(model, x) -> set[str]:
    """Classes (module paths included) of the modules whose forward runs on ``x``."""
    seen, hooks = set(), []
    for module in model.modules():
        cls = type(module)
        hooks.append(module.register_forward_hook(lambda m, i, o, c=cls: seen.add(f"{c.__module__}.{c.__name__}")))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def assert_same_outputs(fast, slow, x=X):
    with torch.no_grad():
        q_f, d_f, i_f = fast.encode(x)
        q_s, d_s, i_s = slow.encode(x)
        for a, b in zip(i_f, i_s):
            assert torch.equal(a, b)  # the same codes
        for a, b in zip(q_f + d_f, q_s + d_s):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(fast(x)[0], slow(x)[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        for level in range(3):
            torch.testing.assert_close(fast.single_decode_code(i_s[level], level),
                                       slow.single_decode_code(i_s[level], level), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quantizer", ["VectorQuantizeEMA", "VectorQuantize"])
def test_accelerated_icetk_model(quantizer):
    slow = icetk_tiny(quantizer)
    report = vqvae_fast.accelerate(slow, inplace=False)
    fast = report.model
    assert list(fast.state_dict()) == list(slow.state_dict())
    for key, value in slow.state_dict().items():
        assert fast.state_dict()[key] is value or torch.equal(fast.state_dict()[key], value)
    assert_same_outputs(fast, slow)

    # the report lists every block; nothing is left alone
    assert not report.left_alone, str(report)
    by_name = {r.name: r.op for r in report.replaced}
    assert {n: by_name[n] for n in ("enc", "decs.0", "decs.1", "decs.2", "quantize", "down_samplers.0",
                                    "down_samplers.1", "enc.down.0.downsample")} == {
        "enc": "group_norm_silu", "decs.0": "group_norm_silu", "decs.1": "group_norm_silu",
        "decs.2": "group_norm_silu", "quantize": "codebook_argmin", "down_samplers.0": "padded_conv2d",
        "down_samplers.1": "padded_conv2d", "enc.down.0.downsample": "padded_conv2d"}
    for kind in ("ResnetBlock", "AttnBlock", "Upsample"):
        count = sum(type(m).__name__ == kind for m in slow.modules())
        assert sum(r.original.endswith(f".{kind}") for r in report.replaced) == count > 0

    # no slow block runs: of icetk's classes only the HVQVAE container's forward is called
    slow_run = {c for c in executed_classes(fast, X) if c.startswith("icetk.")}
    assert slow_run == {"icetk.vqvae.vqvae_hierarchical.HVQVAE"}


@pytest.mark.parametrize("quantizer", ["VectorQuantizeEMA", "VectorQuantize"])
def test_accelerated_icetk_training_gradients_and_buffers(quantizer):
    slow = icetk_tiny(quantizer)
    fast = vqvae_fast.accelerate(slow, inplace=False).model
    slow.train(), fast.train()
    buffers = {k: v.clone() for k, v in slow.named_buffers()}
    for model in (slow, fast):
        outs, diff = model(X)
        (sum(o.square().mean() for o in outs) + diff).backward()
    for (name, p_s), p_f in zip(slow.named_parameters(), fast.parameters()):
        assert (p_s.grad is None) == (p_f.grad is None), name
        if p_s.grad is not None:
            torch.testing.assert_close(p_f.grad, p_s.grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")
    for name, value in fast.named_buffers():
        assert torch.equal(value, buffers[name]), name  # icetk never updates cluster_size / embed_avg


def test_accelerating_twice_changes_nothing():
    model = icetk_tiny()
    vqvae_fast.accelerate(model)
    modules = dict(model.named_modules())
    again = vqvae_fast.accelerate(model)
    assert again.replaced == [] and again.left_alone == [] and again.already_fast
    assert dict(model.named_modules()) == modules
    fast_model = fast_icetk.HVQVAE.from_config(ref.tiny_config())
    assert vqvae_fast.accelerate(fast_model).replaced == []


def test_left_alone_with_reasons():
    """Average-pool DownSamples (resample_with_conv=False) have nothing to accelerate; a
    GumbelQuantize samples its codes."""
    model = icetk_tiny("GumbelQuantize", resample_with_conv=False)
    report = vqvae_fast.accelerate(model)
    reasons = {a.name: a.reason for a in report.left_alone}
    assert set(reasons) == {"enc.down.0.downsample", "quantize"}, str(report)
    assert "average pool" in reasons["enc.down.0.downsample"]
    assert "Gumbel" in reasons["quantize"]
    slow_run = {c.rsplit(".", 1)[1] for c in executed_classes(model, X) if c.startswith("icetk.")}
    assert slow_run == {"HVQVAE", "DownSample", "GumbelQuantize"}


def test_fast_model_class_loads_icetk_weights():
    slow = icetk_tiny()
    fast = fast_icetk.HVQVAE.from_config(ref.tiny_config())
    assert list(fast.state_dict()) == list(slow.state_dict())
    fast.load_state_dict(slow.state_dict())
    assert isinstance(fast.quantize, VectorQuantizeEMA) and isinstance(fast.down_samplers[0], ResidualDownSample)
    assert_same_outputs(fast, slow)


def test_fast_model_against_reference_without_icetk():
    slow = reference_tiny().eval()
    fast = fast_icetk.HVQVAE.from_config(ref.tiny_config()).eval()
    fast.load_state_dict(slow.state_dict())
    assert_same_outputs(fast, slow, torch.randn(1, 3, 40, 24))
    with pytest.raises(TypeError, match="code must have dtype"):
        fast.single_decode_code(torch.zeros(1, 4, 4), 1)
    codes = torch.randint(0, 96, (1, 4, 4))
    torch.testing.assert_close(fast.single_decode_code(codes.to(torch.uint8), 1), fast.single_decode_code(codes, 1))


def test_default_model_codes_and_images():
    """icetk's default model (20000 codes of dim 256), random weights, on a small frame."""
    torch.manual_seed(0)
    slow = spread_codebook(ref.load_default_HVQVAE()).eval()
    fast = fast_icetk.load_default_HVQVAE().eval()
    fast.load_state_dict(slow.state_dict())
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        for level in (0, 1):
            quant_s, diff_s, ids_s = slow.single_encode(x, level)
            quant_f, diff_f, ids_f = fast.single_encode(x, level)
            assert torch.equal(ids_f, ids_s) and ids_f.shape == (1, 12 // 2**level, 8 // 2**level)
            torch.testing.assert_close(quant_f, quant_s, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(diff_f, diff_s, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(fast.single_decode_code(ids_s, 1), slow.single_decode_code(ids_s, 1),
                                   rtol=1e-4, atol=1e-4)


def test_bf16_model_within_the_reference_error():
    slow = reference_tiny().eval()
    fast = fast_icetk.HVQVAE.from_config(ref.tiny_config()).eval()
    fast.load_state_dict(slow.state_dict())
    codes = torch.randint(0, 96, (2, 4, 4))
    with torch.no_grad():
        exact = slow.single_decode_code(codes, 1)
        ref_bf16 = copy.deepcopy(slow).bfloat16().single_decode_code(codes, 1).float()
        fast_bf16 = fast.bfloat16().single_decode_code(codes, 1).float()
    assert (fast_bf16 - exact).abs().max() <= 2 * (ref_bf16 - exact).abs().max() + 1e-3


def test_triton_kernels_in_the_icetk_model(triton_device):
    slow = reference_tiny().eval().to(triton_device)
    fast = vqvae_fast.accelerate(slow, inplace=False).model
    x = X[:1, :, :16, :16].to(triton_device)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        q_f, _, i_f = fast.single_encode(x, 0)
        q_s, _, i_s = slow.single_encode(x, 0)
        assert torch.equal(i_f, i_s)
        torch.testing.assert_close(fast.single_decode_code(i_s, 1), slow.single_decode_code(i_s, 1),
                                   rtol=1e-3, atol=1e-3)


# -- ResidualDownSample ---------------------------------------------------------------------------


def _residual_pair(channels=32, seed=0):
    torch.manual_seed(seed)
    slow = ref.ResidualDownSample(channels)
    return slow, ResidualDownSample.from_reference(slow)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [(16, 16), (15, 9), (2, 3)])
def test_residual_downsample_matches_reference(dtype, size):
    slow, fast = _residual_pair()
    x = torch.randn(3, 32, *size)
    weight, bias = slow.conv_down_sampler.conv.weight.detach(), slow.conv_down_sampler.conv.bias.detach()

    def reference(x, w, b):
        block = ref.ResidualDownSample(32).to(x.dtype)
        with torch.no_grad():
            block.conv_down_sampler.conv.weight.copy_(w)
            block.conv_down_sampler.conv.bias.copy_(b)
            return block(x)

    fast.to(dtype)
    with torch.no_grad():
        out = fast(x.to(dtype))
    assert out.dtype == dtype and out.shape == (3, 32, size[0] // 2, size[1] // 2)
    assert_matches_reference(out, reference, [x.to(dtype), weight.to(dtype), bias.to(dtype)], dtype=dtype)


def test_residual_downsample_layouts_gradients_and_errors():
    slow, fast = _residual_pair()
    x = torch.randn(2, 32, 11, 12, requires_grad=True)
    out_s, out_f = slow(x), fast(x)
    torch.testing.assert_close(out_f, out_s, rtol=1e-5, atol=1e-5)
    grads_s = torch.autograd.grad(out_s.square().sum(), [x] + list(slow.parameters()))
    grads_f = torch.autograd.grad(out_f.square().sum(), [x] + list(fast.parameters()))
    for a, b in zip(grads_f, grads_s):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        x_cl = x.detach().contiguous(memory_format=torch.channels_last)
        out_cl = fast(x_cl)
        torch.testing.assert_close(out_cl, out_s.detach(), rtol=1e-5, atol=1e-5)
        assert out_cl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fast(x.detach()[:, :, 1:, :]), slow(x.detach()[:, :, 1:, :]))  # a strided view
    with pytest.raises(ValueError, match="x must have 32 channels"):
        fast(torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        fast(torch.randn(32, 8, 8))
    with pytest.raises(TypeError, match="x has dtype torch.float64"):
        fast(torch.randn(1, 32, 8, 8, dtype=torch.float64))


def test_residual_downsample_folded_weight_follows_the_parameter():
    slow, fast = _residual_pair()
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        first = fast(x)
        slow.conv_down_sampler.conv.weight.mul_(0.5)  # in place: the cached fold must be recomputed
        torch.testing.assert_close(fast(x), slow(x))
        assert not torch.allclose(first, fast(x))


# -- quantizers -----------------------------------------------------------------------------------


def _quantizer_pair(cls_name, seed=0, **kwargs):
    torch.manual_seed(seed)
    slow = getattr(ref, cls_name)(24, 16, 200, **kwargs)
    with torch.no_grad():
        slow.embed.weight.normal_(0, 0.3)
    fast_cls = VectorQuantize if cls_name == "VectorQuantize" else VectorQuantizeEMA
    return slow, fast_cls.from_reference(slow)


QUANTIZERS = [("VectorQuantize", {}), ("VectorQuantizeEMA", {}), ("VectorQuantizeEMA", {"pre_proj": False})]


@pytest.mark.parametrize("cls_name,kwargs", QUANTIZERS, ids=["vq", "ema", "ema-no-proj"])
def test_quantizer_outputs_and_gradients(cls_name, kwargs):
    slow, fast = _quantizer_pair(cls_name, **kwargs)
    channels = 16 if kwargs.get("pre_proj") is False else 24
    z = torch.randn(3, channels, 5, 7)
    with torch.no_grad():
        for got, want in zip(fast(z), slow(z)):
            assert torch.equal(got, want)  # the same codes, and then the same arithmetic
        z_cl = z.contiguous(memory_format=torch.channels_last)
        for got, want in zip(fast(z_cl), slow(z)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    z.requires_grad_(True)
    out_s, out_f = slow(z), fast(z)
    assert torch.equal(out_f[2], out_s[2]) and out_f[0].shape == (3, 5, 7, 16)
    params = [p for p in slow.parameters()]
    grads_s = torch.autograd.grad(out_s[0].square().sum() + out_s[1], [z] + params, allow_unused=True)
    grads_f = torch.autograd.grad(out_f[0].square().sum() + out_f[1], [z] + params, allow_unused=True)
    for a, b in zip(grads_f, grads_s):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_quantizer_options_buffers_and_errors():
    slow, fast = _quantizer_pair("VectorQuantizeEMA")
    buffers = {k: v.clone() for k, v in fast.named_buffers()}
    fast.train()
    out = fast(torch.randn(2, 24, 4, 4, requires_grad=True))
    (out[0].sum() + out[1]).backward()
    for name, value in fast.named_buffers():
        assert torch.equal(value, buffers[name])
    assert list(fast.state_dict()) == list(slow.state_dict()) == ["cluster_size", "embed_avg", "proj.weight",
                                                                 "proj.bias", "embed.weight"]
    with pytest.raises(ValueError, match="z must have 24 channels"):
        fast(torch.randn(1, 16, 4, 4))
    with pytest.raises(ValueError, match="precision must be one of"):
        VectorQuantizeEMA(8, 8, 16, precision="tf32")
    fresh = VectorQuantize(8, 4, 16, precision="fast")
    assert fresh.precision == "fast" and fresh(torch.randn(1, 8, 3, 3))[2].shape == (1, 3, 3)
    with pytest.raises(ValueError, match="nn.Embedding"):
        VectorQuantize.from_reference(torch.nn.Linear(2, 2))


def test_quantizer_codes_at_the_default_codebook():
    """20000 codes of dim 256 (the memory saved is the benchmark's to show)."""
    big = ref.VectorQuantizeEMA(256, 256, 20000)
    with torch.no_grad():
        big.embed.weight.normal_(0, 0.2)
    fast = VectorQuantizeEMA.from_reference(big)
    z = 0.35 * torch.randn(1, 256, 20, 20)
    with torch.no_grad():
        assert torch.equal(fast(z)[2], big(z)[2])


def test_quantizer_bf16_codes_within_the_reference_error():
    slow, fast = _quantizer_pair("VectorQuantize")
    z = torch.randn(4, 24, 6, 6)
    with torch.no_grad():
        exact = slow(z)[2]
        slow16 = copy.deepcopy(slow).bfloat16()
        ref_mismatch = (slow16(z.bfloat16())[2] != exact).float().mean()
        fast16 = VectorQuantize.from_reference(copy.deepcopy(slow).bfloat16())
        fast_mismatch = (fast16(z.bfloat16())[2] != exact).float().mean()
    assert fast_mismatch <= 2 * ref_mismatch + 0.02


def test_icetk_blocks_outside_a_model_are_accelerated():
    holder = torch.nn.Module()
    holder.q = ref.VectorQuantize(8, 4, 16)
    holder.d = ref.DownSample(8, with_conv=True)
    report = vqvae_fast.accelerate(peers.randomize_norms(holder))
    assert {r.name: r.op for r in report.replaced} == {"q": "codebook_argmin", "d": "padded_conv2d"}
    assert isinstance(holder.q, VectorQuantize)


def test_fast_icetk_blocks_compile_fullgraph():
    model = fast_icetk.HVQVAE.from_config(ref.tiny_config()).eval()
    z = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        for block in (model.quantize, model.down_samplers[0]):
            got, want = torch.compile(block, fullgraph=True)(z), block(z)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # (z_q, diff, ids) or the image
