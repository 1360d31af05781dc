"""The backend layer: selection, forcing, info(), and an import that needs nothing optional."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vqvae_fast
from vqvae_fast import _backend


def test_every_op_has_a_reference_backend_on_every_device():
    for name, table in _backend.registered_ops().items():
        assert "reference" in table.backends, name
        with vqvae_fast.use_backend("reference"):
            assert table.select(torch.device("cpu"), torch.float64).name == "reference"


def test_use_backend_nests_and_restores():
    table = _backend.op_backends("group_norm_silu")
    default = table.select(torch.device("cpu"), torch.float32).name
    with vqvae_fast.use_backend("reference"):
        assert table.select(torch.device("cpu"), torch.float32).name == "reference"
        with vqvae_fast.use_backend("reference", ops=["codebook_argmin"]):
            assert _backend.forced_backend("codebook_argmin") == "reference"
    assert table.select(torch.device("cpu"), torch.float32).name == default
    assert _backend.forced_backend("group_norm_silu") is None


def test_use_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        with vqvae_fast.use_backend("tpu"):
            pass
    with pytest.raises(ValueError, match="unknown"):
        with vqvae_fast.use_backend("reference", ops="conv3d"):
            pass


def test_environment_variable_forces_backend(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert _backend.forced_backend("spatial_attention") == "reference"
    monkeypatch.setenv(_backend.ENV_VAR, "gpu")
    with pytest.raises(ValueError, match="VQVAE_FAST_BACKEND must be one of"):
        _backend.forced_backend("spatial_attention")


def test_forced_backend_that_cannot_run_raises():
    table = _backend.OpBackends("demo")
    table.register("cuda", devices=("cuda",), dtypes=(torch.float16,))(lambda: None)
    table.register("reference", devices=None, dtypes=(torch.float32, torch.float16))(lambda: None)
    assert table.select(torch.device("cpu"), torch.float16).name == "reference"
    with _forcing("cuda"):
        with pytest.raises(_backend.BackendUnavailableError, match="runs on cuda tensors, not cpu"):
            table.select(torch.device("cpu"), torch.float16)
    with _forcing("triton"):  # an op without that backend keeps its automatic choice
        assert table.select(torch.device("cpu"), torch.float16).name == "reference"


def test_backend_with_missing_requirement_is_skipped():
    table = _backend.OpBackends("demo")
    table.register("cpu", devices=("cpu",), dtypes=(torch.float32,), requires=lambda: "library missing")(lambda: 1)
    table.register("reference", devices=None, dtypes=(torch.float32,))(lambda: 2)
    assert table.select(torch.device("cpu"), torch.float32).name == "reference"
    described = table.describe(torch.device("cpu"), torch.float32)
    assert described == {"backend": "reference", "not_used": {"cpu": "library missing"}}
    with _forcing("cpu"), pytest.raises(_backend.BackendUnavailableError, match="library missing"):
        table.select(torch.device("cpu"), torch.float32)


def _forcing(name):
    # use_backend checks op names against the global registry; the demo tables force all ops
    return vqvae_fast.use_backend(name)


def test_info_reports_every_op_and_the_environment():
    report = vqvae_fast.info()
    assert report["torch"] == torch.__version__
    assert set(report["ops"]) >= {"group_norm_silu", "spatial_attention", "codebook_argmin", "padded_conv2d"}
    for per_device in report["ops"].values():
        assert "cpu" in per_device
        assert per_device["cpu"]["backend"] in _backend.BACKENDS
    assert isinstance(report["extension"]["loaded"], bool)
    if not report["extension"]["loaded"]:
        assert report["extension"]["reason"]
    json.dumps(report, default=str)


def run_python(code: str, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)


def test_import_does_not_initialise_cuda_or_import_triton():
    result = run_python(
        """
        import sys, torch, vqvae_fast
        assert not torch.cuda.is_initialized()
        assert "triton" not in sys.modules, "triton imported at import time"
        assert "vqvae_fast._C" not in sys.modules, "extension loaded at import time"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_package_works_without_triton_and_without_extension():
    result = run_python(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` fail as if it were not installed
        sys.modules["vqvae_fast._C"] = None
        import torch, vqvae_fast
        from vqvae_fast import _backend
        _backend.triton_status.cache_clear()
        report = vqvae_fast.info()
        assert not report["extension"]["loaded"] and "_C" in report["extension"]["reason"], report["extension"]
        assert report["triton"].startswith("unavailable"), report["triton"]
        x = torch.randn(2, 8, 4, 4)
        y = vqvae_fast.group_norm_silu(x, 4)
        torch.testing.assert_close(y, vqvae_fast.reference.group_norm_silu(x, 4))
        out = vqvae_fast.padded_conv2d(x, torch.randn(4, 8, 3, 3), stride=2, padding=(0, 1, 0, 1))
        assert out.shape == (2, 4, 2, 2)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_cli_info_prints_report():
    result = subprocess.run([sys.executable, "-m", "vqvae_fast", "info", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "ops" in report and "extension" in report
    text = subprocess.run([sys.executable, "-m", "vqvae_fast", "info"], capture_output=True, text=True, timeout=300)
    assert "group_norm_silu" in text.stdout and "torch" in text.stdout
