"""icetk's own VQ-VAE modules for the tests, when they can be loaded, and small icetk configs.

icetk's package ``__init__`` builds a text tokenizer (sentencepiece) and imports torchvision, which
``icetk.vqvae`` needs neither of: :func:`icetk_vqvae` registers a bare ``icetk`` package (only its
``__path__``) and imports ``icetk.vqvae`` under it. icetk is found on ``sys.path`` (CI installs
it with ``pip install --no-deps icetk==0.0.7``) or at ``$VQVAE_FAST_ICETK_PATH`` (a folder
holding the ``icetk`` package, or its wheel); otherwise the tests that need it skip.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest
import torch

ENV_VAR = "VQVAE_FAST_ICETK_PATH"


def _package_path(spec) -> list[str] | None:
    """The package's folders, if ``spec`` is icetk's package (not, say, a folder named icetk)."""
    if spec is None or not spec.submodule_search_locations:
        return None
    locations = list(spec.submodule_search_locations)
    if spec.origin is None and not any(os.path.isdir(os.path.join(p, "vqvae")) for p in locations):
        return None  # a namespace package of some unrelated folder
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


def require_icetk():
    module = icetk_vqvae()
    if module is None:
        pytest.skip(f"icetk is not installed (pip install --no-deps icetk==0.0.7) and ${ENV_VAR} is not set")
    return module


def icetk_module(name: str):
    """icetk's ``icetk.vqvae.<name>`` submodule (enc_dec, quantize, vqvae_hierarchical, api)."""
    require_icetk()
    return importlib.import_module(f"icetk.vqvae.{name}")


def _t(name: str, **params) -> dict:
    return {"target": f"..vqvae.{name}", "params": params}


def tiny_config(*, quantizer: str = "VectorQuantizeEMA", n_embed: int = 96, levels: int = 3,
                resample_with_conv: bool = True) -> dict:
    """A small HVQVAE of the default model's shape: 32 channels, codes of dim 32, ``/2`` encoder,
    attention at 16² in the encoder and the first decoder."""
    quantize = dict(hidden_dim=32, embedding_dim=32, n_embed=n_embed)
    if quantizer == "VectorQuantizeEMA":
        quantize["training_loc"] = False
    enc = dict(channels=32, channels_mult=[1, 2], num_res_blocks=1, z_channels=32, resolution=32,
               resample_with_conv=resample_with_conv)
    decs = [[1, 1, 2], [1, 2], [2]][3 - levels:] if levels <= 3 else None
    return _t("HVQVAE", levels=levels, embedding_dim=32, codebook_scale=0.5,
              down_sampler_configs=[_t("ResidualDownSample", in_channels=32) for _ in range(levels - 1)],
              enc_config=_t("Encoder", **enc),
              quantize_config=_t(quantizer, **quantize),
              dec_configs=[_t("Decoder", channels=32, channels_mult=m, z_channels=32, resolution=32,
                              num_res_blocks=0) for m in decs])


def spread_codebook(model: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Codes spread like the latents (std 0.2, as the projected features of a random model;
    icetk's initialisation puts every code within 1/n_embed of 0, where rounding decides the
    nearest one), and non-trivial norm parameters."""
    import peers

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embed = model.quantize.embed.weight
        embed.copy_(scale * torch.randn(embed.shape, generator=gen))
    return peers.randomize_norms(model, seed)


def build_icetk(config: dict, seed: int = 0):
    """icetk's own HVQVAE of ``config`` (random weights from ``seed``)."""
    hierarchical = icetk_module("vqvae_hierarchical")
    torch.manual_seed(seed)
    return hierarchical.HVQVAE(**config["params"])
