"""vqvae_fast: fast kernels for VQ-VAE / VQGAN autoencoders, checked against a PyTorch reference.

Functional ops (each picks the best backend for its input; see ``info()``)::

    group_norm_silu(x, num_groups, weight=None, bias=None, eps=1e-6, activation="silu")
    spatial_attention(q, k, v, scale=None)
    codebook_argmin(z, codebook, precision="ieee", return_distance=False)
    padded_conv2d(x, weight, bias=None, stride=1, padding=(0, 0, 0, 0))

Fast models with the reference's configs and state_dict keys: ``VQModel``, ``AutoencoderKL``,
``Encoder``, ``Decoder``; ``accelerate(model)`` makes an existing taming / LDM / diffusers
autoencoder fast in place; ``memory_budget(model, budget)`` runs its encoders and decoders
exactly within a memory budget (``vqvae_fast.lowmem``); ``tokenize(INPUT, OUT, model=...)``
turns a dataset into codes.
``vqvae_fast.reference`` holds the pure-PyTorch reference model and
ops; ``use_backend(name)`` forces a backend. Importing this package neither initialises CUDA nor needs triton or the
compiled extension.
"""

from . import configs, nn, reference
from ._backend import BackendUnavailableError, use_backend
from ._version import __version__
from .info import info
from .ops import codebook_argmin, group_norm_silu, padded_conv2d, spatial_attention

# Imported on first use: they pull in every fast block.
_LAZY = {
    "accelerate": ("acceleration", "accelerate"),
    "AutoencoderKL": ("models", "AutoencoderKL"),
    "Decoder": ("models", "Decoder"),
    "Encoder": ("models", "Encoder"),
    "memory_budget": ("lowmem", "memory_budget"),
    "VQModel": ("models", "VQModel"),
    "icetk": ("icetk", None),  # icetk's HVQVAE (CogView2 / CogVideo's image tokenizer) on fast blocks
    "tokenize": ("tokenize", None),  # the dataset tokenizer package (callable: vqvae_fast.tokenize(...))
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vqvae_fast' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = importlib.import_module(f".{module}", __name__)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


__all__ = [
    "AutoencoderKL",
    "BackendUnavailableError",
    "Decoder",
    "Encoder",
    "VQModel",
    "accelerate",
    "__version__",
    "codebook_argmin",
    "configs",
    "icetk",
    "group_norm_silu",
    "info",
    "memory_budget",
    "nn",
    "padded_conv2d",
    "reference",
    "spatial_attention",
    "tokenize",
    "use_backend",
]
