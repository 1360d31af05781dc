"""icetk's own VQ-VAE modules for the tests (``vqvae_fast.icetk.original`` loads them), or a skip.

CI installs icetk with ``pip install --no-deps icetk==0.0.7``; elsewhere set
``VQVAE_FAST_ICETK_PATH`` to a folder holding the ``icetk`` package (or its wheel).
"""

from __future__ import annotations

import pytest
import torch

from vqvae_fast.icetk import original

import peers


def icetk_module(name: str):
    """icetk's ``icetk.vqvae.<name>`` submodule, or skip the test."""
    module = original.icetk_submodule(name)
    if module is None:
        pytest.skip(original.UNAVAILABLE)
    return module


def spread_codebook(model: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Codes spread like the latents (std 0.2, as the projected features of a random model;
    icetk's initialisation puts every code within 1/n_embed of 0, where rounding decides the
    nearest one), and non-trivial norm parameters."""
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
