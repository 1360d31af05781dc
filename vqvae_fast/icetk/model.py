"""icetk's HVQVAE built from fast blocks: the reference's configs, arguments and state_dict keys.

Every block runs on vqvae_fast's ops: the resnet blocks and output heads on ``group_norm_silu``,
attention on ``spatial_attention``, ``DownSample`` and ``ResidualDownSample`` (average pool folded
in) on ``padded_conv2d``, the upsampling on the folded ``Upsample``, the quantizer on
``codebook_argmin``. ``GumbelQuantize`` configs keep the reference quantizer (nothing to search).
"""

from __future__ import annotations

import torch

from .. import _validation as V
from .. import models
from .. import nn as fast
from ..reference import icetk as reference


class Encoder(models.Encoder, reference.Encoder):
    __doc__ = reference.Encoder.__doc__


class Decoder(models.Decoder, reference.Decoder):
    __doc__ = reference.Decoder.__doc__


class HVQVAE(reference.HVQVAE):
    """icetk's hierarchical VQ-VAE on fast blocks (see :class:`vqvae_fast.reference.icetk.HVQVAE`).

    Built from the same configs (``HVQVAE.from_config()`` is icetk's default model), with the same
    state_dict keys: ``model.load_checkpoint("ice_image.pt")`` loads icetk's checkpoint, and a
    reference or icetk model's ``state_dict()`` loads unchanged.

    Example::

        >>> model = HVQVAE.from_config().eval()
        >>> ids = model.single_encode_ids(torch.randn(1, 3, 160, 160), 1)  # (1, 20, 20)
        >>> image = model.single_decode_code(ids, 1)  # (1, 3, 160, 160)
    """

    block_classes = {
        **reference.HVQVAE.block_classes,
        "Encoder": Encoder,
        "Decoder": Decoder,
        "DownSample": fast.Downsample,
        "ResidualDownSample": fast.ResidualDownSample,
        "VectorQuantize": fast.VectorQuantize,
        "VectorQuantizeEMA": fast.VectorQuantizeEMA,
    }

    def single_decode_code(self, code: torch.Tensor, l: int) -> torch.Tensor:
        """The image of level-``l`` codes ``(B, h, w)`` (any integer dtype), by ``decs[levels - 1 - l]``."""
        V.check_tensor("code", code, ndim=3, dtypes=V.INDEX_DTYPES)
        if code.dtype not in (torch.int64, torch.int32):
            code = code.long()  # what the embedding lookup takes
        return super().single_decode_code(code, l)


def load_default_HVQVAE() -> HVQVAE:  # noqa: N802 - icetk's name
    """icetk's default model on fast blocks, randomly initialised (load a checkpoint into it)."""
    return HVQVAE.from_config(reference.default_config())
