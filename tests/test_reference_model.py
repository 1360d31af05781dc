"""The reference Encoder / Decoder / VQModel / AutoencoderKL: structure, shapes, key names."""

import pytest
import torch

from vqvae_fast import configs, reference


def ddconfig(**overrides):
    cfg = dict(
        double_z=False, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
        ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], dropout=0.0,
    )
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize(
    "ch_mult, attn_resolutions, size",
    [
        ([1, 1, 2], [8], (24, 40)),  # f4, attention at the bottom level
        ([1, 1, 2, 2], [4], (16, 24)),  # f8
        ([1, 1, 1, 2, 2], [32, 4], (32, 48)),  # f16, attention at two levels
    ],
)
def test_vqmodel_shapes(ch_mult, attn_resolutions, size):
    cfg = ddconfig(ch_mult=ch_mult, attn_resolutions=attn_resolutions, ch=32, resolution=32)
    model = reference.VQModel(cfg, n_embed=16, embed_dim=4).eval()
    f = 2 ** (len(ch_mult) - 1)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        quant, loss, (perplexity, encodings, indices) = model.encode(x)
        assert quant.shape == (2, 4, size[0] // f, size[1] // f)
        assert loss.dim() == 0 and perplexity is None and encodings is None
        assert indices.shape == (2 * size[0] // f * size[1] // f,)
        dec, diff = model(x)
    assert dec.shape == x.shape
    assert diff.shape == ()
    n_attn = sum(1 for m in model.modules() if isinstance(m, reference.AttnBlock))
    assert n_attn > 2  # the mid blocks plus at least one level


def test_attention_placement_follows_resolution():
    enc = reference.Encoder(**ddconfig(ch_mult=[1, 1, 2], attn_resolutions=[16], resolution=32))
    # levels run at 32, 16, 8: attention only at level 1, one per resnet block
    assert [len(d.attn) for d in enc.down] == [0, 1, 0]
    dec = reference.Decoder(**ddconfig(ch_mult=[1, 1, 2], attn_resolutions=[16], resolution=32))
    assert [len(u.attn) for u in dec.up] == [0, 2, 0]
    assert dec.z_shape == (1, 4, 8, 8)


def test_taming_state_dict_keys():
    cfg = configs.get_config("tiny")
    model = reference.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
    keys = set(model.state_dict())
    for key in [
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.0.block.0.conv1.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.1.attn.0.q.weight",
        "encoder.mid.block_1.norm2.bias",
        "encoder.mid.attn_1.proj_out.weight",
        "encoder.norm_out.weight",
        "encoder.conv_out.weight",
        "decoder.conv_in.weight",
        "decoder.mid.attn_1.k.weight",
        "decoder.up.1.block.0.conv2.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.0.block.1.norm2.weight",
        "quant_conv.weight",
        "quantize.embedding.weight",
        "post_quant_conv.bias",
    ]:
        assert key in keys, key
    assert not any("temb" in k for k in keys)
    assert model.state_dict()["encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)


def test_default_config_builds_taming_f16_model():
    cfg = configs.get_config()
    enc = reference.Encoder(**cfg["ddconfig"])
    dec = reference.Decoder(**cfg["ddconfig"])
    assert enc.downsampling_factor == 16
    assert [len(d.attn) for d in enc.down] == [0, 0, 0, 0, 2]
    assert [len(u.attn) for u in dec.up] == [0, 0, 0, 0, 3]
    # taming's vqgan_imagenet_f16_16384 first stage (encoder + decoder) has about 72 M parameters
    params = sum(p.numel() for m in (enc, dec) for p in m.parameters())
    assert 70e6 < params < 75e6


def test_unknown_config_keys_are_ignored():
    enc = reference.Encoder(**ddconfig(), some_future_key=1, use_checkpoint=False)
    assert isinstance(enc, reference.Encoder)


def test_double_z_and_give_pre_end_and_tanh():
    enc = reference.Encoder(**ddconfig(double_z=True))
    x = torch.randn(1, 3, 32, 32)
    assert enc(x).shape == (1, 8, 16, 16)
    pre = reference.Decoder(**ddconfig(give_pre_end=True))
    assert pre(torch.randn(1, 4, 16, 16)).shape == (1, 32, 32, 32)
    tanh = reference.Decoder(**ddconfig(tanh_out=True))
    with torch.no_grad():
        for p in tanh.conv_out.parameters():
            p.mul_(100)
        out = tanh(torch.randn(1, 4, 16, 16))
    assert out.abs().max() <= 1.0


def test_attn_type_none_and_avgpool_downsample_and_conv_shortcut():
    enc = reference.Encoder(**ddconfig(attn_type="none", resamp_with_conv=False))
    assert not any(isinstance(m, reference.AttnBlock) for m in enc.modules())
    assert not hasattr(enc.down[0].downsample, "conv")
    assert enc(torch.randn(1, 3, 32, 32)).shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="attn_type"):
        reference.Encoder(**ddconfig(attn_type="linear"))
    block = reference.ResnetBlock(in_channels=32, out_channels=64, conv_shortcut=True, temb_channels=0)
    assert "conv_shortcut.weight" in block.state_dict()


def test_autoencoder_kl_posterior():
    model = reference.AutoencoderKL(ddconfig(double_z=True), embed_dim=3).eval()
    x = torch.randn(2, 3, 32, 32)
    posterior = model.encode(x)
    assert posterior.mean.shape == (2, 3, 16, 16)
    assert posterior.kl().shape == (2,)
    sample = posterior.sample(generator=torch.Generator().manual_seed(0))
    assert posterior.nll(sample).shape == (2,)
    dec, post = model(x, sample_posterior=False)
    assert dec.shape == x.shape
    torch.testing.assert_close(dec, model.decode(post.mode()))
    with pytest.raises(ValueError, match="double_z"):
        reference.AutoencoderKL(ddconfig(double_z=False), embed_dim=3)


def test_gaussian_kl_and_nll_formulas():
    mean = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    logvar = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    dist = reference.DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))
    normal = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    standard = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl = torch.distributions.kl_divergence(normal, standard).sum((1, 2, 3))
    torch.testing.assert_close(dist.kl(), kl)
    sample = torch.randn_like(mean)
    torch.testing.assert_close(dist.nll(sample), -normal.log_prob(sample).sum((1, 2, 3)))
    other = reference.DiagonalGaussianDistribution(torch.cat([mean * 0.5, logvar * 0.1], 1))
    other_normal = torch.distributions.Normal(other.mean, other.std)
    torch.testing.assert_close(dist.kl(other), torch.distributions.kl_divergence(normal, other_normal).sum((1, 2, 3)))
    point = reference.DiagonalGaussianDistribution(torch.cat([mean, logvar], 1), deterministic=True)
    torch.testing.assert_close(point.sample(), mean)


def test_decode_code_round_trip():
    model = reference.VQModel(ddconfig(), n_embed=16, embed_dim=4, sane_index_shape=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        quant, _, (_, _, indices) = model.encode(x)
        assert indices.shape == (1, 16, 16)
        torch.testing.assert_close(model.decode_code(indices), model.decode(quant))


class TestBadInput:
    def setup_method(self):
        self.model = reference.VQModel(ddconfig(), n_embed=16, embed_dim=4)

    def test_wrong_channel_count(self):
        with pytest.raises(ValueError, match="in_channels"):
            self.model.encode(torch.randn(1, 4, 32, 32))
        with pytest.raises(ValueError, match="z_channels"):
            self.model.decoder(torch.randn(1, 5, 16, 16))
        with pytest.raises(ValueError, match="embed_dim"):
            self.model.decode(torch.randn(1, 5, 16, 16))

    def test_spatial_size_not_divisible(self):
        with pytest.raises(ValueError, match="divisible by the downsampling factor 2"):
            self.model.encode(torch.randn(1, 3, 32, 33))

    def test_wrong_rank_and_dtype(self):
        with pytest.raises(ValueError, match="x must have 4 dimensions"):
            self.model.encode(torch.randn(3, 32, 32))
        with pytest.raises(TypeError, match="x must have dtype"):
            self.model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.int64))

    def test_wrong_index_dtype(self):
        with pytest.raises(TypeError, match="code_b must have dtype"):
            self.model.decode_code(torch.zeros(1, 16, 16))
        with pytest.raises(TypeError, match="indices must have dtype"):
            self.model.quantize.get_codebook_entry(torch.zeros(4), (1, 2, 2, 4))

    def test_index_out_of_range(self):
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\)"):
            self.model.decode_code(torch.full((1, 2, 2), 16))

    def test_bad_config(self):
        with pytest.raises(ValueError, match="ch_mult"):
            reference.Encoder(**ddconfig(ch_mult=[]))
        with pytest.raises(ValueError, match="ddconfig is missing the key 'z_channels'"):
            reference.VQModel({k: v for k, v in ddconfig().items() if k != "z_channels"}, n_embed=4, embed_dim=4)
        with pytest.raises(TypeError, match="n_embed"):
            reference.VQModel(ddconfig(), embed_dim=4)
