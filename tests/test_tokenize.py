"""``vqvae_fast.tokenize`` in one process: codes against the model called directly, inputs
(folders, webdataset shards, list files, corrupt files), the output format, resume and refusal."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

import vqvae_fast
from vqvae_fast.tokenize import codes_dtype, detokenize, load_codes
from vqvae_fast.tokenize.inputs import discover
from vqvae_fast.tokenize.manifest import read_manifest
from vqvae_fast.tokenize.preprocess import Preprocess, open_image
from vqvae_fast.tokenize.shards import shard_dir

from tokenize_data import CONFIG, CORRUPT, direct_codes, load_fast_model, make_checkpoint, make_images, make_shard

pytest.importorskip("PIL")
RUN = dict(config=CONFIG, batch_size=8, workers=1, shard_size=16, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenize")
    names = make_images(str(root / "images"))
    checkpoint = make_checkpoint(str(root / "tiny.ckpt"))
    summary = vqvae_fast.tokenize(str(root / "images"), str(root / "out"), checkpoint, **RUN)
    return {"root": root, "names": names, "checkpoint": checkpoint, "out": str(root / "out"), "summary": summary}


def preprocessed(folder, names, size=(32, 32), crop="center") -> torch.Tensor:
    pre = Preprocess(size, crop)
    pixels = []
    for name in names:
        with open_image(os.path.join(folder, name)) as image:
            pixels.append(pre(image))
    return torch.stack(pixels)


def test_codes_equal_the_model_called_directly(data):
    stored = load_codes(data["out"])
    assert stored.sources == data["names"]  # input order: the sorted walk
    pixels = preprocessed(data["root"] / "images", data["names"])
    expected = direct_codes(load_fast_model(data["checkpoint"]), pixels)
    np.testing.assert_array_equal(stored.codes, expected.numpy())
    assert stored.codes.dtype == np.uint8 and stored.codes.shape == (50, 16, 16)
    # the fast model's codes are the reference's (the tiny model has no near ties)
    from vqvae_fast import configs, reference

    cfg = configs.get_config(CONFIG)
    ref = reference.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
    ref.load_checkpoint(data["checkpoint"])
    np.testing.assert_array_equal(stored.codes, direct_codes(ref.eval(), pixels).numpy())
    assert len(np.unique(stored.codes)) > 4  # varied codes, so equality means something


def test_corrupt_files_are_listed_not_fatal(data):
    summary = data["summary"]
    assert (summary.done, summary.failed, summary.skipped, summary.rows) == (50, 3, 0, 50)
    lines = read_manifest(data["out"])
    failed = {line["source"]: line["reason"] for line in lines if line["status"] == "failed"}
    assert set(failed) == set(CORRUPT)
    assert all(reason for reason in failed.values())
    assert "truncated" in failed["broken/truncated.jpg"] or "OSError" in failed["broken/truncated.jpg"]


def test_manifest_and_header(data):
    lines = read_manifest(data["out"])
    assert len(lines) == 53 and len({line["source"] for line in lines}) == 53  # every input once
    for line in lines:
        if line["status"] == "ok":
            codes = np.load(os.path.join(shard_dir(data["out"]), line["shard"] + ".npy"))[line["row"]]
            assert codes.shape == (16, 16) and line["grid"] == "16x16"
    with open(os.path.join(data["out"], "header.json")) as f:
        header = json.load(f)
    fp = header["fingerprint"]
    with open(data["checkpoint"], "rb") as f:
        assert fp["model"]["checkpoint_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert (fp["codebook_size"], fp["codes_dtype"], fp["grid"], fp["dtype"]) == (64, "uint8", [16, 16], "fp32")
    assert fp["preprocess"]["size"] == [32, 32] and fp["preprocess"]["crop"] == "center"
    assert header["versions"]["torch"] == torch.__version__
    shards = sorted(n for n in os.listdir(shard_dir(data["out"])))
    assert all(n.endswith((".npy", ".json")) for n in shards) and len(shards) == 2 * 4  # 53 inputs / 16


def test_rerun_resumes_and_mismatch_is_refused(data, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(data["out"], out)
    again = vqvae_fast.tokenize(str(data["root"] / "images"), out, data["checkpoint"], **RUN)
    assert (again.done, again.failed, again.already_committed) == (0, 0, 53)
    with pytest.raises(ValueError, match="another model or preprocessing.*preprocess.size"):
        vqvae_fast.tokenize(str(data["root"] / "images"), out, data["checkpoint"], **{**RUN, "size": 64})
    other = make_checkpoint(str(tmp_path / "other.ckpt"), seed=1)
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        vqvae_fast.tokenize(str(data["root"] / "images"), out, other, **RUN)
    with pytest.raises(ValueError, match="dtype"):
        vqvae_fast.tokenize(str(data["root"] / "images"), out, data["checkpoint"], **{**RUN, "dtype": "bf16"})


def test_leftovers_of_an_interrupted_run_are_cleaned(data, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(data["out"], out)
    folder = shard_dir(out)
    last = sorted(n for n in os.listdir(folder) if n.endswith(".json"))[-1]
    os.remove(os.path.join(folder, last))  # killed between the .npy and the .json commit
    open(os.path.join(folder, "r00000-000009.npy.tmp-123"), "wb").close()  # killed while writing
    summary = vqvae_fast.tokenize(str(data["root"] / "images"), out, data["checkpoint"], **RUN)
    assert summary.done + summary.failed == 53 - 48 and summary.already_committed == 48
    assert any("removed 2 uncommitted files" in n for n in summary.notes)
    lines = read_manifest(out)
    assert len(lines) == 53 and len({line["source"] for line in lines}) == 53
    np.testing.assert_array_equal(load_codes(out).codes, load_codes(data["out"]).codes)


def test_retry_failed(data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(data["root"] / "images", images)
    out = str(tmp_path / "out")
    shutil.copytree(data["out"], out)
    shutil.copy(images / data["names"][0], images / "broken" / "not_an_image.png")  # repaired
    assert vqvae_fast.tokenize(str(images), out, data["checkpoint"], **RUN).done == 0
    summary = vqvae_fast.tokenize(str(images), out, data["checkpoint"], retry_failed=True, **RUN)
    assert (summary.done, summary.failed, summary.already_committed) == (1, 2, 50)
    stored = load_codes(out)
    assert len(stored) == 51 and stored.sources.count("broken/not_an_image.png") == 1
    np.testing.assert_array_equal(stored.codes[stored.sources.index("broken/not_an_image.png")], stored.codes[0])


def test_webdataset_shard_input(data, tmp_path):
    shard = str(tmp_path / "shard-000000.tar")
    members = make_shard(shard)
    summary = vqvae_fast.tokenize(shard, str(tmp_path / "out"), data["checkpoint"], **RUN)
    assert (summary.done, summary.failed) == (12, 1)
    stored = load_codes(str(tmp_path / "out"))
    assert stored.sources == [f"shard-000000.tar::{m}" for m in members]
    unpacked = tmp_path / "unpacked"
    import tarfile

    with tarfile.open(shard) as tar:
        tar.extractall(unpacked, filter="data")
    expected = direct_codes(load_fast_model(data["checkpoint"]), preprocessed(unpacked, members))
    np.testing.assert_array_equal(stored.codes, expected.numpy())


def test_list_file_input(data, tmp_path):
    listing = tmp_path / "paths.txt"
    images = os.path.relpath(data["root"] / "images", tmp_path)
    picked = data["names"][:5]
    lines = ["# a comment", *(f"{images}/{n}" for n in picked), f"{images}/{picked[0]}", "missing.jpg", ""]
    listing.write_text("\n".join(lines))
    summary = vqvae_fast.tokenize(str(listing), str(tmp_path / "out"), data["checkpoint"], **RUN)
    assert (summary.done, summary.failed) == (5, 1)  # the repeated path counts once
    stored = load_codes(str(tmp_path / "out"))
    np.testing.assert_array_equal(stored.codes, load_codes(data["out"], sources=picked).codes)


def test_detokenize_round_trips_shapes(data, tmp_path):
    from PIL import Image

    paths = detokenize(data["out"], str(tmp_path / "png"), count=3)
    assert len(paths) == 3
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    stored = load_codes(data["out"])
    model = load_fast_model(data["checkpoint"])
    with torch.no_grad():
        expected = model.decode_code(torch.from_numpy(stored.codes[:1].astype(np.int64)))
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    with Image.open(paths[0]) as image:  # decoded in a batch of 3 here, of 1 above: rounding may differ by 1
        assert np.abs(np.asarray(image).astype(int) - expected).max() <= 1
    other = make_checkpoint(str(tmp_path / "other.ckpt"), seed=1)
    with pytest.raises(ValueError, match="model differs"):
        detokenize(data["out"], str(tmp_path / "png2"), model=other, config=CONFIG)


def test_dry_run_writes_nothing(data, tmp_path):
    out = tmp_path / "out"
    summary = vqvae_fast.tokenize(str(data["root"] / "images"), str(out), data["checkpoint"], dry_run=True, **RUN)
    assert summary.dry_run and summary.done == 53 and not out.exists()


@pytest.mark.parametrize("size, dtype", [(2, np.uint8), (256, np.uint8), (257, np.int16), (16384, np.int16),
                                         (20000, np.int16), (32768, np.int16), (32769, np.int32)])
def test_codes_dtype_is_the_smallest_that_holds_the_codebook(size, dtype):
    assert codes_dtype(size) == np.dtype(dtype)
    assert np.iinfo(codes_dtype(size)).max >= size - 1


def test_center_crop_and_exif_orientation(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    with open_image(str(tmp_path / "wide.png")) as image:
        same_scale = Preprocess((40, 40), "center")(image)
    np.testing.assert_array_equal(same_scale.permute(1, 2, 0).numpy(), pixels[:, 20:60])  # the middle, exactly
    with open_image(str(tmp_path / "wide.png")) as image:
        got = Preprocess((20, 20), "center")(image).permute(1, 2, 0).numpy()
    # away from the edges (where the resize reads the pixels around the crop, not a clamped edge)
    # the crop-in-resize equals cropping first
    expected = np.asarray(Image.fromarray(pixels[:, 20:60]).resize((20, 20), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(got[2:-2, 2:-2], expected[2:-2, 2:-2])
    with open_image(str(tmp_path / "wide.png")) as image:
        assert Preprocess((10, 30), "stretch")(image).shape == (3, 10, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    Image.fromarray(pixels).save(tmp_path / "rotated.png", exif=exif)
    with open_image(str(tmp_path / "rotated.png")) as image:
        rotated = Preprocess((80, 40), "stretch")(image)
    with open_image(str(tmp_path / "wide.png")) as image:
        plain = Preprocess((80, 40), "stretch")(image.transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(rotated.numpy(), plain.numpy())


def test_videos_without_a_reader_are_skipped(data, tmp_path):
    from vqvae_fast.tokenize import video

    if video.have_reader():
        pytest.skip("PyAV is installed: videos are read, not skipped")
    shutil.copytree(data["root"] / "images" / "a" / "b", tmp_path / "in")
    (tmp_path / "in" / "clip.mp4").write_bytes(b"\0" * 64)
    summary = vqvae_fast.tokenize(str(tmp_path / "in"), str(tmp_path / "out"), data["checkpoint"], **RUN)
    assert summary.unsupported == 1 and summary.failed == 0 and summary.done == 10
    assert any("pip install av" in note for note in summary.notes)
    line = [x for x in read_manifest(str(tmp_path / "out")) if x["source"] == "clip.mp4"]
    assert line[0]["status"] == "skipped" and "av" in line[0]["reason"]


def test_discovery_is_sorted_and_skips_non_images(data):
    items = discover(str(data["root"] / "images"))
    sources = [item.source for item in items]
    assert sources == sorted(sources) and "notes.txt" not in sources and len(sources) == 53


def test_bad_arguments_raise_clear_errors(data, tmp_path):
    images, ckpt = str(data["root"] / "images"), data["checkpoint"]
    out = str(tmp_path / "out")
    cases = [
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(crop="zoom"), ValueError, "crop"),
        (dict(dtype="int8"), ValueError, "dtype"),
        (dict(size=33), ValueError, "divisible"),
        (dict(size="0x4"), ValueError, "size"),
        (dict(fps=0), ValueError, "fps"),
        (dict(config=None), ValueError, "config is required"),
        (dict(level=1), ValueError, "level"),
    ]
    for overrides, error, match in cases:
        with pytest.raises(error, match=match):
            vqvae_fast.tokenize(images, out, ckpt, **{**RUN, **overrides})
    with pytest.raises(ValueError, match="does not exist"):
        vqvae_fast.tokenize(str(tmp_path / "nowhere"), out, ckpt, **RUN)
    with pytest.raises(ValueError, match="model checkpoint 'model.pt' is not a file"):
        vqvae_fast.tokenize(images, out, "icetk:model.pt", level=1)
    with pytest.raises(ValueError, match="neither a checkpoint file"):
        vqvae_fast.tokenize(images, out, str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="no header.json"):
        load_codes(str(tmp_path))
    assert not os.path.exists(out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_pipeline_matches_the_model_on_cuda(data, tmp_path, dtype):
    """Pinned batches, asynchronous copies and the one-batch-late read-back give the model's codes."""
    out = str(tmp_path / "out")
    summary = vqvae_fast.tokenize(str(data["root"] / "images"), out, data["checkpoint"], device="cuda",
                                  **{**RUN, "dtype": dtype, "workers": 2})
    assert (summary.done, summary.failed) == (50, 3)
    model = load_fast_model(data["checkpoint"]).to("cuda", {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
    from vqvae_fast.tokenize.dataset import group_batches, loader_batch_size

    items = discover(str(data["root"] / "images"))
    expected, names = [], []
    for positions in group_batches(items, loader_batch_size(8, 2)):  # the job's model batches: loader
        names += [items[p].source for p in positions if items[p].source not in CORRUPT]  # batches joined
        if len(names) >= 8 or positions[-1] == len(items) - 1:  # until they hold 8 images
            pixels = preprocessed(data["root"] / "images", names).cuda()
            expected += [codes_of(model, pixels[i:i + 8]) for i in range(0, len(names), 8)]  # 8 per call
            names = []
    expected = torch.cat(expected)
    np.testing.assert_array_equal(load_codes(out).codes, expected.cpu().numpy())


def codes_of(model, pixels: torch.Tensor) -> torch.Tensor:
    """The model's own encode on uint8 pixels, scaled as the taming kind scales them, in its dtype."""
    x = (pixels.float() / 127.5 - 1.0).to(next(model.parameters()).dtype)
    with torch.no_grad():
        _, _, (_, _, indices) = model.encode(x)
    return indices.reshape(x.shape[0], x.shape[2] // 2, x.shape[3] // 2)
