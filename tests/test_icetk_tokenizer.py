"""icetk's image tokenizer on the fast HVQVAE: ``vqvae_fast.icetk.ImageTokenizer`` (what CogVideo
calls per frame) and the ``icetk`` kind of the dataset tokenizer (``--model icetk:CKPT --level L``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vqvae_fast
from vqvae_fast import icetk
from vqvae_fast.reference import icetk as ref
from vqvae_fast.tokenize import MODEL_KINDS, load_codes
from vqvae_fast.tokenize.model_kinds import resolve_model_source

from icetk_peer import build_icetk, spread_codebook

MEAN = torch.tensor(ref.IMAGE_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(ref.IMAGE_STD).view(1, 3, 1, 1)


def reference_model():
    torch.manual_seed(0)
    return spread_codebook(ref.HVQVAE.from_config(ref.tiny_config())).eval()


def test_encode_and_decode_are_icetks_pipeline():
    """normalise -> single_encode(img, l) -> ids; ids -> single_decode_code(ids, l) -> image."""
    slow = reference_model()
    fast = icetk.HVQVAE.from_config(ref.tiny_config())
    fast.load_state_dict(slow.state_dict())
    tokenizer = icetk.ImageTokenizer(model=fast, device="cpu")
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        for level in (0, 1, 2):
            want = slow.single_encode((images - MEAN) / STD, level)[2]
            codes = tokenizer.encode(images, l=level)
            assert torch.equal(codes, want.view(3, -1))
            assert torch.equal(tokenizer.encode_grid(images[0], level), want[:1])
            image = slow.single_decode_code(want, level) * STD + MEAN
            torch.testing.assert_close(tokenizer.decode(codes, l=level), image, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(tokenizer.decode(want, l=level), image, rtol=1e-4, atol=1e-4)
    assert len(tokenizer) == 96 and tokenizer.downsampling(1) == 4
    assert tokenizer.decode(codes[0].tolist(), l=2).shape == (1, 3, 32, 32)


def test_checkpoint_and_icetk_models(tmp_path):
    slow = reference_model()
    path = tmp_path / "ice_image.pt"
    torch.save({"module": slow.state_dict()}, path)
    images = torch.rand(1, 3, 16, 16)
    want = slow.single_encode((images - MEAN) / STD, 1)[2].view(1, -1)
    loaded = icetk.HVQVAE.from_config(ref.tiny_config())
    loaded.load_checkpoint(str(path))
    assert torch.equal(icetk.ImageTokenizer(model=loaded, device="cpu").encode(images), want)
    # a reference (or icetk's own) model is accelerated in place
    tokenizer = icetk.ImageTokenizer(model=slow, device="cpu", dtype=torch.float32)
    assert type(slow.quantize).__module__.startswith("vqvae_fast.nn") and torch.equal(tokenizer.encode(images), want)


def test_icetks_own_model_is_accelerated():
    theirs = spread_codebook(build_icetk(ref.tiny_config())).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs.single_encode((images - MEAN) / STD, 1)[2].view(2, -1)
    tokenizer = icetk.ImageTokenizer(model=theirs, device="cpu")
    assert type(theirs.quantize).__module__ == "vqvae_fast.nn.icetk_quantize"
    assert torch.equal(tokenizer.encode(images), want)


def test_bad_arguments_name_themselves():
    tokenizer = icetk.ImageTokenizer(model=icetk.HVQVAE.from_config(ref.tiny_config()), device="cpu")
    with pytest.raises(ValueError, match="exactly one of model_path"):
        icetk.ImageTokenizer()
    with pytest.raises(ValueError, match="dtype must be one of"):
        icetk.ImageTokenizer(model=torch.nn.Linear(1, 1), dtype=torch.int8)
    with pytest.raises(ValueError, match="images must have 3 channels"):
        tokenizer.encode(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="l must be a level"):
        tokenizer.encode(torch.rand(1, 3, 16, 16), l=3)
    with pytest.raises(ValueError, match="not a square grid"):
        tokenizer.decode(torch.zeros(1, 12, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 96\)"):
        tokenizer.decode(torch.full((1, 2, 2), 96))
    with pytest.raises(TypeError, match="codes must have dtype"):
        tokenizer.decode(torch.zeros(1, 2, 2))


# -- the dataset tokenizer's icetk kind -----------------------------------------------------------


def test_icetk_kind_is_registered():
    assert "icetk" in MODEL_KINDS
    source = resolve_model_source("icetk:ice_image.pt", level=2)
    assert (source.kind, source.path, source.level) == ("icetk", "ice_image.pt", 2)


def test_tokenize_with_an_icetk_checkpoint(tmp_path):
    pytest.importorskip("PIL")
    from test_tokenize import preprocessed
    from tokenize_data import make_images

    names = make_images(str(tmp_path / "images"), count=6)
    slow = reference_model()
    checkpoint = tmp_path / "ice_image.pt"
    torch.save({"module": slow.state_dict()}, checkpoint)
    config = tmp_path / "hvqvae.json"
    config.write_text(json.dumps(ref.tiny_config()))
    out = tmp_path / "codes"
    summary = vqvae_fast.tokenize(str(tmp_path / "images"), str(out), f"icetk:{checkpoint}", config=str(config),
                                  level=1, size=32, batch_size=4, workers=0, progress=False)
    assert summary.done == 6
    stored = load_codes(str(out))
    fingerprint = stored.header["fingerprint"]["model"]
    assert fingerprint["kind"] == "icetk" and fingerprint["level"] == 1
    pixels = preprocessed(tmp_path / "images", names).float() / 255
    with torch.no_grad():
        want = slow.single_encode((pixels - MEAN) / STD, 1)[2]
    assert stored.codes.shape == (6, 8, 8)
    np.testing.assert_array_equal(stored.codes, want.numpy())

    from vqvae_fast.tokenize import detokenize

    paths = detokenize(str(out), str(tmp_path / "png"), count=2)
    assert len(paths) == 2
    with pytest.raises(ValueError, match="l must be a level"):
        vqvae_fast.tokenize(str(tmp_path / "images"), str(tmp_path / "other"), f"icetk:{checkpoint}",
                            config=str(config), level=5, size=32, workers=0, progress=False)
