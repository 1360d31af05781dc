"""Videos: frames sampled at ``fps``, one row of codes per frame (needs PyAV; skipped without it,
where tests/test_tokenize.py checks that videos are listed as skipped instead)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vqvae_fast
from vqvae_fast.tokenize import load_codes
from vqvae_fast.tokenize.manifest import read_manifest
from vqvae_fast.tokenize.preprocess import Preprocess

from tokenize_data import CONFIG, direct_codes, load_fast_model, make_checkpoint

av = pytest.importorskip("av", reason="videos need PyAV (pip install av)")


def write_video(path: str, frames: int, rate: int) -> None:
    """``frames`` frames at ``rate`` fps; frame i is a flat grey of level 10 * i (easy to recognise)."""
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 48, 40, "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(frames):
            pixels = np.full((40, 48, 3), 10 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_frames_at_fps(tmp_path):
    (tmp_path / "in").mkdir()
    write_video(str(tmp_path / "in" / "clip.mp4"), frames=20, rate=10)  # 2 s
    checkpoint = make_checkpoint(str(tmp_path / "tiny.ckpt"))
    summary = vqvae_fast.tokenize(str(tmp_path / "in"), str(tmp_path / "out"), checkpoint, config=CONFIG, fps=2.0,
                                  batch_size=3, workers=1, progress=False)
    assert (summary.done, summary.failed, summary.rows) == (1, 0, 4)  # one video, frames at 0, 0.5, 1, 1.5 s
    lines = read_manifest(str(tmp_path / "out"))
    assert [x["frame"] for x in lines] == [0, 1, 2, 3]
    assert [x["time"] for x in lines] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    stored = load_codes(str(tmp_path / "out"))
    assert stored.codes.shape == (4, 16, 16) and stored.frames == [0, 1, 2, 3]
    pre = Preprocess((32, 32))
    pixels = []
    with av.open(str(tmp_path / "in" / "clip.mp4")) as container:
        decoded = [frame.to_image() for frame in container.decode(video=0)]
    for source_frame in (0, 5, 10, 15):
        pixels.append(pre(decoded[source_frame]))
    pixels = torch.stack(pixels)
    assert [round(float(p.float().mean()) / 10) for p in pixels] == [0, 5, 10, 15]  # the right frames
    np.testing.assert_array_equal(stored.codes, direct_codes(load_fast_model(checkpoint), pixels).numpy())
