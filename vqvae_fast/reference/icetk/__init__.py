"""The pure-PyTorch reference of icetk's image tokenizer (CogView2 / CogVideo): its VQ-VAE blocks,
quantizers and hierarchical ``HVQVAE``, with icetk 0.0.7's constructor arguments, defaults,
state_dict keys, configs and checkpoint format (``{"module": state_dict}``).

``HVQVAE.from_config(default_config())`` (or ``load_default_HVQVAE()``) builds CogVideo's
tokenizer; ``vqvae_fast.icetk`` holds the same model built from fast blocks, and
``vqvae_fast.accelerate`` converts icetk's own modules.
"""

from .blocks import (
    AttnBlock,
    Decoder,
    DownSample,
    Encoder,
    Normalize,
    ResidualDownSample,
    ResnetBlock,
    Upsample,
    nonlinearity,
)
from .model import (
    HVQVAE,
    IMAGE_MEAN,
    IMAGE_STD,
    default_config,
    load_ckpt,
    load_default_HVQVAE,
    load_icetk_checkpoint,
    read_config,
    tiny_config,
)
from .quantize import GumbelQuantize, VectorQuantize, VectorQuantizeEMA, nearest_code_ids

__all__ = [
    "HVQVAE", "IMAGE_MEAN", "IMAGE_STD", "AttnBlock", "Decoder", "DownSample", "Encoder", "GumbelQuantize",
    "Normalize", "ResidualDownSample", "ResnetBlock", "Upsample", "VectorQuantize", "VectorQuantizeEMA",
    "default_config", "load_ckpt", "load_default_HVQVAE", "load_icetk_checkpoint", "nearest_code_ids",
    "nonlinearity", "read_config", "tiny_config",
]
