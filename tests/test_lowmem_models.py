"""Exact low-memory execution of whole models: tiled and budgeted decodes / encodes equal the plain
forward (fp32 within 1e-5 relative, fp64 within 1e-12: the tiling itself is exact), for vqvae_fast's
models, accelerated diffusers and taming models, with tiles of 1x1, 1xN and NxM at sizes that
are not multiples of the tile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import vqvae_fast
from vqvae_fast import configs
from vqvae_fast.lowmem import Unsupported, last_plan

import peers
from test_hot_path import HostSyncDetector

HAS_CUDA = torch.cuda.is_available()
TILES = [(1, 1), (1, 3), (3, 2), (4, 5)]


def small_model(kind: str, cls=vqvae_fast.VQModel):
    """The f16 (taming ImageNet) or f8 (LDM vq-f8) structure with 32-128 channels, one resnet
    block per level, attention at the lowest resolution, random weights and norms."""
    cfg = configs.get_config("vqgan_imagenet_f16_16384" if kind == "f16" else "vq_f8")
    ddconfig = dict(cfg["ddconfig"], ch=32, num_res_blocks=1, z_channels=8, resolution=256)
    torch.manual_seed(0)
    if cls is vqvae_fast.AutoencoderKL:
        model = cls(dict(ddconfig, double_z=True), embed_dim=4)
    else:
        model = cls(ddconfig, n_embed=32, embed_dim=8)
    return peers.randomize_norms(model).eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def latent(model, rows=5, cols=7, batch=2, dtype=torch.float32):
    return torch.randn(batch, model.embed_dim, rows, cols, dtype=dtype)


@pytest.mark.parametrize("kind", ["f16", "f8"])
@pytest.mark.parametrize("tiles", TILES)
def test_tiled_decode_equals_plain(kind, tiles):
    model = small_model(kind)
    z = latent(model)
    with torch.no_grad():
        expected = model.decode(z)
        assert vqvae_fast.memory_budget(model, "lean", tiles=tiles) == ["encoder", "decoder"]
        out = model.decode(z)
    assert out.shape == expected.shape and rel(out, expected) <= 1e-5
    assert last_plan(model.decoder).grids[-1].shape == tuple(min(t, s) for t, s in zip(tiles, out.shape[2:]))


@pytest.mark.parametrize("kind", ["f16", "f8"])
@pytest.mark.parametrize("tiles", [(1, 3), (3, 2)])
def test_tiled_encode_equals_plain(kind, tiles):
    model = small_model(kind)
    x = torch.randn(2, 3, 48, 80) if kind == "f16" else torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        expected = model.encode(x)[0]
        h_expected = model.encoder(x)
        vqvae_fast.memory_budget(model, "lean", tiles=tiles)
        h = model.encoder(x)
        out = model.encode(x)[0]
    assert rel(h, h_expected) <= 1e-5
    torch.testing.assert_close(out, expected)  # the same codes


@pytest.mark.parametrize("stage", ["decode", "encode"])
def test_tiling_is_exact_in_float64(stage):
    """In fp64 the tiled result is the plain one to rounding: nothing is approximated."""
    model = small_model("f16").double()
    x = latent(model, dtype=torch.float64) if stage == "decode" else torch.randn(2, 3, 48, 80, dtype=torch.float64)
    run = (lambda m: m.decode(x)) if stage == "decode" else (lambda m: m.encoder(x))
    with torch.no_grad():
        expected = run(model)
        vqvae_fast.memory_budget(model, "lean", tiles=(3, 4))
        assert rel(run(model), expected) <= 1e-12


def test_host_storage_batches_and_channels_last():
    """Tiles kept in host memory (the CUDA offload path, on plain host tensors here), one sample
    per sweep of a batch of three, channels-last input: all the plain result."""
    model = small_model("f8")
    z = latent(model, rows=6, cols=5, batch=3).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model.decode(z)
        vqvae_fast.memory_budget(model, "lean", tiles=(2, 3), storage="host", batch=1)
        out = model.decode(z)
    assert rel(out, expected) <= 1e-5
    assert out.is_contiguous(memory_format=torch.channels_last)
    plan = last_plan(model.decoder)
    assert plan.batch == 1 and plan.tiers[1] == "host" and plan.tiers[-1] == "device"


def test_budgets_pick_a_plan_that_fits_or_raise():
    model = small_model("f16")
    z = latent(model, rows=8, cols=8, batch=2)
    with torch.no_grad():
        expected = model.decode(z)
        vqvae_fast.memory_budget(model, "auto")
        assert rel(model.decode(z), expected) <= 1e-5
        lean = vqvae_fast.lowmem.plan(model.decoder, z.shape, budget="lean")
        roomy = vqvae_fast.lowmem.plan(model.decoder, z.shape, budget=10 * lean.estimate)
        budget = (lean.estimate + roomy.estimate) // 2
        vqvae_fast.memory_budget(model, budget)
        assert rel(model.decode(z), expected) <= 1e-5
        assert last_plan(model.decoder).estimate <= budget
        vqvae_fast.memory_budget(model, 1000)
        with pytest.raises(ValueError, match=r"budget of 1000 bytes .* too small to hold one tile"):
            model.decode(z)


def test_the_least_memory_plan_runs():
    model = small_model("f8")
    z = latent(model, rows=3, cols=5, batch=2)
    with torch.no_grad():
        expected = model.decode(z)
        smallest = vqvae_fast.lowmem.minimum_budget(model.decoder, (2, 8, 3, 5))  # post_quant_conv: 8 channels
        assert smallest < vqvae_fast.lowmem.plan(model.decoder, (2, 8, 3, 5), budget="lean").estimate
        vqvae_fast.memory_budget(model, smallest)
        assert rel(model.decode(z), expected) <= 1e-5
    assert last_plan(model.decoder).batch == 1


def test_switches_on_our_models():
    model = small_model("f16", vqvae_fast.AutoencoderKL)
    z, x = torch.randn(3, 4, 5, 6), torch.randn(3, 3, 32, 48)
    with torch.no_grad():
        expected, posterior = model.decode(z), model.encode(x).mean
        assert not model.use_tiling and not model.use_slicing
        model.enable_tiling(tiles=(2, 3))
        model.enable_slicing()
        assert model.use_tiling and model.use_slicing
        assert rel(model.decode(z), expected) <= 1e-5 and rel(model.encode(x).mean, posterior) <= 1e-5
        assert last_plan(model.decoder).batch == 1
        model.disable_tiling()
        assert rel(model.decode(z), expected) <= 1e-5  # slicing alone: one sample at a time, whole
        assert last_plan(model.decoder).grids[-1].count == 1
        model.disable_slicing()
        assert vqvae_fast.lowmem.install.CONFIG not in model.decoder.__dict__
    with pytest.raises(ValueError, match="storage"):
        model.enable_tiling(storage="disk")


def test_autograd_runs_the_plain_forward():
    model = small_model("f8").train()
    twin = copy.deepcopy(model)
    vqvae_fast.memory_budget(model, "lean", tiles=(2, 2))
    z = latent(model, rows=4, cols=4)
    with pytest.warns(UserWarning, match="plain forward while autograd records"):
        model.decode(z).square().mean().backward()
    twin.decode(z).square().mean().backward()
    assert last_plan(model.decoder) is None  # the executor never ran
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_no_host_synchronisation_in_a_tiled_decode():
    model = small_model("f16")
    vqvae_fast.memory_budget(model, "lean", tiles=(2, 3))
    z = latent(model, rows=3, cols=4, batch=1)
    with torch.no_grad(), HostSyncDetector() as detector:
        model.decode(z)
    assert detector.syncs == []
    assert "aten::native_group_norm" in detector.ops  # the statistics of the tiles


class OddAttention(nn.Module):
    def forward(self, x):
        return x


def test_unknown_blocks_are_named():
    model = small_model("f16")
    model.decoder.mid.attn_1 = OddAttention()
    with pytest.raises(Unsupported, match=r"decoder\.mid\.attn_1 is a .*OddAttention"):
        vqvae_fast.memory_budget(model, "auto")
    with pytest.raises(ValueError, match="holds no encoder or decoder"):
        vqvae_fast.memory_budget(nn.Linear(2, 2), "auto")
    with pytest.raises(TypeError, match="model must be"):
        vqvae_fast.memory_budget("model", "auto")


@pytest.mark.skipif(not peers.have("diffusers"), reason="diffusers is not installed")
def test_diffusers_autoencoder_kl_is_exact_where_its_own_tiling_is_not():
    torch.manual_seed(0)
    vae = peers.randomize_norms(peers.diffusers_autoencoder_kl()).eval()
    vqvae_fast.accelerate(vae)
    z = torch.randn(2, 4, 24, 20)  # larger than diffusers' tile (16 latents): its tiling engages
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        expected, posterior = vae.decode(z).sample, vae.encode(x).latent_dist.mean
        vae.enable_tiling()
        blended = vae.decode(z).sample
        vae.disable_tiling()
        assert vqvae_fast.memory_budget(vae, "lean", tiles=(3, 2)) == ["encoder", "decoder"]
        tiled, tiled_posterior = vae.decode(z).sample, vae.encode(x).latent_dist.mean
    assert rel(tiled, expected) <= 1e-5 and rel(tiled_posterior, posterior) <= 1e-5
    assert rel(blended, expected) > 100 * rel(tiled, expected)
    twin = copy.deepcopy(vae)  # the configuration follows copies (and pickles) to the new modules
    assert twin.decoder.forward.module is twin.decoder
    with torch.no_grad():
        torch.testing.assert_close(twin.decode(z).sample, tiled)
    assert last_plan(twin.decoder) is not None
    vqvae_fast.memory_budget(vae, None)
    assert "forward" not in vae.decoder.__dict__


@pytest.mark.skipif(not peers.have("diffusers"), reason="diffusers is not installed")
def test_diffusers_vq_model():
    torch.manual_seed(0)
    vae = vqvae_fast.accelerate(peers.randomize_norms(peers.diffusers_vq_model()).eval()).model
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = vae(x).sample
        vqvae_fast.memory_budget(vae, "lean", tiles=(2, 3))
        assert rel(vae(x).sample, expected) <= 1e-5


@pytest.mark.skipif(not peers.have("taming"), reason="taming-transformers is not installed")
def test_taming_model_before_and_after_accelerate():
    torch.manual_seed(0)
    slow = peers.randomize_norms(peers.TamingVQ()).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        expected = slow(x)[0]
        vqvae_fast.memory_budget(slow, "lean", tiles=(2, 2))  # taming's own blocks, through our ops
        assert rel(slow(x)[0], expected) <= 1e-5
        vqvae_fast.memory_budget(slow, None)
        fast = vqvae_fast.accelerate(slow, inplace=False).model
        vqvae_fast.memory_budget(fast, "lean", tiles=(2, 2))
        assert rel(fast(x)[0], expected) <= 1e-4  # the accelerated model's own tolerance
        vqvae_fast.memory_budget(slow, "lean", tiles=(3, 1))  # configured first, accelerated after:
        vqvae_fast.accelerate(slow)  # the fast decoder keeps the configuration, runs its own blocks
        assert isinstance(slow.decoder, vqvae_fast.Decoder) and "forward" not in slow.decoder.__dict__
        assert rel(slow(x)[0], expected) <= 1e-4
        assert last_plan(slow.decoder).grids[-1].shape == (3, 1)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("storage", ["device", "host"])
def test_cuda_tiles_with_overlapped_host_copies(storage):
    model = small_model("f16").cuda().half()
    z = latent(model, rows=9, cols=11, dtype=torch.float16).cuda()
    with torch.no_grad():
        expected = model.decode(z)
        vqvae_fast.memory_budget(model, "lean", tiles=(3, 1), storage=storage)
        out = model.decode(z)
    assert rel(out, expected) <= 2e-3
    assert ("host" in last_plan(model.decoder).tiers) == (storage == "host")


@pytest.mark.parametrize("kind", ["reference", "fast", "icetk"])
def test_icetk_hvqvae_encoder_and_every_decoder(kind):
    """CogVideo's tokenizer: icetk's own modules, our reference and our fast model, tiled."""
    from vqvae_fast import icetk as fast_icetk
    from vqvae_fast.reference import icetk as ref_icetk
    config = ref_icetk.tiny_config()
    if kind == "icetk":
        from icetk_peer import build_icetk  # skips without icetk's code
        model = build_icetk(config)
    else:
        torch.manual_seed(0)
        model = (ref_icetk.HVQVAE if kind == "reference" else fast_icetk.HVQVAE).from_config(config)
    model = peers.randomize_norms(model).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        h_expected = model.enc(x)
        images = [dec(h_expected) for dec in model.decs]
        configured = vqvae_fast.memory_budget(model, "lean", tiles=(2, 3))
        assert configured == ["enc", "decs.0", "decs.1", "decs.2"]
        h = model.enc(x)
        assert rel(h, h_expected) <= 1e-5
        for dec, expected in zip(model.decs, images):
            assert rel(dec(h_expected), expected) <= 1e-5
