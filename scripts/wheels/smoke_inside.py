"""Runs inside a smoke-test environment, by path, with nothing of the source tree importable:
the installed vqvae_fast wheel imports, reports and computes correctly against the PyTorch
reference on CPU, or, with ``--expect-mismatch``, falls back with exactly one mismatch warning
and never loads its library. Standard library, torch and the installed vqvae_fast only.
"""

from __future__ import annotations

import argparse
import sys


def smoke_inside(wheel_version: str, expect_mismatch: bool) -> None:
    """Runs inside the fresh venv: the installed wheel imports, reports and computes correctly."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import vqvae_fast
        from vqvae_fast import _extension, reference
        from vqvae_fast.info import format_info

        assert vqvae_fast.__file__.startswith(sys.prefix), f"imported {vqvae_fast.__file__}, not the installed wheel"
        assert "triton" not in sys.modules, "import vqvae_fast imported triton"
        assert "vqvae_fast._C" not in sys.modules, "import vqvae_fast loaded the extension"
        assert not torch.cuda.is_initialized(), "import vqvae_fast initialised CUDA"

        report = vqvae_fast.info()
        print(format_info(report))
        build, ext = report["build"], report["extension"]
        assert build is not None and build["version"] == wheel_version, (build, wheel_version)
        if expect_mismatch:
            assert ext["mismatch"] and not ext["loaded"], ext
            assert "vqvae_fast._C" not in sys.modules, "a mismatched library was loaded"
            assert ext["wheel_for_this_torch"] in ext["reason"], ext
        else:
            assert ext["loaded"] and not ext["mismatch"], ext
            assert ext["cuda_code"] == bool(build["cuda"]), ext
            assert report["ops"]["padded_conv2d"]["cpu"]["backend"] == "cpu", report["ops"]["padded_conv2d"]

        torch.manual_seed(0)
        x = torch.randn(2, 64, 9, 7)
        w, b = torch.randn(64), torch.randn(64)
        torch.testing.assert_close(vqvae_fast.group_norm_silu(x, 32, w, b), reference.group_norm_silu(x, 32, w, b, eps=1e-6))
        q, k, v = (torch.randn(2, 32, 5, 6) for _ in range(3))
        torch.testing.assert_close(vqvae_fast.spatial_attention(q, k, v), reference.spatial_attention(q, k, v))
        z, codebook = torch.randn(2, 16, 4, 5), torch.randn(96, 16)
        idx, dist = vqvae_fast.codebook_argmin(z, codebook, return_distance=True)
        ref_idx, ref_dist = reference.codebook_argmin(z, codebook, return_distance=True)
        torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-4)
        assert (idx == ref_idx).float().mean() > 0.99
        weight, bias = torch.randn(16, 64, 3, 3), torch.randn(16)
        xg = x.clone().requires_grad_()
        out = vqvae_fast.padded_conv2d(xg, weight, bias, stride=2, padding=(0, 1, 0, 1))
        torch.testing.assert_close(out, reference.padded_conv2d(x, weight, bias, (2, 2), (0, 1, 0, 1)))
        out.sum().backward()
        xr = x.clone().requires_grad_()
        reference.padded_conv2d(xr, weight, bias, (2, 2), (0, 1, 0, 1)).sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad)
        if not expect_mismatch:
            assert "vqvae_fast._C" in sys.modules and _extension.load()

    mismatch_warnings = [w for w in caught if issubclass(w.category, _extension.ExtensionMismatchWarning)]
    others = [w for w in caught if issubclass(w.category, RuntimeWarning) and "vqvae_fast" in str(w.message)
              and w not in mismatch_warnings]
    if expect_mismatch:
        assert len(mismatch_warnings) == 1, [str(w.message) for w in caught]
        print(f"mismatch warning: {mismatch_warnings[0].message}")
    else:
        assert not mismatch_warnings and not others, [str(w.message) for w in caught]
    print(f"smoke test passed: vqvae_fast {wheel_version}, torch {torch.__version__}, python {sys.version.split()[0]}"
          + (" (mismatched build: extension not loaded, fallbacks used)" if expect_mismatch else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheel-version", required=True)
    parser.add_argument("--expect-mismatch", action="store_true")
    args = parser.parse_args()
    smoke_inside(args.wheel_version, args.expect_mismatch)
