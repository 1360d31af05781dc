"""The model kinds of ``vqvae-fast tokenize``: taming yaml / JSON configs, ``vqvae_fast.configs``
names, diffusers ``VQModel`` folders (codes against diffusers' own, unaccelerated model), the
registry and its planned-kind messages (the icetk kind: tests/test_icetk_tokenizer.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vqvae_fast
from vqvae_fast import configs
from vqvae_fast.tokenize import MODEL_KINDS, ModelKind, ModelUnavailableError, load_codes, register_model_kind
from vqvae_fast.tokenize.model_kinds import PLANNED_KINDS, resolve_model_source

import peers
from tokenize_data import CONFIG, make_checkpoint, make_images
from test_tokenize import preprocessed

pytest.importorskip("PIL")
RUN = dict(batch_size=8, workers=0, shard_size=64, progress=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenize_models")
    names = make_images(str(root / "images"), count=12)
    return root, names


def taming_yaml_config() -> dict:
    cfg = configs.get_config(CONFIG)
    return {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel",
                      "params": {**cfg, "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}}}


def test_taming_yaml_json_and_config_name_give_the_same_codes(images, tmp_path):
    root, names = images
    checkpoint = make_checkpoint(str(tmp_path / "model.ckpt"))
    (tmp_path / "model.json").write_text(json.dumps(taming_yaml_config()))
    runs = {"name": dict(model=f"config:{CONFIG}", checkpoint=checkpoint),
            "json": dict(model=checkpoint, config=str(tmp_path / "model.json"))}
    try:
        import yaml

        (tmp_path / "model.yaml").write_text(yaml.safe_dump(taming_yaml_config()))
        runs["yaml"] = dict(model=f"taming:{checkpoint}", config=str(tmp_path / "model.yaml"))
    except ImportError:
        pass  # yaml configs need PyYAML; JSON is read without it
    codes = {}
    for name, kwargs in runs.items():
        summary = vqvae_fast.tokenize(str(root / "images"), str(tmp_path / name), **kwargs, **RUN)
        assert summary.done == 12
        codes[name] = load_codes(str(tmp_path / name)).codes
    for name in runs:
        np.testing.assert_array_equal(codes[name], codes["name"])


def test_diffusers_folder_matches_diffusers_own_model(images, tmp_path):
    if not peers.have("diffusers"):
        pytest.skip("diffusers is not installed")
    root, names = images
    torch.manual_seed(0)
    model = peers.randomize_norms(peers.diffusers_vq_model()).eval()
    with torch.no_grad():
        model.quantize.embedding.weight.normal_(0, 1)
    folder = tmp_path / "vqmodel"
    model.save_pretrained(str(folder))
    out = str(tmp_path / "out")
    summary = vqvae_fast.tokenize(str(root / "images"), out, f"diffusers:{folder}", **RUN)
    assert summary.done == 12
    stored = load_codes(out)
    assert stored.header["fingerprint"]["model"]["kind"] == "diffusers"
    pixels = preprocessed(root / "images", names)
    with torch.no_grad():
        latents = model.encode(pixels.float() / 127.5 - 1).latents
        indices = model.quantize(latents)[2][2].reshape(len(names), 16, 16)
    np.testing.assert_array_equal(stored.codes, indices.numpy())
    assert vqvae_fast.tokenize(str(root / "images"), out, str(folder), **RUN).already_committed == 15  # detected
    from vqvae_fast.tokenize import detokenize

    assert len(detokenize(out, str(tmp_path / "png"), count=2)) == 2


def test_model_kind_resolution(monkeypatch):
    assert resolve_model_source(CONFIG, checkpoint="x.ckpt").kind == "config"
    assert resolve_model_source("taming:missing.ckpt", config=CONFIG).kind == "taming"
    assert resolve_model_source("icetk:cogview.pt", level=1).kind == "icetk"  # tests/test_icetk_tokenizer.py
    with pytest.raises(ValueError, match="level applies to icetk models only"):
        resolve_model_source("taming:missing.ckpt", config=CONFIG, level=1)
    with pytest.raises(ValueError, match="neither a checkpoint file"):
        resolve_model_source("nothing-here")
    monkeypatch.setitem(PLANNED_KINDS, "future", "the future kind is not available yet")
    with pytest.raises(ModelUnavailableError, match="future kind is not available"):
        resolve_model_source("future:model.pt")


def test_a_registered_kind_is_used(images, tmp_path):
    """A new kind (as the icetk one is) only needs a loader and a fingerprint."""
    root, names = images

    class MeanColour:  # codes: the mean of each 8x8 block's red channel, quantised to 16 levels
        codebook_size, downsampling, native_size = 16, 8, 32
        description = {"class": "MeanColour"}

        def encode_to_codes(self, images):
            red = images[:, 0].float().unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2))  # (B, 4, 4)
            codes = (red / 16).long().clamp(0, 15)
            return codes, tuple(codes.shape[1:])

        def decode_codes(self, codes):
            return (codes * 16).to(torch.uint8)[:, None].repeat_interleave(8, 2).repeat_interleave(8, 3).repeat(1, 3, 1, 1)

    register_model_kind(ModelKind("mean-colour", "test kind", lambda source, device, dtype: MeanColour(),
                                  lambda source: {"name": source.path}))
    try:
        vqvae_fast.tokenize(str(root / "images"), str(tmp_path / "out"), "mean-colour:v1", **RUN)
        stored = load_codes(str(tmp_path / "out"))
        assert stored.codes.dtype == np.uint8 and stored.codes.shape == (12, 4, 4)
        expected, _ = MeanColour().encode_to_codes(preprocessed(root / "images", names))
        np.testing.assert_array_equal(stored.codes, expected.numpy())
        with pytest.raises(ValueError, match="already registered"):
            register_model_kind(ModelKind("mean-colour", "again", None, None))
    finally:
        MODEL_KINDS.pop("mean-colour", None)
