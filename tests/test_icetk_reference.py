"""vqvae_fast.reference.icetk against icetk 0.0.7's own modules: the same constructor arguments,
state_dict keys, outputs (bit for bit where the computation is the same), gradients and checkpoint
format. icetk's modules are loaded as tests/icetk_peer.py says, or these tests skip."""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch

from vqvae_fast.reference import icetk as ref

from icetk_peer import build_icetk, icetk_module, spread_codebook

CLASSES = {
    "enc_dec": ("Encoder", "Decoder", "ResnetBlock", "AttnBlock", "Upsample", "DownSample", "ResidualDownSample"),
    "quantize": ("VectorQuantize", "VectorQuantizeEMA", "GumbelQuantize"),
    "vqvae_hierarchical": ("HVQVAE",),
}


def _parameters(cls) -> list[tuple[str, object]]:
    sig = inspect.signature(cls.__init__)
    return [(p.name, p.default) for p in sig.parameters.values()
            if p.name != "self" and p.kind is not p.KEYWORD_ONLY]


@pytest.mark.parametrize("module,name", [(m, n) for m, names in CLASSES.items() for n in names])
def test_constructor_arguments_are_icetks(module, name):
    """Names, order and defaults (keyword-only extras aside: ResnetBlock's temb_channels=0)."""
    theirs = getattr(icetk_module(module), name)
    ours = getattr(ref, name)
    want = [(n, tuple(d) if isinstance(d, list) else d) for n, d in _parameters(theirs)]
    got = [(n, tuple(d) if isinstance(d, list) else d) for n, d in _parameters(ours)]
    assert got == want


def test_default_model_has_icetks_keys_and_shapes():
    api = icetk_module("api")
    with torch.device("meta"):
        theirs = api.load_default_HVQVAE()
        ours = ref.load_default_HVQVAE()
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert list(got) == list(want) and got == want
    assert ours.quantize.n_embed == 20000 and ours.levels == 3
    assert [len(d.up) for d in ours.decs] == [5, 4, 3]


def _pair(config, seed=0):
    theirs = spread_codebook(build_icetk(config, seed))
    ours = ref.HVQVAE.from_config(config)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("quantizer", ["VectorQuantizeEMA", "VectorQuantize"])
def test_outputs_equal_icetks(quantizer):
    theirs, ours = _pair(ref.tiny_config(quantizer=quantizer))
    theirs.eval(), ours.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        q_t, d_t, i_t = theirs.encode(x)
        q_o, d_o, i_o = ours.encode(x)
        for a, b in zip(q_o + d_o + i_o, q_t + d_t + i_t):
            assert torch.equal(a, b)
        assert len({int(c) for c in i_o[0].unique()}) > 10  # the codes are decided by the features
        for a, b in zip(ours(x)[0], theirs(x)[0]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(ours(x)[1], theirs(x)[1])
        for a, b in zip(ours.decode_code(i_o[::-1]), theirs.decode_code(i_t[::-1])):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for level in range(3):
            for a, b in zip(ours.single_encode(x, level), theirs.single_encode(x, level)):
                assert torch.equal(a, b)
            assert torch.equal(ours.single_encode_ids(x, level), theirs.single_encode(x, level)[2])
            torch.testing.assert_close(ours.single_decode_code(i_o[level], level),
                                       theirs.single_decode_code(i_t[level], level), rtol=1e-5, atol=1e-5)
            quant = q_o[2 - level]
            torch.testing.assert_close(ours.single_decode(quant, level), theirs.single_decode(quant, level),
                                       rtol=1e-5, atol=1e-5)


def test_odd_input_sizes_as_icetk():
    theirs, ours = _pair(ref.tiny_config())
    x = torch.randn(1, 3, 37, 29)
    with torch.no_grad():
        for a, b in zip(ours.encode(x)[2], theirs.encode(x)[2]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("quantizer", ["VectorQuantizeEMA", "VectorQuantize"])
def test_training_gradients_and_buffers_as_icetk(quantizer):
    theirs, ours = _pair(ref.tiny_config(quantizer=quantizer))
    theirs.train(), ours.train()
    buffers = {k: v.clone() for k, v in ours.named_buffers()}
    x = torch.randn(2, 3, 32, 32)
    for model in (theirs, ours):
        outs, diff = model(x)
        (sum(o.square().mean() for o in outs) + diff).backward()
    for (name, p_o), p_t in zip(ours.named_parameters(), theirs.parameters()):
        if p_t.grad is None:
            assert p_o.grad is None, name
        else:
            torch.testing.assert_close(p_o.grad, p_t.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    for name, value in ours.named_buffers():  # icetk's forward never updates its EMA statistics
        assert torch.equal(value, buffers[name]), name
    embed_grad = ours.quantize.embed.weight.grad
    assert (embed_grad is None) == (quantizer == "VectorQuantizeEMA")  # the EMA codebook learns no gradient


def test_gumbel_quantizer_as_icetks():
    theirs = icetk_module("quantize").GumbelQuantize(16, 8, 40)
    ours = ref.GumbelQuantize(16, 8, 40)
    ours.load_state_dict(theirs.state_dict())
    z = torch.randn(2, 16, 5, 6)
    for training in (True, False):
        theirs.train(training), ours.train(training)
        torch.manual_seed(3)
        want = theirs(z)
        torch.manual_seed(3)
        got = ours(z)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
        assert torch.equal(got[2], want[2])


def test_checkpoint_in_icetks_format(tmp_path):
    theirs, _ = _pair(ref.tiny_config())
    path = tmp_path / "ice_image.pt"
    torch.save({"module": theirs.state_dict()}, path)
    ours = ref.HVQVAE.from_config(ref.tiny_config())
    report = ours.load_checkpoint(str(path))
    assert not report.ignored and len(report.loaded) == len(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert ref.load_ckpt(ref.HVQVAE.from_config(ref.tiny_config()), str(path)) is not None

    state = dict(theirs.state_dict())
    del state["quantize.cluster_size"], state["quantize.embed_avg"]  # training statistics: optional
    ref.HVQVAE.from_config(ref.tiny_config()).load_checkpoint({"module": state})
    del state["enc.conv_in.weight"]
    with pytest.raises(ValueError, match="missing 1 keys.*enc.conv_in.weight"):
        ref.HVQVAE.from_config(ref.tiny_config()).load_checkpoint({"module": state})


def test_configs_build_by_class_name(tmp_path):
    config = ref.tiny_config(levels=2)
    path = tmp_path / "hvqvae.json"
    path.write_text(json.dumps(config))
    from_json = ref.HVQVAE.from_config(str(path))
    assert from_json.levels == 2 and len(from_json.decs) == 2 and len(from_json.down_samplers) == 1
    renamed = copy.deepcopy(config)
    renamed["params"]["enc_config"]["target"] = "icetk.vqvae.enc_dec.Encoder"
    assert isinstance(ref.HVQVAE.from_config(renamed).enc, ref.Encoder)
    bad = copy.deepcopy(config)
    bad["params"]["quantize_config"]["target"] = "..vqvae.KMeansQuantize"
    with pytest.raises(ValueError, match="KMeansQuantize"):
        ref.HVQVAE.from_config(bad)
    with pytest.raises(ValueError, match="needs 2 dec_configs"):
        ref.HVQVAE(**dict(config["params"], dec_configs=config["params"]["dec_configs"][:1]))
    with pytest.raises(ValueError, match="'target'"):
        ref.HVQVAE.from_config({"params": {}})
    with pytest.raises(ValueError, match="l must be a level in \\[0, 1\\]"):
        from_json.single_encode(torch.randn(1, 3, 16, 16), 2)


def test_icetk_builds_our_configs():
    """The configs are icetk's: its own new_module builds them."""
    model = icetk_module("api").new_module(ref.tiny_config())
    assert type(model).__name__ == "HVQVAE" and model.levels == 3


def test_residual_downsample_is_pool_plus_padded_conv():
    block = ref.ResidualDownSample(8)
    x = torch.randn(2, 8, 9, 7)
    conv = block.conv_down_sampler.conv
    want = torch.nn.functional.avg_pool2d(x, 2) + conv(torch.nn.functional.pad(x, (0, 1, 0, 1)))
    torch.testing.assert_close(block(x), want)
    assert list(block.state_dict()) == ["conv_down_sampler.conv.weight", "conv_down_sampler.conv.bias"]


def test_image_normalisation_constants_are_icetks():
    """icetk.image_tokenizer imports torchvision: its constants are read from its source text."""
    import importlib.util
    import re

    icetk_module("api")  # the bare icetk package is registered
    spec = importlib.util.find_spec("icetk.image_tokenizer")  # found, not run
    lists = re.findall(r"\[([0-9., ]+)\]", spec.loader.get_source(spec.name))
    mean, std = (tuple(float(v) for v in group.split(",")) for group in lists[:2])
    assert (ref.IMAGE_MEAN, ref.IMAGE_STD) == (mean, std)
