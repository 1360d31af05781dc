"""``vqvae-fast tokenize`` as users run it: under ``torchrun`` with two processes (gloo), and
killed with SIGKILL in the middle of a run, then rerun."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import vqvae_fast
from vqvae_fast.tokenize import load_codes
from vqvae_fast.tokenize.manifest import read_manifest
from vqvae_fast.tokenize.shards import shard_dir

from tokenize_data import CONFIG, make_checkpoint, make_images

pytest.importorskip("PIL")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config", CONFIG, "--batch-size", "4", "--shard-size", "4", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenize_processes")
    make_images(str(root / "images"))
    checkpoint = make_checkpoint(str(root / "tiny.ckpt"))
    vqvae_fast.tokenize(str(root / "images"), str(root / "one"), checkpoint, config=CONFIG, batch_size=4,
                        shard_size=4, workers=1, progress=False)
    return root, checkpoint


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def assert_complete(out: str, expected_out: str) -> None:
    lines = read_manifest(out)
    sources = [line["source"] for line in lines]
    assert len(sources) == len(set(sources)) == 53  # every input exactly once
    assert sorted(line["status"] for line in lines).count("ok") == 50
    expected_lines = read_manifest(expected_out)  # the same inputs and statuses, in the same order
    assert [(x["source"], x["status"]) for x in lines] == [(x["source"], x["status"]) for x in expected_lines]
    stored, expected = load_codes(out), load_codes(expected_out)
    assert stored.sources == expected.sources
    np.testing.assert_array_equal(stored.codes, expected.codes)
    rows = sum(np.load(os.path.join(shard_dir(out), n)).shape[0] for n in os.listdir(shard_dir(out))
               if n.endswith(".npy"))
    assert rows == 50  # no codes stored twice


def test_torchrun_two_processes_match_one(baseline, tmp_path):
    root, checkpoint = baseline
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = str(tmp_path / "two")
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "vqvae_fast", "tokenize",
               str(root / "images"), out, "--model", checkpoint, "--device", "cpu", *ARGS]
    result = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokenized 50 inputs, 3 failed" in result.stdout and "on 2 rank(s)" in result.stdout
    names = os.listdir(shard_dir(out))
    assert any(n.startswith("r00000-") for n in names) and any(n.startswith("r00001-") for n in names)
    assert_complete(out, str(root / "one"))


def test_killed_run_resumes_with_every_image_once(baseline, tmp_path):
    root, checkpoint = baseline
    out = str(tmp_path / "killed")
    command = [sys.executable, "-m", "vqvae_fast", "tokenize", str(root / "images"), out, "--model", checkpoint,
               *ARGS]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment(), cwd=REPO)
    deadline = time.monotonic() + 120
    committed = []
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(shard_dir(out)):
            committed = [n for n in os.listdir(shard_dir(out)) if n.endswith(".json")]
        if len(committed) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not os.path.exists(os.path.join(out, "manifest.csv"))
    done_before = len([n for n in os.listdir(shard_dir(out)) if n.endswith(".json")])
    assert 3 <= done_before < 14  # 53 inputs in shards of 4: killed midway

    result = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{4 * done_before} already committed" in result.stdout
    assert_complete(out, str(root / "one"))
