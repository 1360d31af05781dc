"""Lazy loading of the compiled extension ``vqvae_fast._C``.

The extension is optional: without it the ops that need it fall back to another backend (in the
end the PyTorch reference) after one warning that says why. Loading happens on first use, never at
``import vqvae_fast``, and never initialises CUDA.
"""

from __future__ import annotations

import importlib
import warnings

_loaded: bool | None = None  # None: not tried yet
_reason: str | None = None  # why it is not loaded
_warned: set[str] = set()


def load() -> bool:
    """Try once to load ``vqvae_fast._C`` (registering ``torch.ops.vqvae_fast.*``); True if loaded."""
    global _loaded, _reason
    if _loaded is None:
        try:
            import torch  # noqa: F401  (the library links against libtorch)

            importlib.import_module("vqvae_fast._C")
            _loaded, _reason = True, None
        except ImportError as err:
            _loaded, _reason = False, f"vqvae_fast._C could not be imported ({err})"
        except OSError as err:  # a shared library that does not match this torch
            _loaded, _reason = False, f"vqvae_fast._C failed to load ({err})"
    return _loaded


def has_cuda_code() -> bool:
    """Whether the loaded extension was compiled with its CUDA part."""
    return load() and bool(getattr(importlib.import_module("vqvae_fast._C"), "WITH_CUDA", 0))


def status(need_cuda: bool = False) -> str | None:
    """None when the extension (with CUDA code if ``need_cuda``) is usable, else why not."""
    if not load():
        return _reason
    if need_cuda and not has_cuda_code():
        return "vqvae_fast._C was built without CUDA code"
    return None


def warn_fallback(op: str, used: str) -> None:
    """Warn once per op that it runs on ``used`` because the extension is missing."""
    if op in _warned:
        return
    _warned.add(op)
    warnings.warn(
        f"vqvae_fast: {op} runs on the {used} backend because {status()}. "
        "Rebuild with `pip install -e . --no-build-isolation` to get the compiled op.",
        RuntimeWarning,
        stacklevel=3,
    )
