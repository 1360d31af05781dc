"""vqvae_fast._device: the device guard, cached device facts, and every launcher launching under
the guard of its input's device. The guard's logic and the launchers' use of it are checked
everywhere (patched CUDA queries, Triton's interpreter); the real thing where two GPUs exist."""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch

import vqvae_fast
from vqvae_fast import _device
from vqvae_fast.reference import ops as R


class _FakeCudaTensor:
    """Only what the guard reads of a tensor: its device."""

    def __init__(self, index):
        self.device = torch.device("cuda", index)


def test_guard_is_a_shared_no_op_off_cuda_and_on_the_current_device(monkeypatch):
    assert _device.device_guard(torch.empty(1)) is _device._NO_GUARD
    assert _device.device_guard(torch.empty(1, device="meta")) is _device._NO_GUARD
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert _device.device_guard(_FakeCudaTensor(1)) is _device._NO_GUARD


def test_guard_switches_to_another_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    guard = _device.device_guard(_FakeCudaTensor(1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_device_facts_are_queried_once_per_device(monkeypatch):
    calls = []

    class Props:
        major, minor, multi_processor_count = 8, 0, 108

    def properties(index):
        calls.append(index)
        return Props()

    monkeypatch.setattr(_device, "_PROPERTIES", {})
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    for _ in range(3):
        assert _device.sm_count(torch.device("cuda", 3)) == 108
        assert _device.capability(torch.device("cuda", 3)) == 80
    assert calls == [3]
    # off CUDA: an H100's, with nothing queried
    assert _device.sm_count(torch.device("cpu")) == 132 and _device.capability(torch.device("meta")) == 90
    assert calls == [3]


def test_nothing_is_queried_at_import():
    import subprocess
    import sys

    code = ("import torch; calls = []\n"
            "torch.cuda.get_device_properties = lambda *a: calls.append(a)\n"
            "import vqvae_fast._device, vqvae_fast; print(len(calls))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"


# ----------------------------------------------------------------------------------------------
# Every launcher launches inside the guard of its input's device (interpreter: CPU tensors)

LAUNCHERS = ("group_norm_silu", "spatial_attention", "spatial_attention_backward", "codebook_argmin")


@pytest.fixture
def guarded(monkeypatch, triton_device):
    """Per launcher module: the tensors its guard was asked for; its launches must run inside."""
    if triton_device != "cpu":
        pytest.skip("patches the launchers; runs through the interpreter")
    state = {"inside": False, "guarded": []}

    @contextlib.contextmanager
    def guard(t):
        state["guarded"].append(t)
        state["inside"] = True
        try:
            yield
        finally:
            state["inside"] = False

    def run(launches):
        assert state["inside"], "a launch outside the device guard"
        for launch in launches:
            launch()

    for name in LAUNCHERS:
        module = importlib.import_module(f"vqvae_fast.kernels.{name}")
        monkeypatch.setattr(module, "device_guard", guard)
        monkeypatch.setattr(module, "run", run)
    return state


def test_every_launcher_runs_under_its_inputs_guard(guarded):
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    y = vqvae_fast.group_norm_silu(x, 4)
    y.backward(torch.ones_like(y))
    assert [t.device for t in guarded["guarded"]] == [x.device] * 2  # forward, backward
    torch.testing.assert_close(y, R.group_norm_silu(x, 4))

    guarded["guarded"].clear()
    q, k, v = (torch.randn(1, 64, 16, dtype=torch.float16, requires_grad=True) for _ in range(3))
    out = vqvae_fast.spatial_attention(q, k, v)
    out.backward(torch.ones_like(out))
    assert len(guarded["guarded"]) == 2  # forward, backward

    guarded["guarded"].clear()
    z, codebook = torch.randn(2, 8, 4, 4), torch.randn(16, 8)
    indices = vqvae_fast.codebook_argmin(z, codebook)
    assert len(guarded["guarded"]) == 1 and torch.equal(indices, R.codebook_argmin(z, codebook))


# ----------------------------------------------------------------------------------------------
# Two GPUs: inputs on the second while the first is current


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_run_on_the_inputs_gpu():
    from vqvae_fast import _backend

    if _backend.triton_status() is not None:
        pytest.skip(_backend.triton_status())
    torch.cuda.set_device(0)
    second = torch.device("cuda", 1)
    x = torch.randn(2, 64, 8, 8, device=second, dtype=torch.float16)
    q, k, v = (torch.randn(1, 64, 64, device=second, dtype=torch.float16) for _ in range(3))
    z, codebook = torch.randn(2, 16, 8, 8, device=second), torch.randn(512, 16, device=second)
    with vqvae_fast.use_backend("triton"):
        y = vqvae_fast.group_norm_silu(x, 32)
        out = vqvae_fast.spatial_attention(q, k, v)
        indices = vqvae_fast.codebook_argmin(z, codebook)
    assert y.device == out.device == indices.device == second
    assert torch.cuda.current_device() == 0
    torch.testing.assert_close(y.float().cpu(), R.group_norm_silu(x.float().cpu(), 32), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.float().cpu(), R.spatial_attention(*(t.float().cpu() for t in (q, k, v))),
                               atol=2e-2, rtol=2e-2)
    assert torch.equal(indices.cpu(), R.codebook_argmin(z.cpu(), codebook.cpu()))
