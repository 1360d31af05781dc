"""Derived weights cached per parameter (vqvae_fast/nn/_derived.py) and the attention value
projection folded into the output projection in inference: equal to the reference, recomputed
whenever a parameter changes, never cached where autograd must reach the parameters."""

from __future__ import annotations

import copy

import pytest
import torch

import vqvae_fast
from vqvae_fast import reference
from vqvae_fast.nn import AttnBlock, VectorQuantizer, refresh_derived_weights
from vqvae_fast.nn import _derived
from vqvae_fast.nn.attention import projection_weights

import peers


def attention_pair(channels=64, dtype=torch.float32):
    torch.manual_seed(0)
    ref = peers.randomize_norms(reference.AttnBlock(channels)).to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))  # biases away from zero: the folded bias matters
    return ref, AttnBlock.from_reference(ref).eval()


def cached(module) -> dict:
    cache = module.__dict__.get("_vqvae_fast_derived")
    return {} if cache is None else cache.entries


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "nchw-odd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_folded_projection_matches_reference(layout, dtype):
    ref, fast = attention_pair(dtype=dtype)
    size = 7 if layout == "nchw-odd" else 8  # 49 positions: the (B, N, C) attention layout
    x = torch.randn(2, 64, size, size, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = ref(x)
        actual = fast(x)
    assert "folded_qkv" in cached(fast)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(actual, expected, **tol)
    assert actual.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


def test_folded_weights_are_the_product_and_cached():
    ref, fast = attention_pair()
    args = [t for name in ("q", "k", "v", "proj_out") for t in (getattr(ref, name).weight, getattr(ref, name).bias)]
    with torch.no_grad():
        w_qkv, b_qkv, w_proj, b_proj = projection_weights(fast, *args)
        again = projection_weights(fast, *args)
    assert w_proj is None and b_proj is None
    assert again[0] is w_qkv and again[1] is b_qkv  # a cache hit: no copy, no GEMM
    wv, wo = ref.v.weight.double().view(64, 64), ref.proj_out.weight.double().view(64, 64)
    torch.testing.assert_close(w_qkv[128:].double(), wo @ wv, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w_qkv[:64], ref.q.weight.view(64, 64))
    torch.testing.assert_close(b_qkv[128:].double(), wo @ ref.v.bias.double() + ref.proj_out.bias.double())


def test_training_keeps_the_unfolded_form_and_gradients_reach_the_parameters():
    ref, fast = attention_pair()
    fast.train()
    x = torch.randn(2, 64, 8, 8)
    grad_out = torch.randn_like(x)
    fast(x).backward(grad_out)
    assert not cached(fast)  # nothing cached while autograd needs the parameters
    grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    ref.zero_grad()
    ref(x).backward(grad_out)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_frozen_parameters_fold_and_the_input_gradient_is_exact():
    """Parameters that need no gradient may be folded even with autograd on: the gradient with
    respect to the input goes through the folded weights and equals the reference's."""
    ref, fast = attention_pair()
    ref.requires_grad_(False)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    grad_out = torch.randn_like(x)
    (gx_fast,) = torch.autograd.grad(fast(x), x, grad_out)
    assert "folded_qkv" in cached(fast)
    (gx_ref,) = torch.autograd.grad(ref(x), x, grad_out)
    torch.testing.assert_close(gx_fast, gx_ref, rtol=1e-4, atol=1e-5)


def _step(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=5.0)
    return torch.optim.Adam(params, lr=0.05, foreach=kind == "adam-foreach", fused=True if kind == "adam-fused" else None)


@pytest.mark.parametrize("kind", ["sgd", "adam-foreach", "adam-fused"])
def test_optimizer_step_gives_fresh_results(kind):
    """A cached fold, an optimizer step in place (fused Adam does not bump version counters),
    then inference again: the result follows the new weights. The module stays in eval mode,
    so only the step itself can have told the cache."""
    ref, fast = attention_pair()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        before = fast(x)
    optimizer = _step(kind, list(ref.parameters()))
    fast(x).square().mean().backward()  # autograd through the parameters: computed, not cached
    optimizer.step()
    with torch.no_grad():
        after = fast(x)
        expected = ref(x)
    assert (after - before).abs().max() > 1e-3  # the step moved the output well beyond the tolerance
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-4)


def test_in_place_changes_and_replacements_give_fresh_results():
    ref, fast = attention_pair()
    x = torch.randn(1, 64, 8, 8)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)

    check()
    with torch.no_grad():
        ref.v.weight.mul_(1.5)  # in place: the version counter moves
    check()
    ref.load_state_dict({k: v * 0.9 for k, v in ref.state_dict().items()})
    check()
    ref.proj_out.bias.data = torch.randn(64)  # a new tensor behind the same Parameter
    check()
    ref.double()
    x = x.double()
    check()
    ref.float()
    x = x.float()
    ref.v.weight.data.copy_(torch.randn(64, 64, 1, 1) * 0.1)  # invisible to the version counter...
    refresh_derived_weights()  # ...so announced
    check()
    ref.q.weight.data.mul_(2.0)
    fast.train().eval()  # a mode change starts a new generation too
    check()


def test_copies_start_empty_and_use_backend_changes_nothing():
    ref, fast = attention_pair()
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        fast(x)
        clone = copy.deepcopy(fast)
        assert not cached(clone)
        clone.v.weight.mul_(3)
        ref_clone = reference.AttnBlock(64)
        ref_clone.load_state_dict(clone.state_dict())
        torch.testing.assert_close(clone(x), ref_clone(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
        with vqvae_fast.use_backend("reference"):
            torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_inference_mode_cache_serves_autograd_later():
    """Weights folded inside inference_mode are normal tensors: a later autograd call may save them."""
    ref, fast = attention_pair()
    ref.requires_grad_(False)
    x = torch.randn(1, 64, 8, 8)
    with torch.inference_mode():
        fast(x)
    x.requires_grad_(True)
    fast(x).sum().backward()
    assert x.grad is not None


def test_quantizer_code_norms_cached_and_refreshed():
    torch.manual_seed(0)
    ref = reference.VectorQuantizer(40, 8)
    with torch.no_grad():
        ref.embedding.weight.normal_()
    fast = VectorQuantizer.from_reference(ref).eval()
    z = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        first = fast(z)[2][2]
        norms = cached(fast)["code_norms"][1]
        assert fast(z)[2][2].equal(first) and cached(fast)["code_norms"][1] is norms
        ref.embedding.weight.mul_(-1)  # every code flips: other nearest codes
        torch.testing.assert_close(fast(z)[2][2], ref(z)[2][2], rtol=0, atol=0)
        assert cached(fast)["code_norms"][1] is not norms


def test_derived_is_not_cached_under_autograd_and_follows_the_generation():
    holder = torch.nn.Module()
    p = torch.nn.Parameter(torch.randn(3))
    calls = []

    def double(t):
        calls.append(1)
        return t * 2

    out = _derived.derived(holder, "double", double, p)
    assert out.requires_grad and len(calls) == 1  # autograd through p: computed per call
    with torch.no_grad():
        a = _derived.derived(holder, "double", double, p)
        b = _derived.derived(holder, "double", double, p)
        assert a is b and len(calls) == 2 and not a.requires_grad
        refresh_derived_weights()
        assert _derived.derived(holder, "double", double, p) is not a and len(calls) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the fold runs on CUDA only)")
def test_upsample_fold_cached_and_refreshed_on_cuda():
    from vqvae_fast.nn import Upsample

    torch.manual_seed(0)
    ref = reference.Upsample(16, with_conv=True).cuda().eval()
    fast = Upsample.from_reference(ref).eval()
    x = torch.randn(2, 16, 7, 9, device="cuda")
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-4)
        folded = cached(fast)["folded"][1]
        fast(x)
        assert cached(fast)["folded"][1] is folded
        ref.conv.weight.mul_(-0.5)
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-4)
        assert cached(fast)["folded"][1] is not folded
