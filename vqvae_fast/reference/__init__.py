"""The pure-PyTorch reference of the taming-transformers VQGAN: the ground truth.

Every fast path of vqvae_fast is checked against these modules and functional ops.
"""

from . import ops
from .autoencoder import AutoencoderKL, VQModel
from .blocks import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample, make_attn, nonlinearity
from .checkpoint import CheckpointReport, load_checkpoint
from .distributions import DiagonalGaussianDistribution
from .model import Decoder, Encoder
from .ops import codebook_argmin, group_norm_silu, padded_conv2d, spatial_attention
from .quantize import VectorQuantizer, VectorQuantizer2

__all__ = [
    "AttnBlock", "AutoencoderKL", "CheckpointReport", "Decoder", "DiagonalGaussianDistribution",
    "Downsample", "Encoder", "Normalize", "ResnetBlock", "Upsample", "VQModel", "VectorQuantizer",
    "VectorQuantizer2", "codebook_argmin", "group_norm_silu", "load_checkpoint", "make_attn",
    "nonlinearity", "ops", "padded_conv2d", "spatial_attention",
]
