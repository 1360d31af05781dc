"""accelerate(): our reference model, taming's modules and diffusers' autoencoders made fast."""

import copy

import pytest
import torch
import torch.nn as nn

import vqvae_fast
from vqvae_fast import configs, reference
from vqvae_fast.acceleration import OPS

import peers


def tiny_reference(seed=0):
    torch.manual_seed(seed)
    cfg = configs.get_config("tiny")
    model = reference.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()  # codes spread like latents, so many are used
    return peers.randomize_norms(model)


def count_blocks(model, names):
    return sum(1 for m in model.modules() if type(m).__name__ in names)


def assert_same_parameters(slow, fast):
    """Same keys and, for an in-place conversion, the very same tensors."""
    s, f = slow.state_dict(), fast.state_dict()
    assert list(s) == list(f)
    for k in s:
        assert torch.equal(s[k], f[k]), k


def test_reference_model_outputs_loss_and_gradients():
    slow = tiny_reference()
    report = vqvae_fast.accelerate(slow, inplace=False)
    fast = report.model
    assert fast is not slow
    assert_same_parameters(slow, fast)
    x = torch.randn(2, 3, 32, 32)
    dec_s, loss_s = slow(x)
    dec_f, loss_f = fast(x)
    torch.testing.assert_close(dec_f, dec_s, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_f, loss_s, rtol=1e-4, atol=1e-6)
    ((dec_s ** 2).mean() + loss_s).backward()
    ((dec_f ** 2).mean() + loss_f).backward()
    for (name, ps), pf in zip(slow.named_parameters(), fast.parameters()):
        torch.testing.assert_close(pf.grad, ps.grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_report_names_every_block_and_shares_parameters_in_place():
    model = tiny_reference()
    params_before = {n: p for n, p in model.named_parameters()}
    n_resnet = count_blocks(model, {"ResnetBlock"})
    n_attn = count_blocks(model, {"AttnBlock"})
    report = vqvae_fast.accelerate(model)
    assert report.model is model
    kinds = [r.op for r in report.replaced]
    assert kinds.count("group_norm_silu") == n_resnet + 2  # every resnet block and both heads
    assert kinds.count("spatial_attention") == n_attn
    assert kinds.count("padded_conv2d") == 1 and kinds.count("upsample_conv") == 1
    assert kinds.count("codebook_argmin") == 1
    names = {r.name for r in report.replaced}
    assert {"encoder", "decoder", "quantize", "encoder.down.0.downsample", "decoder.mid.attn_1"} <= names
    for n, p in model.named_parameters():
        assert p is params_before[n], f"{n} was copied instead of shared"
    assert not report.left_alone
    assert "accelerated" in str(report)


def test_accelerating_twice_is_a_no_op():
    model = tiny_reference()
    vqvae_fast.accelerate(model)
    modules_before = dict(model.named_modules())
    again = vqvae_fast.accelerate(model)
    assert again.replaced == [] and again.left_alone == []
    assert again.already_fast
    assert dict(model.named_modules()) == modules_before


def test_ops_selection_limits_replacements():
    model = tiny_reference()
    report = vqvae_fast.accelerate(model, ops=["spatial_attention"])
    assert {r.op for r in report.replaced} == {"spatial_attention"}
    assert any("not among the selected ops" in a.reason for a in report.left_alone)
    with pytest.raises(ValueError, match="ops must name"):
        vqvae_fast.accelerate(model, ops=["conv3d"])
    with pytest.raises(TypeError, match="model must be"):
        vqvae_fast.accelerate("model")


def test_unsupported_options_are_left_alone_with_reasons():
    model = tiny_reference()
    model.encoder.down[0].downsample = reference.Downsample(32, with_conv=False)
    report = vqvae_fast.accelerate(model)
    reasons = {a.name: a.reason for a in report.left_alone}
    assert "average pool" in reasons["encoder.down.0.downsample"]
    x = torch.randn(1, 3, 32, 32)
    assert model(x)[0].shape == x.shape


def test_fast_model_classes_load_reference_state():
    slow = tiny_reference()
    cfg = configs.get_config("tiny")
    fast = vqvae_fast.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
    fast.load_state_dict(slow.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[0], slow(x)[0], rtol=1e-4, atol=1e-4)
    kl_slow = reference.AutoencoderKL(dict(cfg["ddconfig"], double_z=True), embed_dim=4)
    kl_fast = vqvae_fast.AutoencoderKL(dict(cfg["ddconfig"], double_z=True), embed_dim=4)
    kl_fast.load_state_dict(kl_slow.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            kl_fast(x, sample_posterior=False)[0], kl_slow(x, sample_posterior=False)[0], rtol=1e-4, atol=1e-4
        )


def test_channels_last_model():
    slow = tiny_reference()
    fast = vqvae_fast.accelerate(slow, inplace=False).model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            fast(x.to(memory_format=torch.channels_last))[0], slow(x)[0], rtol=1e-4, atol=1e-4
        )


def test_autocast_bf16_matches_reference_in_autocast():
    slow = tiny_reference()
    fast = vqvae_fast.accelerate(slow, inplace=False).model
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        exact = slow(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_bf16 = slow(x)[0].float()
            fast_bf16 = fast(x)[0].float()
    err_ref = (ref_bf16 - exact).abs().max()
    err_fast = (fast_bf16 - exact).abs().max()
    assert err_fast <= 2 * err_ref + 1e-3, (err_fast, err_ref)


def test_triton_kernels_in_a_model(triton_device):
    """Every fast block on the triton backend (the interpreter on CPU) against the reference,
    forward and gradients (TF32 off: both sides then compute in full fp32)."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        _compare_model_and_gradients(triton_device)


def _compare_model_and_gradients(triton_device):
    slow = tiny_reference().to(triton_device)
    fast = vqvae_fast.accelerate(slow, inplace=False).model
    x = torch.randn(1, 3, 16, 16, device=triton_device)
    dec_s, loss_s = slow(x)
    dec_f, loss_f = fast(x)
    torch.testing.assert_close(dec_f, dec_s, rtol=1e-3, atol=1e-3)
    dec_s.square().mean().backward()
    dec_f.square().mean().backward()
    for (name, ps), pf in zip(slow.named_parameters(), fast.parameters()):
        if ps.grad is not None:
            torch.testing.assert_close(pf.grad, ps.grad, rtol=1e-2, atol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(not peers.have("taming"), reason="taming-transformers is not installed")
def test_taming_modules():
    torch.manual_seed(0)
    slow = peers.randomize_norms(peers.TamingVQ())
    with torch.no_grad():
        slow.quantize.embedding.weight.normal_()
    report = vqvae_fast.accelerate(slow, inplace=False)
    fast = report.model
    assert_same_parameters(slow, fast)
    replaced = {r.name for r in report.replaced}
    assert {"encoder", "decoder", "quantize", "encoder.mid.block_1", "decoder.up.1.upsample"} <= replaced
    assert not report.left_alone
    x = torch.randn(2, 3, 32, 32)
    dec_s, loss_s = slow(x)
    dec_f, loss_f = fast(x)
    torch.testing.assert_close(dec_f, dec_s, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_f, loss_s)
    dec_s.square().mean().backward()
    dec_f.square().mean().backward()
    for (name, ps), pf in zip(slow.named_parameters(), fast.parameters()):
        if ps.grad is not None:
            torch.testing.assert_close(pf.grad, ps.grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(not peers.have("taming"), reason="taming-transformers is not installed")
def test_taming_first_quantizer_is_left_alone():
    from taming.modules.vqvae.quantize import VectorQuantizer as FirstQuantizer

    holder = nn.Module()
    holder.quantize = FirstQuantizer(16, 4, beta=0.25)
    report = vqvae_fast.accelerate(holder)
    assert report.replaced == []
    assert "VectorQuantizer2" in report.left_alone[0].reason


@pytest.mark.skipif(not peers.have("diffusers"), reason="diffusers is not installed")
@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_diffusers_autoencoders(kind):
    torch.manual_seed(0)
    slow = peers.diffusers_vq_model() if kind == "vq" else peers.diffusers_autoencoder_kl()
    peers.randomize_norms(slow).eval()
    report = vqvae_fast.accelerate(slow, inplace=False)
    fast = report.model
    assert_same_parameters(slow, fast)
    ops = [r.op for r in report.replaced]
    assert ops.count("spatial_attention") == 2  # encoder and decoder mid blocks
    assert ops.count("padded_conv2d") == 1 and ops.count("upsample_conv") == 1
    assert ops.count("codebook_argmin") == (1 if kind == "vq" else 0)
    assert not report.left_alone, report
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        if kind == "vq":
            out_s, out_f = slow(x).sample, fast(x).sample
        else:
            out_s, out_f = slow(x, sample_posterior=False).sample, fast(x, sample_posterior=False).sample
    torch.testing.assert_close(out_f, out_s, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not peers.have("diffusers"), reason="diffusers is not installed")
def test_diffusers_block_with_timestep_embedding_is_left_alone():
    from diffusers.models.resnet import ResnetBlock2D

    holder = nn.Module()
    holder.with_temb = ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=16)
    holder.plain = peers.randomize_norms(ResnetBlock2D(in_channels=32, out_channels=64, temb_channels=None))
    slow_plain = copy.deepcopy(holder.plain)
    report = vqvae_fast.accelerate(holder)
    assert [r.name for r in report.replaced] == ["plain"]
    assert [a.name for a in report.left_alone] == ["with_temb"]
    assert "timestep embedding" in report.left_alone[0].reason
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(holder.plain(x, None), slow_plain(x, None), rtol=1e-4, atol=1e-4)


def test_torch_compile_fullgraph_of_accelerated_block():
    block = vqvae_fast.accelerate(reference.ResnetBlock(in_channels=32, out_channels=64, temb_channels=0)).model
    x = torch.randn(1, 32, 8, 8)
    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)


def test_categories_are_the_op_names():
    assert set(OPS) >= {"group_norm_silu", "spatial_attention", "codebook_argmin", "padded_conv2d"}
