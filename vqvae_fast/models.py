"""The fast models: the reference Encoder / Decoder / VQModel / AutoencoderKL built from fast blocks.

Same constructor arguments, configs and state_dict keys as ``vqvae_fast.reference``; every block
runs on vqvae_fast's ops (fused group norm + SiLU, flash-style attention, padded stride-2
convolution, folded upsampling, fused codebook argmin).
"""

from __future__ import annotations

import torch

from . import _validation as V
from . import nn as fast
from .reference import autoencoder, model
from .nn.resnet import norm_act
from .lowmem import LowMemoryModule, TilingSwitches  # exact low-memory mode (memory_budget, enable_tiling)


class Encoder(TilingSwitches, LowMemoryModule, model.Encoder):
    __doc__ = model.Encoder.__doc__
    resnet_block = fast.ResnetBlock
    attn_block = fast.AttnBlock
    downsample_block = fast.Downsample
    norm_act = staticmethod(norm_act)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        V.check_matches_module("x", x, self)  # before conv_in, which would name its weight


class Decoder(TilingSwitches, LowMemoryModule, model.Decoder):
    __doc__ = model.Decoder.__doc__
    resnet_block = fast.ResnetBlock
    attn_block = fast.AttnBlock
    upsample_block = fast.Upsample
    norm_act = staticmethod(norm_act)

    def check_input(self, z: torch.Tensor) -> None:
        super().check_input(z)
        V.check_matches_module("z", z, self)


class VQModel(TilingSwitches, autoencoder.VQModel):
    __doc__ = autoencoder.VQModel.__doc__
    encoder_cls = Encoder
    decoder_cls = Decoder
    quantizer_cls = fast.VectorQuantizer

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        V.check_tensor("quant", quant, ndim=4)
        V.check_matches_module("quant", quant, self.post_quant_conv)
        return super().decode(quant)


class AutoencoderKL(TilingSwitches, autoencoder.AutoencoderKL):
    __doc__ = autoencoder.AutoencoderKL.__doc__
    encoder_cls = Encoder
    decoder_cls = Decoder

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        V.check_tensor("z", z, ndim=4)
        V.check_matches_module("z", z, self.post_quant_conv)
        return super().decode(z)
