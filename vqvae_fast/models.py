"""The fast models: the reference Encoder / Decoder / VQModel / AutoencoderKL built from fast blocks.

Same constructor arguments, configs and state_dict keys as ``vqvae_fast.reference``; every block
runs on vqvae_fast's ops (fused group norm + SiLU, flash-style attention, padded stride-2
convolution, folded upsampling, fused codebook argmin).
"""

from __future__ import annotations

from . import nn as fast
from .reference import autoencoder, model
from .nn.resnet import norm_act


class Encoder(model.Encoder):
    __doc__ = model.Encoder.__doc__
    resnet_block = fast.ResnetBlock
    attn_block = fast.AttnBlock
    downsample_block = fast.Downsample
    norm_act = staticmethod(norm_act)


class Decoder(model.Decoder):
    __doc__ = model.Decoder.__doc__
    resnet_block = fast.ResnetBlock
    attn_block = fast.AttnBlock
    upsample_block = fast.Upsample
    norm_act = staticmethod(norm_act)


class VQModel(autoencoder.VQModel):
    __doc__ = autoencoder.VQModel.__doc__
    encoder_cls = Encoder
    decoder_cls = Decoder
    quantizer_cls = fast.VectorQuantizer


class AutoencoderKL(autoencoder.AutoencoderKL):
    __doc__ = autoencoder.AutoencoderKL.__doc__
    encoder_cls = Encoder
    decoder_cls = Decoder
