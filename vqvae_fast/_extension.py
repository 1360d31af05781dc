"""Lazy loading of the compiled extension ``vqvae_fast._C``, and the check that it fits this torch.

The extension is optional: without it the ops that need it fall back to another backend (in the
end the PyTorch reference) after one warning that says why. Loading happens on first use, never at
``import vqvae_fast``, and never initialises CUDA. Loading registers the C++ ops
(``torch.ops.vqvae_fast.*``); the Python parts of those ops (fake implementations, autograd) are
registered by hooks that the op modules add with :func:`on_load`.

The library is tied to the torch it was compiled against (torch's C++ API has no stable ABI
across minor releases) and, for its CUDA part, to torch's CUDA version. The build writes
``_build_info.json`` next to it (see setup.py); before loading, that record is compared with the
installed torch, and a library built for another torch (major.minor), CUDA version or C++ ABI is
not loaded at all, since loading it can fail with undefined symbols or worse. One
:class:`ExtensionMismatchWarning` then names the versions that differ and the wheel that fits.

This module imports nothing outside the standard library at module level: setup.py loads it by
path to share :func:`local_version_tag`, the wheels' version scheme.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import warnings
from typing import Callable

BUILD_INFO_FILE = "_build_info.json"

_loaded: bool | None = None  # None: not tried yet
_reason: str | None = None  # why it is not loaded
_with_cuda: bool = False  # whether the loaded library has its CUDA part
_mismatch: list[str] = []  # how the build differs from the installed torch
_build_info: dict | None = None
_build_info_read = False
_warned: set[str] = set()
_hooks: list[Callable[[], None]] = []


class ExtensionMismatchWarning(RuntimeWarning):
    """The installed vqvae_fast was built for another torch or CUDA version than the one installed."""


# ----------------------------------------------------------------------------------------------
# Version scheme and build record (shared with setup.py)


def major_minor(version: str | None) -> str | None:
    """``"2.14.1+cu130"`` -> ``"2.14"``; ``"13.0"`` -> ``"13.0"``; None for None or no match."""
    if not version:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def local_version_tag(torch_version: str, cuda_version: str | None) -> str:
    """The local version label of a wheel built against this torch and CUDA version.

    ``cu<major><minor>torch<major>.<minor>`` for a build with CUDA code (CUDA 13.0 and torch
    2.14.1 give ``cu130torch2.14``), ``cputorch<major>.<minor>`` for one without (its C++ code
    still ties it to that torch). Only major.minor of torch counts: patch releases keep the ABI.
    """
    torch_mm = major_minor(torch_version)
    if torch_mm is None:
        raise ValueError(f"cannot read a torch version from {torch_version!r}")
    if cuda_version:
        cuda_mm = major_minor(cuda_version)
        if cuda_mm is None:
            raise ValueError(f"cannot read a CUDA version from {cuda_version!r}")
        prefix = "cu" + cuda_mm.replace(".", "")
    else:
        prefix = "cpu"
    return f"{prefix}torch{torch_mm}"


def compatibility_problems(
    build: dict, torch_version: str, torch_cuda: str | None, torch_cxx11_abi: bool | None = None
) -> list[str]:
    """How a build record (``_build_info.json``) differs from the installed torch; [] if it fits.

    A build without CUDA code fits any torch of its major.minor (it just has no CUDA kernels);
    a build with CUDA code needs torch built for the same CUDA major.minor.
    """
    problems = []
    built_torch = build.get("torch")
    if major_minor(built_torch) != major_minor(torch_version):
        problems.append(f"torch: built against {built_torch}, installed {torch_version}")
    built_cuda = build.get("cuda")
    if built_cuda:
        if not torch_cuda:
            problems.append(f"CUDA: built with {built_cuda}, installed torch has none")
        elif major_minor(built_cuda) != major_minor(torch_cuda):
            problems.append(f"CUDA: built with {built_cuda}, installed torch uses {torch_cuda}")
    built_abi = build.get("cxx11_abi")
    if built_abi is not None and torch_cxx11_abi is not None and bool(built_abi) != bool(torch_cxx11_abi):
        problems.append(
            f"C++ ABI: built with _GLIBCXX_USE_CXX11_ABI={int(bool(built_abi))}, "
            f"installed torch uses {int(bool(torch_cxx11_abi))}"
        )
    return problems


def build_info() -> dict | None:
    """The build record shipped next to the library (``vqvae_fast/_build_info.json``), or None.

    None in a source checkout that was never built. A record that cannot be read comes back as
    ``{"error": ...}`` and is not trusted for the check (the library is then tried as before).
    """
    global _build_info, _build_info_read
    if not _build_info_read:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), BUILD_INFO_FILE)
        try:
            with open(path) as handle:
                record = json.load(handle)
            _build_info = record if isinstance(record, dict) else {"error": f"{path} holds no JSON object"}
        except FileNotFoundError:
            _build_info = None
        except (OSError, ValueError) as err:
            _build_info = {"error": f"{path} could not be read ({err})"}
        _build_info_read = True
    return _build_info


def _installed_torch() -> tuple[str, str | None, bool | None]:
    import torch

    abi = getattr(torch, "compiled_with_cxx11_abi", None)
    return torch.__version__, torch.version.cuda, bool(abi()) if abi is not None else None


def _base_version(build: dict | None) -> str:
    version = (build or {}).get("version")
    if version:
        return str(version).split("+")[0]
    from ._version import __version__

    return __version__


def wheel_for_installed_torch() -> str:
    """The version of the vqvae_fast wheel built for the installed torch, e.g. ``0.1.0+cu130torch2.14``."""
    torch_version, torch_cuda, _ = _installed_torch()
    return f"{_base_version(build_info())}+{local_version_tag(torch_version, torch_cuda)}"


def mismatch() -> list[str]:
    """How the build differs from the installed torch ([] when it fits or nothing says otherwise)."""
    build = build_info()
    if not build or "error" in build:
        return []
    return compatibility_problems(build, *_installed_torch())


def _mismatch_message(problems: list[str]) -> str:
    build = build_info() or {}
    torch_version, torch_cuda, _ = _installed_torch()
    built_for = f"torch {major_minor(build.get('torch'))}" + (
        f" with CUDA {build['cuda']}" if build.get("cuda") else " without CUDA code"
    )
    installed = torch_version + (f" with CUDA {torch_cuda}" if torch_cuda else " without CUDA")
    return (
        f"vqvae_fast {build.get('version')} was built for {built_for}, but the installed torch is "
        f"{installed} [{'; '.join(problems)}]. Install the wheel built for this torch, "
        f"vqvae_fast=={wheel_for_installed_torch()}, or build from source against it with "
        "`pip install --no-build-isolation .`"
    )


# ----------------------------------------------------------------------------------------------
# Loading


def _try_load() -> bool:
    global _loaded, _reason, _with_cuda, _mismatch
    try:
        import torch  # noqa: F401  (the library links against libtorch)
    except ImportError as err:
        _loaded, _reason = False, f"torch could not be imported ({err})"
        return False
    problems = mismatch()
    if problems:
        # Never load a library built for another torch: a missing symbol is the mild outcome.
        _loaded, _reason, _mismatch = False, _mismatch_message(problems), problems
        warnings.warn(
            f"vqvae_fast: {_reason}. Its compiled extension is not loaded; the ops that need it "
            "run on their Triton or reference backends.",
            ExtensionMismatchWarning,
            stacklevel=4,
        )
        return False
    try:
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
        reason = "vqvae_fast._C was built without CUDA code"
        if _installed_torch()[1]:
            reason += f" (the wheel with CUDA kernels for this torch is vqvae_fast=={wheel_for_installed_torch()})"
        return reason
    return None


def warn_fallback(op: str, used: str, reason: str | None = None) -> None:
    """Warn once per op that it runs on ``used`` because the extension is missing (``reason``)."""
    if op in _warned or _mismatch:  # a mismatch has had its own warning, naming the wheel to get
        return
    _warned.add(op)
    warnings.warn(
        f"vqvae_fast: {op} runs on the {used} backend because {reason or status()}. "
        "Rebuild with `pip install -e . --no-build-isolation` to get the compiled op.",
        RuntimeWarning,
        stacklevel=3,
    )
