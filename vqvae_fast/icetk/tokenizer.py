"""icetk's image tokenizer on the fast HVQVAE: what CogView2 / CogVideo call per frame.

``ImageTokenizer.encode`` normalises pixels in ``[0, 1]`` with icetk's mean and standard deviation
and returns the level-``l`` codes of ``HVQVAE.single_encode``; ``decode`` runs
``single_decode_code`` and undoes the normalisation. Level 1 (icetk's ``compress_rate=8``) is
CogVideo's: a 160x160 frame becomes 20x20 codes. No torchvision: the normalisation is
``(x - mean) / std`` per channel, what ``transforms.Normalize`` computes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import _validation as V
from ..reference.icetk import IMAGE_MEAN, IMAGE_STD
from .model import HVQVAE, load_default_HVQVAE


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32  # CPU convolutions are slow in 16 bits


class ImageTokenizer:
    """Images to icetk codes and back, on the fast HVQVAE.

    Args:
        model_path: icetk's checkpoint (``ice_image.pt``: ``{"module": state_dict}``) for its
            default model, or ``None`` to pass ``model``.
        model: an HVQVAE to use instead of loading ``model_path``: ``vqvae_fast.icetk``'s, or the
            reference's or icetk's own, whose blocks are then accelerated in place.
        device: where to run (default: CUDA if available, else CPU).
        dtype: ``torch.float16`` / ``torch.bfloat16`` / ``torch.float32``; default fp16 on CUDA
            (icetk's ``fp16=True``), fp32 on CPU.

    Example::

        >>> tokenizer = ImageTokenizer("ice_image.pt")
        >>> codes = tokenizer.encode(frames, l=1)  # frames (B, 3, 160, 160) in [0, 1] -> (B, 400)
        >>> frames_again = tokenizer.decode(codes, l=1)  # (B, 3, 160, 160)
    """

    def __init__(self, model_path=None, *, model: torch.nn.Module | None = None, device=None, dtype=None):
        if (model_path is None) == (model is None):
            raise ValueError("pass exactly one of model_path (an icetk checkpoint) and model")
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = _default_dtype(device) if dtype is None else dtype
        V.check_choice("dtype", dtype, (torch.float16, torch.bfloat16, torch.float32, torch.float64))
        if model is None:
            model = load_default_HVQVAE()
            model.load_checkpoint(model_path)
        elif not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be an HVQVAE module, got {type(model).__name__}")
        elif not isinstance(model, HVQVAE):  # icetk's or the reference's: its blocks made fast in place
            from ..acceleration import accelerate
            from ..nn._adopt import adopt

            accelerate(model)
            model = adopt(model, HVQVAE)  # the container, with this class's methods (same submodules)
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype
        self.num_tokens = int(model.quantize.n_embed)
        self.mean = torch.tensor(IMAGE_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGE_STD, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return self.num_tokens

    def downsampling(self, l: int) -> int:
        """Pixels per code along each side at level ``l``."""
        self.model.check_level(l)
        return self.model.enc.downsampling_factor * 2**l

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels ``(B, 3, H, W)`` in ``[0, 1]`` (any float dtype) to the model's input dtype."""
        return ((images.to(self.device, torch.float32) - self.mean) / self.std).to(self.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`, in fp32."""
        return x.float() * self.std + self.mean

    @torch.no_grad()
    def encode_grid(self, images: torch.Tensor, l: int = 1) -> torch.Tensor:
        """Codes ``(B, h, w)`` of images ``(B, 3, H, W)`` or ``(3, H, W)`` in ``[0, 1]``."""
        V.check_tensor("images", images, ndim=(3, 4))
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (RGB), got shape {tuple(images.shape)}")
        self.model.check_level(l)
        return self.model.single_encode_ids(self.normalize(images), l)

    def encode(self, images: torch.Tensor, l: int = 1) -> torch.Tensor:
        """Codes ``(B, h * w)`` (icetk's ``ImageTokenizer.encode``); see :meth:`encode_grid`."""
        codes = self.encode_grid(images, l)
        return codes.view(codes.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes, l: int = 1) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` (fp32, about ``[0, 1]``) of codes ``(B, h, w)``, ``(B, h * w)``
        (square grids), ``(h * w,)`` or a list of ints. The codes' range is checked first (one
        read-back to the host; ``model.single_decode_code`` runs without it)."""
        if isinstance(codes, Sequence) and not isinstance(codes, (str, bytes)):
            codes = torch.tensor(codes, dtype=torch.long)
        V.check_tensor("codes", codes, ndim=(1, 2, 3), dtypes=V.INDEX_DTYPES)
        if codes.dim() == 1:
            codes = codes.unsqueeze(0)
        if codes.dim() == 2:  # one square grid per row (icetk took the side from all rows at once)
            side = math.isqrt(codes.shape[1])
            if side * side != codes.shape[1]:
                raise ValueError(f"codes of shape {tuple(codes.shape)}: {codes.shape[1]} codes per image is not "
                                 "a square grid; pass them as (B, h, w)")
            codes = codes.reshape(codes.shape[0], side, side)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_tokens):
            raise ValueError(f"codes must lie in [0, {self.num_tokens}), got values in "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return self.denormalize(self.model.single_decode_code(codes.to(self.device, torch.long), l))
