"""The two autoencoders built from Encoder / Decoder: taming's ``VQModel`` and LDM's ``AutoencoderKL``.

Training machinery (losses, discriminators, optimisers, Lightning hooks) is not part of this
library: ``lossconfig`` and other training-only arguments are accepted and ignored so that
existing configs construct these classes unchanged.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .. import _validation as V
from .checkpoint import CheckpointMixin
from .distributions import DiagonalGaussianDistribution
from .model import Decoder, Encoder
from .quantize import VectorQuantizer


def _check_ddconfig(ddconfig) -> dict:
    if not isinstance(ddconfig, Mapping):
        raise TypeError(f"ddconfig must be a dict, got {type(ddconfig).__name__}")
    for key in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "resolution", "z_channels", "out_ch"):
        if key not in ddconfig:
            raise ValueError(f"ddconfig is missing the key {key!r}")
    return dict(ddconfig)


class VQModel(CheckpointMixin, nn.Module):
    """taming's VQGAN autoencoder: ``encoder -> quant_conv -> quantize -> post_quant_conv -> decoder``.

    Args:
        ddconfig: the Encoder / Decoder config dict (taming's ``ddconfig``).
        lossconfig: accepted for config compatibility and ignored.
        n_embed: number of codebook entries.
        embed_dim: code dimension.
        ckpt_path: optional checkpoint to load (see ``load_checkpoint``), with ``ignore_keys``.
        remap, sane_index_shape, beta, legacy: passed to the quantizer.

    ``forward(x)`` returns ``(reconstruction, codebook_loss)``.
    """

    encoder_cls = Encoder
    decoder_cls = Decoder
    quantizer_cls = VectorQuantizer

    def __init__(
        self,
        ddconfig: Mapping,
        lossconfig=None,
        n_embed: int | None = None,
        embed_dim: int | None = None,
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels=None,
        monitor=None,
        remap=None,
        sane_index_shape: bool = False,
        beta: float = 0.25,
        legacy: bool = True,
        **ignored,
    ):
        super().__init__()
        ddconfig = _check_ddconfig(ddconfig)
        if n_embed is None or embed_dim is None:
            raise TypeError("VQModel needs n_embed and embed_dim")
        V.check_int("n_embed", n_embed, min_value=1)
        V.check_int("embed_dim", embed_dim, min_value=1)
        self.image_key = image_key
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.encoder = self.encoder_cls(**ddconfig)
        self.decoder = self.decoder_cls(**ddconfig)
        self.quantize = self.quantizer_cls(
            n_embed, embed_dim, beta=beta, remap=remap, sane_index_shape=sane_index_shape, legacy=legacy
        )
        z_channels = ddconfig["z_channels"]
        encoder_out = 2 * z_channels if ddconfig.get("double_z", True) else z_channels
        self.quant_conv = nn.Conv2d(encoder_out, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        if ckpt_path is not None:
            self.load_checkpoint(ckpt_path, ignore_keys=ignore_keys)

    def encode(self, x: torch.Tensor):
        """Image ``(B, C, H, W)`` to ``(quant, codebook_loss, (perplexity, min_encodings, indices))``."""
        h = self.quant_conv(self.encoder(x))
        return self.quantize(h)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantised latent ``(B, embed_dim, h, w)`` to image."""
        V.check_tensor("quant", quant, ndim=4)
        if quant.shape[1] != self.embed_dim:
            raise ValueError(f"quant must have {self.embed_dim} channels (embed_dim), got shape {tuple(quant.shape)}")
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code_b: torch.Tensor, shape=None) -> torch.Tensor:
        """Code indices ``(B, h, w)`` (or flat with ``shape = (B, h, w, embed_dim)``) to image."""
        V.check_tensor("code_b", code_b, dtypes=V.INDEX_DTYPES)
        if shape is None:
            if code_b.dim() != 3:
                raise ValueError(
                    f"code_b must be (batch, height, width) when shape is not given, got {tuple(code_b.shape)}"
                )
            shape = (*code_b.shape, self.embed_dim)
        quant = self.quantize.get_codebook_entry(code_b.reshape(-1), shape)
        return self.decode(quant)

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, (_, _, indices) = self.encode(input)
        dec = self.decode(quant)
        if return_pred_indices:
            return dec, diff, indices
        return dec, diff


class AutoencoderKL(CheckpointMixin, nn.Module):
    """LDM's KL autoencoder: the encoder predicts a diagonal Gaussian posterior (``double_z``).

    ``encode(x)`` returns a :class:`DiagonalGaussianDistribution`; ``forward(x)`` returns
    ``(reconstruction, posterior)``, decoding a sample (``sample_posterior=True``) or the mean.
    """

    encoder_cls = Encoder
    decoder_cls = Decoder

    def __init__(
        self,
        ddconfig: Mapping,
        lossconfig=None,
        embed_dim: int | None = None,
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels=None,
        monitor=None,
        **ignored,
    ):
        super().__init__()
        ddconfig = _check_ddconfig(ddconfig)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL needs ddconfig['double_z'] = True (mean and log-variance)")
        if embed_dim is None:
            raise TypeError("AutoencoderKL needs embed_dim")
        V.check_int("embed_dim", embed_dim, min_value=1)
        self.image_key = image_key
        self.embed_dim = embed_dim
        self.encoder = self.encoder_cls(**ddconfig)
        self.decoder = self.decoder_cls(**ddconfig)
        z_channels = ddconfig["z_channels"]
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        if ckpt_path is not None:
            self.load_checkpoint(ckpt_path, ignore_keys=ignore_keys)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        moments = self.quant_conv(self.encoder(x))  # (B, 2 * embed_dim, h, w)
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        V.check_tensor("z", z, ndim=4)
        if z.shape[1] != self.embed_dim:
            raise ValueError(f"z must have {self.embed_dim} channels (embed_dim), got shape {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z))

    def forward(self, input: torch.Tensor, sample_posterior: bool = True):
        posterior = self.encode(input)
        z = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(z), posterior
