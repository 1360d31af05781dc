"""``vqvae-fast detokenize``: decode stored codes back to PNG images, for spot checks.

The model comes from the header (the same checkpoint and config, checked by hash) unless one is
given; decoding with a model whose fingerprint differs from the header's is refused, since its
codebook would give meaningless images.
"""

from __future__ import annotations

import json
import os
import re

import torch

from .distributed import default_device
from .job import resolve_dtype
from .loader import load_codes
from .manifest import differences
from .model_kinds import ModelSource, fingerprint, load_model, resolve_model_source


def file_name(index: int, source: str, frame) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.replace("::", "__"))[-120:]
    return f"{index:06d}-{stem}" + (f"-f{frame:05d}" if frame is not None else "") + ".png"


def detokenize(out, dest, *, count: int | None = 16, sources=None, model: str | None = None,
               config: str | None = None, checkpoint: str | None = None, device=None, dtype="auto",
               batch_size: int = 8) -> list[str]:
    """Decode the first ``count`` rows of ``out`` (or the rows of ``sources``) to PNGs in ``dest``.

    Returns the paths written, in manifest order. ``count=None`` decodes every row.
    """
    from PIL import Image

    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive integer or None, got {count!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    stored = load_codes(out, sources=sources)
    header = stored.header
    if model is None:
        source = ModelSource(**header["model_source"])
    else:
        source = resolve_model_source(model, config=config, checkpoint=checkpoint)
    diff = differences(header["fingerprint"]["model"], json.loads(json.dumps(fingerprint(source))))
    if diff:
        raise ValueError(f"model differs from the one that made the codes in {os.fspath(out)!r}: {'; '.join(diff[:4])}")
    dev = torch.device(device) if device is not None else default_device(0)
    decoder = load_model(source, dev, resolve_dtype(dtype, dev))
    rows = len(stored) if count is None or sources is not None else min(count, len(stored))
    os.makedirs(dest, exist_ok=True)
    paths = []
    for start in range(0, rows, batch_size):
        codes = torch.from_numpy(stored.codes[start:min(start + batch_size, rows)].astype("int64")).to(dev)
        pixels = decoder.decode_codes(codes).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) uint8
        for i, image in enumerate(pixels):
            index = start + i
            path = os.path.join(dest, file_name(index, stored.sources[index], stored.frames[index]))
            Image.fromarray(image).save(path)
            paths.append(path)
    return paths
