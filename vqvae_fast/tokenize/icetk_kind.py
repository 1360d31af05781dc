"""The ``icetk`` model kind: CogView2 / CogVideo's HVQVAE tokenizer (``--model icetk:CKPT --level L``).

``CKPT`` is icetk's checkpoint (``ice_image.pt``, ``{"module": state_dict}``); ``--config`` may
name an icetk-style JSON config (``{"target": "...HVQVAE", "params": {...}}``) for another
HVQVAE, the default being icetk's own model. ``--level`` picks the hierarchy level (default 1,
CogVideo's: 8 pixels per code, a 160x160 frame to 20x20 codes). The model is
``vqvae_fast.icetk.HVQVAE`` (fast blocks); pixels are normalised with icetk's mean and std.
"""

from __future__ import annotations

import os

import torch

from .model_kinds import ModelKind, ModelSource, register_model_kind, require_file, sha256_file

DEFAULT_LEVEL = 1


def level_of(source: ModelSource) -> int:
    return DEFAULT_LEVEL if source.level is None else source.level


def icetk_config(source: ModelSource) -> dict:
    from ..reference.icetk import default_config, read_config

    if source.config is None:
        return default_config()
    if not os.path.isfile(source.config):
        raise ValueError(f"config {source.config!r} is not a file (an icetk HVQVAE config in JSON)")
    try:
        return read_config(source.config)
    except (ValueError, TypeError) as err:
        raise ValueError(f"config {source.config!r}: {err}") from err


class IcetkCodes:
    """``vqvae_fast.icetk.HVQVAE`` at one level as a :class:`~vqvae_fast.tokenize.CodeModel`."""

    def __init__(self, model, level: int, description: dict):
        from ..reference.icetk import IMAGE_MEAN, IMAGE_STD

        model.check_level(level)
        self.model, self.level, self.description = model, level, description
        parameter = next(model.parameters())
        self.dtype, device = parameter.dtype, parameter.device
        self.codebook_size = int(model.quantize.n_embed)
        self.downsampling = int(model.enc.downsampling_factor) * 2**level
        self.native_size = int(model.enc.resolution)
        self.mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def encode_to_codes(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = ((images.to(torch.float32) / 255.0 - self.mean) / self.std).to(self.dtype)
        codes = self.model.single_encode_ids(x, self.level)  # (B, h, w)
        return codes, (codes.shape[1], codes.shape[2])

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.model.single_decode_code(codes.long(), self.level).float() * self.std + self.mean
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def load_icetk(source: ModelSource, device: torch.device, dtype: torch.dtype) -> IcetkCodes:
    from ..icetk import HVQVAE

    checkpoint = require_file("model checkpoint", source.path)  # before building the model
    config = icetk_config(source)
    model = HVQVAE.from_config(config)
    model.load_checkpoint(checkpoint)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    params = config.get("params", {})
    quantize = params.get("quantize_config", {}).get("params", {})
    description = {"class": "vqvae_fast.icetk.HVQVAE", "level": level_of(source),
                   "n_embed": quantize.get("n_embed"), "embedding_dim": params.get("embedding_dim")}
    return IcetkCodes(model, level_of(source), description)


def icetk_fingerprint(source: ModelSource) -> dict:
    checkpoint = require_file("model checkpoint", source.path)
    return {"config": icetk_config(source), "level": level_of(source), "checkpoint_sha256": sha256_file(checkpoint),
            "checkpoint": os.path.abspath(checkpoint)}


register_model_kind(ModelKind(
    "icetk", "CogView2 / CogVideo's icetk HVQVAE checkpoint (ice_image.pt), with --level (default 1)",
    load_icetk, icetk_fingerprint))
