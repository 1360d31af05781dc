"""The functional API: one module per op, each with its argument checks and backend table.

``vqvae_fast.<op>`` is ``vqvae_fast.ops.<op>.<op>``. Every op validates its arguments
(``vqvae_fast._validation``), picks a backend for the input's device and dtype
(``vqvae_fast._backend``) and runs it.
"""

from .codebook_argmin import codebook_argmin
from .group_norm_silu import group_norm_silu
from .padded_conv2d import padded_conv2d
from .spatial_attention import spatial_attention

__all__ = ["codebook_argmin", "group_norm_silu", "padded_conv2d", "spatial_attention"]
