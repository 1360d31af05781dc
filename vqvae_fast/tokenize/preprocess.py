"""Decoding and resizing one image: file bytes (or a PIL image) to uint8 pixels ``(3, H, W)``.

Every input goes through the same steps, so that a rerun (or another rank) produces the same
pixels: JPEG draft decoding at the smallest DCT scale that still covers the target (exact for a
given file and Pillow version), the EXIF orientation applied, conversion to RGB (alpha dropped,
palette and grey expanded), then one bicubic resize:

``center``   scale so the image covers ``H x W``, crop the middle (the crop box is passed to the
             resize, so the crop costs nothing extra); the aspect ratio is kept.
``stretch``  resize the whole image to ``H x W``; the aspect ratio is not kept.

Models see uint8 pixels; each model kind scales them itself (taming: ``x / 127.5 - 1``), on the
device, so the loader moves a quarter of the bytes a float tensor would need.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import torch

CROPS = ("center", "stretch")
EXIF_ORIENTATION = 0x0112
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Preprocess:
    """``size`` is ``(height, width)``."""

    size: tuple[int, int]
    crop: str = "center"
    resample: str = "bicubic"

    def __post_init__(self):
        if (not isinstance(self.size, tuple) or len(self.size) != 2
                or not all(isinstance(s, int) and s > 0 for s in self.size)):
            raise ValueError(f"size must be (height, width) of positive ints, got {self.size!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.resample != "bicubic":
            raise ValueError(f"resample must be 'bicubic', got {self.resample!r}")

    def as_dict(self) -> dict:
        from PIL import __version__ as pillow_version

        return {**asdict(self), "size": list(self.size), "exif_transpose": True, "jpeg_draft": True,
                "pixels": "uint8 RGB", "pillow": pillow_version}

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of a ``width x height`` image that becomes the output."""
        out_h, out_w = self.size
        if self.crop == "stretch":
            return (0.0, 0.0, float(width), float(height))
        # the largest box of the output's aspect ratio inside the image (integer comparison: no
        # rounding can make the box stick out)
        if out_w * height >= out_h * width:  # the image is taller than the output: full width
            box_w, box_h = float(width), width * out_h / out_w
        else:
            box_w, box_h = height * out_w / out_h, float(height)
        left, top = (width - box_w) / 2, (height - box_h) / 2
        return (left, top, left + box_w, top + box_h)

    def __call__(self, image) -> torch.Tensor:
        """A PIL image (opened, maybe not loaded) to uint8 ``(3, H, W)``."""
        from PIL import Image, ImageOps

        out_h, out_w = self.size
        if image.format == "JPEG":
            w, h = image.size
            if image.getexif().get(EXIF_ORIENTATION, 1) in ROTATED_ORIENTATIONS:
                w, h = h, w
            x0, y0, x1, y1 = self.crop_box(w, h)
            scale = max(out_w / (x1 - x0), out_h / (y1 - y0))  # output pixels per source pixel
            need = (int(np.ceil(image.size[0] * scale)), int(np.ceil(image.size[1] * scale)))
            image.draft("RGB", need)  # decode at 1/2, 1/4 or 1/8 scale when that still covers `need`
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        box = self.crop_box(*image.size)
        image = image.resize((out_w, out_h), Image.Resampling.BICUBIC, box=box)
        pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()  # (3, H, W)


def open_image(data: bytes | str):
    """A PIL image from a path or bytes; raises what Pillow raises for unreadable data."""
    from PIL import Image

    return Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)


def parse_size(text) -> tuple[int, int]:
    """``256`` or ``"256"`` -> ``(256, 256)``; ``"256x384"`` -> ``(256, 384)`` (height x width)."""
    if isinstance(text, int):
        return (text, text)
    if isinstance(text, (tuple, list)) and len(text) == 2:
        return (int(text[0]), int(text[1]))
    parts = str(text).lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"size must be N or HxW with positive integers, got {text!r}")
    return values
