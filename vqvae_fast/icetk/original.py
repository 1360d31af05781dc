"""icetk's own ``icetk.vqvae`` modules, loaded without icetk's package ``__init__``.

icetk's ``__init__`` builds its text tokenizer (sentencepiece) and imports torchvision, neither of
which its VQ-VAE needs. :func:`icetk_vqvae` registers a bare ``icetk`` package (only its
``__path__``) and imports ``icetk.vqvae`` under it. icetk is found on ``sys.path`` (e.g.
``pip install --no-deps icetk==0.0.7``) or, failing that, at ``$VQVAE_FAST_ICETK_PATH``: a
folder holding the ``icetk`` package, or icetk's wheel file. Used by the tests and by the
benchmark's ``icetk`` provider (the code CogVideo runs today).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

ENV_VAR = "VQVAE_FAST_ICETK_PATH"
UNAVAILABLE = f"icetk is not installed (pip install --no-deps icetk==0.0.7) and ${ENV_VAR} is not set"


def _package_path(spec) -> list[str] | None:
    """The package's folders, if ``spec`` is icetk's package (not a folder that happens to be
    named icetk, which Python would import as a namespace package)."""
    if spec is None or not spec.submodule_search_locations:
        return None
    locations = list(spec.submodule_search_locations)
    if spec.origin is None and not any(os.path.isdir(os.path.join(p, "vqvae")) for p in locations):
        return None
    return locations


def _icetk_locations() -> list[str] | None:
    try:
        locations = _package_path(importlib.util.find_spec("icetk"))
    except (ImportError, ValueError):
        locations = None
    if locations is None and os.environ.get(ENV_VAR):
        locations = _package_path(importlib.machinery.PathFinder.find_spec("icetk", [os.environ[ENV_VAR]]))
    return locations


def icetk_vqvae():
    """The module ``icetk.vqvae`` (icetk's own code), or ``None`` when icetk cannot be found."""
    if "icetk.vqvae" in sys.modules:
        return sys.modules["icetk.vqvae"]
    if "icetk" not in sys.modules:
        locations = _icetk_locations()
        if locations is None:
            return None
        package = types.ModuleType("icetk")
        package.__path__ = locations  # a package without running icetk/__init__.py
        sys.modules["icetk"] = package
    return importlib.import_module("icetk.vqvae")


def icetk_submodule(name: str):
    """``icetk.vqvae.<name>`` (``enc_dec``, ``quantize``, ``vqvae_hierarchical``, ``api``), or
    ``None`` when icetk cannot be found."""
    return None if icetk_vqvae() is None else importlib.import_module(f"icetk.vqvae.{name}")
