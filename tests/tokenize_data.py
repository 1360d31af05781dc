"""Small datasets and models for the tokenize tests: generated images (odd sizes, modes, corrupt
files), a webdataset shard, and a random-weight ``tiny`` VQGAN saved as a taming checkpoint."""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import torch

from vqvae_fast import configs, reference

CONFIG = "tiny"  # 32x32 images -> 16x16 codes of 64 entries
CORRUPT = ("broken/truncated.jpg", "broken/not_an_image.png", "broken/empty.webp")


def image_bytes(rng: np.random.Generator, fmt: str, mode: str = "RGB", size=None, exif_orientation=None) -> bytes:
    from PIL import Image

    h, w = size or (int(rng.integers(17, 97)), int(rng.integers(17, 97)))
    base = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1.0, (1, 1, 3))  # smooth colours
    pixels = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def make_images(folder: str, count: int = 50, seed: int = 0) -> list[str]:
    """``count`` readable images in nested folders (several formats, modes, odd sizes, an
    EXIF-rotated JPEG) plus the files of ``CORRUPT``; returns the readable ones' relative paths."""
    rng = np.random.default_rng(seed)
    kinds = [("JPEG", "jpg", "RGB"), ("PNG", "png", "RGB"), ("WEBP", "webp", "RGB"), ("PNG", "png", "RGBA"),
             ("PNG", "png", "L"), ("BMP", "bmp", "RGB"), ("PNG", "png", "P")]
    names = []
    for i in range(count):
        fmt, ext, mode = kinds[i % len(kinds)]
        name = f"{'a/b/' if i % 5 == 0 else 'a/' if i % 3 == 0 else ''}img{i:03d}.{ext}"
        data = image_bytes(rng, fmt, mode, exif_orientation=6 if i == 7 else None)
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        names.append(name)
    good_jpeg = image_bytes(rng, "JPEG", size=(64, 64))
    os.makedirs(os.path.join(folder, "broken"), exist_ok=True)
    for name, data in zip(CORRUPT, (good_jpeg[: len(good_jpeg) // 2], b"this is not a png", b"")):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    with open(os.path.join(folder, "notes.txt"), "w") as f:  # not an image: not an input
        f.write("ignored\n")
    return sorted(names)


def make_shard(path: str, count: int = 12, seed: int = 1) -> list[str]:
    """A webdataset-style tar: ``{key}.jpg`` / ``{key}.png`` with a ``{key}.cls`` label each, and
    one corrupt image member; returns the readable image member names."""
    rng = np.random.default_rng(seed)
    names = []
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            key = f"sample{i:05d}"
            ext, fmt = ("jpg", "JPEG") if i % 2 else ("png", "PNG")
            for name, data in ((f"{key}.{ext}", image_bytes(rng, fmt)), (f"{key}.cls", str(i).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            names.append(f"{key}.{ext}")
        info = tarfile.TarInfo("sample99999.jpg")
        info.size = 10
        tar.addfile(info, io.BytesIO(b"0123456789"))
    return names


def make_checkpoint(path: str, seed: int = 0) -> str:
    """A random-weight ``tiny`` reference VQModel saved as a Lightning-style checkpoint."""
    cfg = configs.get_config(CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = reference.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
        with torch.no_grad():  # spread the codebook so that codes are varied and far from ties
            model.quantize.embedding.weight.normal_(0, 1)
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, path)
    return path


def load_fast_model(checkpoint: str):
    import vqvae_fast

    cfg = configs.get_config(CONFIG)
    model = vqvae_fast.VQModel(cfg["ddconfig"], n_embed=cfg["n_embed"], embed_dim=cfg["embed_dim"])
    model.load_checkpoint(checkpoint)
    return model.eval()


def direct_codes(model, pixels: torch.Tensor) -> torch.Tensor:
    """Codes ``(B, h, w)`` from the model's own ``encode`` on uint8 pixels ``(B, 3, H, W)``."""
    x = pixels.float() / 127.5 - 1.0
    with torch.no_grad():
        _, _, (_, _, indices) = model.encode(x)
    return indices.reshape(x.shape[0], x.shape[2] // 2, x.shape[3] // 2)
