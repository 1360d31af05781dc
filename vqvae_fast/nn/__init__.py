"""Fast drop-in modules: the reference blocks' parameters and state_dict keys, fast ops inside.

Each module lives in its own file and is imported on first access, so a missing optional
dependency of one module never breaks the others.
"""

from __future__ import annotations

import importlib

# public name -> module (file in this package) defining it
_EXPORTS = {
    "GroupNormSiLU": "group_norm_silu",
    "AttnBlock": "attention",
    "VectorQuantizer": "quantize",
    "VectorQuantizer2": "quantize",
    "Downsample": "downsample",
    "ResnetBlock": "resnet",
    "Upsample": "upsample",
    "ResidualDownSample": "residual_downsample",
    "VectorQuantize": "icetk_quantize",
    "VectorQuantizeEMA": "icetk_quantize",
    "refresh_derived_weights": "_derived",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vqvae_fast.nn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
