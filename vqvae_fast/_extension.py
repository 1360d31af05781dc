"""Lazy loading of the compiled extension ``vqvae_fast._C``.

The extension is optional: without it the ops that need it fall back to another backend (in the
end the PyTorch reference) after one warning that says why. Loading happens on first use, never at
``import vqvae_fast``, and never initialises CUDA. Loading registers the C++ ops
(``torch.ops.vqvae_fast.*``); the Python parts of those ops (fake implementations, autograd) are
registered by hooks that the op modules add with :func:`on_load`.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Callable

_loaded: bool | None = None  # None: not tried yet
_reason: str | None = None  # why it is not loaded
_with_cuda: bool = False  # whether the loaded library has its CUDA part
_warned: set[str] = set()
_hooks: list[Callable[[], None]] = []


def _try_load() -> bool:
    global _loaded, _reason, _with_cuda
    try:
        import torch  # noqa: F401  (the library links against libtorch)

        module = importlib.import_module("vqvae_fast._C")
    except ImportError as err:
        _loaded, _reason = False, f"vqvae_fast._C could not be imported ({err})"
        return False
    except OSError as err:  # a shared library that does not match this torch
        _loaded, _reason = False, f"vqvae_fast._C failed to load ({err})"
        return False
    _with_cuda = bool(getattr(module, "WITH_CUDA", 0))
    _loaded, _reason = True, None
    for hook in _hooks:
        hook()
    return True


def load() -> bool:
    """Try once to load ``vqvae_fast._C`` (registering ``torch.ops.vqvae_fast.*``); True if loaded."""
    if _loaded is None:
        return _try_load()
    return _loaded


# torch.compile must evaluate load() at trace time and keep the answer as a constant, so that a
# first load inside a compiled function (importlib, op registration) does not break the graph.
# That is what torch.compiler.assume_constant_result does, by setting this attribute; calling it
# here would import torch._dynamo (and triton) at `import vqvae_fast`, so the attribute is set
# directly (tests/test_padded_conv2d.py checks a compiled first call in a fresh process).
load._dynamo_marked_constant = True  # type: ignore[attr-defined]


def on_load(hook: Callable[[], None]) -> None:
    """Run ``hook()`` once the extension is loaded (now, if it already is)."""
    _hooks.append(hook)
    if _loaded:
        hook()
    elif _loaded is None and sys.modules.get("vqvae_fast._C") is not None:
        # Imported directly (torch imports the op module for a fake impl): finish loading.
        load()


def has_cuda_code() -> bool:
    """Whether the loaded extension was compiled with its CUDA part."""
    return load() and _with_cuda


def status(need_cuda: bool = False) -> str | None:
    """None when the extension (with CUDA code if ``need_cuda``) is usable, else why not."""
    if not load():
        return _reason
    if need_cuda and not _with_cuda:
        return "vqvae_fast._C was built without CUDA code"
    return None


def warn_fallback(op: str, used: str, reason: str | None = None) -> None:
    """Warn once per op that it runs on ``used`` because the extension is missing (``reason``)."""
    if op in _warned:
        return
    _warned.add(op)
    warnings.warn(
        f"vqvae_fast: {op} runs on the {used} backend because {reason or status()}. "
        "Rebuild with `pip install -e . --no-build-isolation` to get the compiled op.",
        RuntimeWarning,
        stacklevel=3,
    )
