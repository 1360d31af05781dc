"""CogView2 / CogVideo's image tokenizer (icetk's HVQVAE) on vqvae_fast's fast blocks.

``HVQVAE`` builds icetk's model from icetk's configs (``HVQVAE.from_config()`` is the default
model: 3 levels, 20000 codes of dim 256) and loads its checkpoints (``{"module": state_dict}``);
``ImageTokenizer`` is icetk's ``ImageTokenizer``: pixels in ``[0, 1]`` to the codes of a level and
back, fp16 on CUDA. The pure-PyTorch reference of the same model is ``vqvae_fast.reference.icetk``;
``vqvae_fast.accelerate`` converts icetk's own modules. See ``docs/icetk.md``.
"""

from ..reference.icetk import IMAGE_MEAN, IMAGE_STD, default_config
from .model import HVQVAE, Decoder, Encoder, load_default_HVQVAE
from .tokenizer import ImageTokenizer

__all__ = ["HVQVAE", "IMAGE_MEAN", "IMAGE_STD", "Decoder", "Encoder", "ImageTokenizer", "default_config",
           "load_default_HVQVAE"]
