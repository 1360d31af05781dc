"""icetk's hierarchical VQ-VAE (``HVQVAE``), its configs, its default model and its checkpoints.

A config is icetk's: ``{"target": "<module path>.<ClassName>", "params": {...}}`` (or the path
of a JSON file holding one). Targets are resolved by their class name alone (icetk's own
``"..vqvae.Encoder"``, ``"icetk.vqvae.Encoder"`` and ``"Encoder"`` all name the same block)
among the classes of :attr:`HVQVAE.block_classes`, so one config builds the reference model here
and the fast one in ``vqvae_fast.icetk``.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Mapping

import torch
import torch.nn as nn

from ..checkpoint import CheckpointReport, load_checkpoint, read_state_dict
from .blocks import Decoder, DownSample, Encoder, ResidualDownSample
from .quantize import GumbelQuantize, VectorQuantize, VectorQuantizeEMA

#: The mean and standard deviation (per RGB channel, pixels in [0, 1]) icetk's image tokenizer
#: normalises with before encoding and restores after decoding.
IMAGE_MEAN = (0.79093, 0.76271, 0.75340)
IMAGE_STD = (0.30379, 0.32279, 0.32800)


# Where icetk's own new_module finds each class, relative to icetk.vqvae (its package exports
# only some of them), so that icetk can build these configs too.
_ICETK_MODULE = {"VectorQuantize": "quantize.", "GumbelQuantize": "quantize.", "DownSample": "enc_dec."}


def _target(name: str, **params) -> dict:
    return {"target": f"..vqvae.{_ICETK_MODULE.get(name, '')}{name}", "params": params}


def default_config() -> dict:
    """The config of icetk's default model (``load_default_HVQVAE``), CogView2 / CogVideo's
    image tokenizer: 3 levels; an encoder of channels_mult ``[1, 2, 4]`` with 2 res blocks
    (``/4``); two ``ResidualDownSample`` (``/8``, ``/16``); one ``VectorQuantizeEMA`` of 20000
    codes of dim 256 for all levels; decoders ``[1, 1, 1, 2, 4]``, ``[1, 1, 2, 4]``, ``[1, 2, 4]``
    (``decs[i]`` restores level ``2 - i``)."""
    return _target(
        "HVQVAE",
        levels=3,
        embedding_dim=256,
        codebook_scale=1,
        down_sampler_configs=[_target("ResidualDownSample", in_channels=256) for _ in range(2)],
        enc_config=_target("Encoder", num_res_blocks=2, channels_mult=[1, 2, 4]),
        quantize_config=_target("VectorQuantizeEMA", hidden_dim=256, embedding_dim=256, n_embed=20000,
                                training_loc=False),
        dec_configs=[_target("Decoder", channels_mult=mult) for mult in ([1, 1, 1, 2, 4], [1, 1, 2, 4], [1, 2, 4])],
    )


def tiny_config(*, quantizer: str = "VectorQuantizeEMA", n_embed: int = 96, levels: int = 3,
                resample_with_conv: bool = True) -> dict:
    """A small HVQVAE of the default model's shape, for tests and smoke runs: 32 channels, codes
    of dim 32, a ``/2`` encoder with attention at 16², up to 3 levels (``/2``, ``/4``, ``/8``)."""
    if levels not in (1, 2, 3):
        raise ValueError(f"levels must be 1, 2 or 3, got {levels!r}")
    quantize = dict(hidden_dim=32, embedding_dim=32, n_embed=n_embed)
    if quantizer == "VectorQuantizeEMA":
        quantize["training_loc"] = False
    decoders = ([1, 1, 1, 2], [1, 1, 2], [1, 2])[3 - levels:]  # decs[i] undoes level levels - 1 - i
    return _target(
        "HVQVAE", levels=levels, embedding_dim=32, codebook_scale=0.5,
        down_sampler_configs=[_target("ResidualDownSample", in_channels=32) for _ in range(levels - 1)],
        enc_config=_target("Encoder", channels=32, channels_mult=[1, 2], num_res_blocks=1, z_channels=32,
                           resolution=32, resample_with_conv=resample_with_conv),
        quantize_config=_target(quantizer, **quantize),
        dec_configs=[_target("Decoder", channels=32, channels_mult=mult, z_channels=32, resolution=32)
                     for mult in decoders],
    )


def read_config(config) -> dict:
    """``config`` as a dict: a dict (deep-copied) or the path of a JSON file."""
    if isinstance(config, (str, os.PathLike)):
        with open(config, encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or the path of a JSON file, got {type(config).__name__}")
    if "target" not in config:
        raise ValueError(f"config must have a 'target' (the class to build), got keys {sorted(config)}")
    return copy.deepcopy(dict(config))


def target_class(config: Mapping, classes: Mapping[str, type]) -> type:
    """The class a config's ``target`` names (by its last dotted component)."""
    name = str(config["target"]).rsplit(".", 1)[-1]
    if name not in classes:
        raise ValueError(f"config target {config['target']!r} names no known block; known: {sorted(classes)}")
    return classes[name]


class HVQVAE(nn.Module):
    """icetk's hierarchical VQ-VAE: one encoder, ``levels - 1`` down-samplers, one shared
    quantizer and ``levels`` decoders.

    Encoding at level ``l`` quantizes ``down_samplers[l-1](...(down_samplers[0](enc(x))))``;
    ``decs[levels - 1 - l]`` decodes level ``l``. Lists of levels are in encoder order for
    :meth:`encode` (level 0 first) and in decoder order for :meth:`decode` and
    :meth:`decode_code` (``quants[i]`` goes to ``decs[i]``: coarsest first), as icetk's.

    Args:
        levels, embedding_dim, enc_config, quantize_config, down_sampler_configs, dec_configs,
        codebook_scale: icetk's (configs as described in this module's docstring).

    Example::

        >>> model = HVQVAE.from_config(default_config())
        >>> quant, diff, ids = model.single_encode(torch.randn(1, 3, 160, 160), 1)  # ids (1, 20, 20)
    """

    #: class name -> class, for the configs' targets (the fast model swaps in fast blocks).
    block_classes: Mapping[str, type] = {
        cls.__name__: cls
        for cls in (Encoder, Decoder, DownSample, ResidualDownSample, VectorQuantize, VectorQuantizeEMA, GumbelQuantize)
    }

    def __init__(self, levels: int, embedding_dim: int, enc_config, quantize_config, down_sampler_configs,
                 dec_configs, codebook_scale: float = 1.0):
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be a positive int, got {levels!r}")
        if len(dec_configs) < levels or len(down_sampler_configs) < levels - 1:
            raise ValueError(f"levels={levels} needs {levels} dec_configs and {levels - 1} down_sampler_configs, "
                             f"got {len(dec_configs)} and {len(down_sampler_configs)}")
        self.levels = levels
        self.enc = self.new_module(enc_config)
        self.decs = nn.ModuleList(self.new_module(dec_configs[i]) for i in range(levels))
        self.quantize = self.new_module(quantize_config)
        self.down_samplers = nn.ModuleList(self.new_module(down_sampler_configs[i]) for i in range(levels - 1))
        self.codebook_scale = codebook_scale

    @classmethod
    def new_module(cls, config) -> nn.Module:
        """Build the block a config describes, from :attr:`block_classes`."""
        config = read_config(config)
        return target_class(config, cls.block_classes)(**config.get("params", {}))

    @classmethod
    def from_config(cls, config=None) -> "HVQVAE":
        """The model of an icetk config (a dict or a JSON path; default: :func:`default_config`)."""
        config = read_config(default_config() if config is None else config)
        if target_class(config, {"HVQVAE": cls}) is not cls:
            raise ValueError(f"config target {config['target']!r} is not an HVQVAE")
        return cls(**config.get("params", {}))

    # -- icetk's methods ----------------------------------------------------------------------

    def forward(self, input: torch.Tensor):
        """``(dec_outputs, total_diff)``: every level encoded and decoded (coarsest first), and
        the diffs summed with weight ``codebook_scale ** l`` for level ``l``."""
        quants, diffs, ids = self.encode(input)
        dec_outputs = self.decode(quants[::-1])
        total_diff, scale = diffs[0], 1.0
        for diff in diffs[1:]:
            scale *= self.codebook_scale
            total_diff = total_diff + diff * scale
        return dec_outputs, total_diff

    def encode(self, input: torch.Tensor):
        """``(quants, diffs, ids)`` per level, level 0 first; quants ``(B, D, h, w)`` views."""
        enc_outputs = [self.enc(input)]
        for sampler in self.down_samplers:
            enc_outputs.append(sampler(enc_outputs[-1]))
        quants, diffs, ids = [], [], []
        for h in enc_outputs:
            quant, diff, id_ = self.quantize(h)
            quants.append(quant.permute(0, 3, 1, 2))
            diffs.append(diff)
            ids.append(id_)
        return quants, diffs, ids

    def decode(self, quants):
        """Images of ``quants[i]`` by ``decs[i]``, returned in the order ``i = levels - 1 ... 0``."""
        return [self.decs[i](quants[i]) for i in range(self.levels - 1, -1, -1)]

    def decode_code(self, codes):
        """:meth:`decode` of the codes of ``codes[i]`` ``(B, h, w)`` (decoder order)."""
        return self.decode([self.quantize.embed_code(codes[i]).permute(0, 3, 1, 2) for i in range(self.levels)])

    def check_level(self, l) -> None:
        if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < self.levels:
            raise ValueError(f"l must be a level in [0, {self.levels - 1}], got {l!r}")

    def encoder_features(self, input: torch.Tensor, l: int) -> torch.Tensor:
        """The features level ``l`` quantizes: ``enc(input)`` down-sampled ``l`` times."""
        self.check_level(l)
        h = self.enc(input)
        for i in range(l):
            h = self.down_samplers[i](h)
        return h

    def single_encode(self, input: torch.Tensor, l: int):
        """``(quant (B, h, w, D), diff, ids (B, h, w))`` of level ``l``."""
        return self.quantize(self.encoder_features(input, l))

    def single_encode_ids(self, input: torch.Tensor, l: int) -> torch.Tensor:
        """The ids ``(B, h, w)`` of :meth:`single_encode` alone (no ``quant`` nor ``diff``)."""
        quantize, h = self.quantize, self.encoder_features(input, l)
        if not hasattr(quantize, "nearest_codes"):  # a GumbelQuantize samples its codes
            return quantize(h)[2]
        return quantize.nearest_codes(quantize.project(h))

    def single_decode(self, quant: torch.Tensor, l: int) -> torch.Tensor:
        """``decs[l](quant)``: note that ``l`` indexes the decoders here, as in icetk."""
        self.check_level(l)
        return self.decs[l](quant)

    def single_decode_code(self, code: torch.Tensor, l: int) -> torch.Tensor:
        """The image of level-``l`` codes ``(B, h, w)``, by ``decs[levels - 1 - l]`` (icetk's
        ``decs[2 - l]`` for its 3 levels)."""
        self.check_level(l)
        quant = self.quantize.embed_code(code).permute(0, 3, 1, 2)
        return self.decs[self.levels - 1 - l](quant)

    def get_last_layer(self) -> torch.Tensor:
        return self.decs[-1].get_last_layer()

    # -- checkpoints --------------------------------------------------------------------------

    def load_checkpoint(self, path_or_dict, *, weights_only: bool = True) -> CheckpointReport:
        """Load icetk's checkpoint format, ``{"module": state_dict}`` (a plain state_dict too).

        Every parameter and buffer must be present with its shape (icetk itself loads with
        ``strict=False``), except the EMA statistics ``quantize.cluster_size`` /
        ``quantize.embed_avg``, which no forward reads: those missing keep their values.
        """
        return load_icetk_checkpoint(self, path_or_dict, weights_only=weights_only)


OPTIONAL_KEYS = ("quantize.cluster_size", "quantize.embed_avg")


def load_icetk_checkpoint(model: nn.Module, path_or_dict, *, weights_only: bool = True) -> CheckpointReport:
    """See :meth:`HVQVAE.load_checkpoint`."""
    state = read_state_dict(path_or_dict, weights_only=weights_only)
    if isinstance(state.get("module"), Mapping):
        state = state["module"]
    own = model.state_dict()
    state = {**{k: own[k] for k in OPTIONAL_KEYS if k in own and k not in state}, **state}
    return load_checkpoint(model, state)


def load_default_HVQVAE() -> HVQVAE:  # noqa: N802 - icetk's name
    """icetk's default model (:func:`default_config`), randomly initialised."""
    return HVQVAE.from_config(default_config())


def load_ckpt(model: nn.Module, path) -> nn.Module:
    """icetk's ``load_ckpt``: load ``{"module": state_dict}`` into ``model`` and return it."""
    load_icetk_checkpoint(model, path)
    return model
