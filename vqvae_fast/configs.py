"""Named model configurations taken from released taming / LDM models.

Each entry is ``{"ddconfig": ..., "n_embed": ..., "embed_dim": ...}`` for ``VQModel`` (or
``AutoencoderKL`` where ``double_z`` is set). ``DEFAULT`` is taming's ImageNet f16 VQGAN with
16384 codes, the configuration the benchmark and the main job use.
"""

from __future__ import annotations

import copy

CONFIGS = {
    # taming-transformers vqgan_imagenet_f16_16384
    "vqgan_imagenet_f16_16384": {
        "ddconfig": {
            "double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3,
            "out_ch": 3, "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
            "attn_resolutions": [16], "dropout": 0.0,
        },
        "n_embed": 16384,
        "embed_dim": 256,
    },
    # LDM vq-f8 (first stage of several latent diffusion models)
    "vq_f8": {
        "ddconfig": {
            "double_z": False, "z_channels": 4, "resolution": 256, "in_channels": 3,
            "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 2,
            "attn_resolutions": [32], "dropout": 0.0,
        },
        "n_embed": 16384,
        "embed_dim": 4,
    },
    # LDM kl-f8 (the Stable Diffusion first stage)
    "kl_f8": {
        "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
            "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            "attn_resolutions": [], "dropout": 0.0,
        },
        "embed_dim": 4,
    },
    # a model small enough for tests and CPU smoke runs
    "tiny": {
        "ddconfig": {
            "double_z": False, "z_channels": 8, "resolution": 32, "in_channels": 3,
            "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
            "attn_resolutions": [16], "dropout": 0.0,
        },
        "n_embed": 64,
        "embed_dim": 8,
    },
}

DEFAULT = "vqgan_imagenet_f16_16384"


def get_config(name: str = DEFAULT) -> dict:
    """A deep copy of the named configuration."""
    if name not in CONFIGS:
        raise ValueError(f"name must be one of {sorted(CONFIGS)}, got {name!r}")
    return copy.deepcopy(CONFIGS[name])
