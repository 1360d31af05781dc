"""The reading side: a map-style dataset (decode + preprocess in DataLoader workers) and its loader.

Each sample is one item: its pixels ``(T, 3, H, W)`` uint8 (``T = 1`` for an image, the sampled
frames of a video) or the reason it could not be read. A failure is data, not an exception, so
a corrupt file never stops a worker. Loader batches group consecutive items until their expected rows
reach a quarter of the model's batch (a video counts its frames; see ``loader_batch_size``); the
collate function stacks the pixels and pins them (on CUDA) so that the copy to the device can
overlap the previous batch's compute; ``model_batches`` joins loader batches into model batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from .inputs import Item
from .preprocess import Preprocess, open_image


@dataclass
class Sample:
    position: int  # index into the dataset's item list
    pixels: torch.Tensor | None  # (T, 3, H, W) uint8
    frames: list = field(default_factory=list)  # [(frame_index, seconds)] for a video
    reason: str = ""


@dataclass
class Batch:
    pixels: torch.Tensor  # (rows, 3, H, W) uint8, the ok samples' rows in order
    ok: list[tuple[int, int, list]]  # (position, rows, frames) per ok sample
    failed: list[tuple[int, str]]  # (position, reason)

    def pin_memory(self) -> "Batch":  # called by the DataLoader's pinning thread
        self.pixels = self.pixels.pin_memory()
        return self


def read_bytes(item: Item) -> bytes:
    with open(item.path, "rb") as f:
        f.seek(item.offset)
        data = f.read(item.size)
    if len(data) != item.size:
        raise OSError(f"tar shard ended after {len(data)} of {item.size} bytes of this member")
    return data


class ItemDataset(Dataset):
    """Items to preprocessed pixels; picklable (workers may be spawned)."""

    def __init__(self, items: list[Item], preprocess: Preprocess, fps: float = 1.0):
        self.items = items
        self.preprocess = preprocess
        self.fps = fps

    def __len__(self) -> int:
        return len(self.items)

    def load(self, item: Item) -> tuple[torch.Tensor, list]:
        if item.kind == "video":
            from .video import read_frames

            frames, pixels = [], []
            for index, seconds, image in read_frames(item.path, self.fps):
                frames.append((index, seconds))
                pixels.append(self.preprocess(image))
            if not pixels:
                raise ValueError("the video has no decodable frame")
            return torch.stack(pixels), frames
        with open_image(read_bytes(item) if item.kind == "member" else item.path) as image:
            return self.preprocess(image)[None], []

    def __getitem__(self, position: int) -> Sample:
        item = self.items[position]
        if item.kind in ("failed", "unsupported"):
            return Sample(position, None, reason=item.reason)
        try:
            pixels, frames = self.load(item)
        except Exception as err:  # noqa: BLE001 - any decoding error is recorded, never fatal
            message = str(err).splitlines()[0] if str(err) else ""
            return Sample(position, None, reason=f"{type(err).__name__}: {message}"[:300])
        return Sample(position, pixels, frames)


def collate(samples: list[Sample]) -> Batch:
    ok = [s for s in samples if s.pixels is not None]
    failed = [(s.position, s.reason) for s in samples if s.pixels is None]
    if ok:
        pixels = torch.cat([s.pixels for s in ok])
    else:
        pixels = torch.empty((0, 3, 1, 1), dtype=torch.uint8)
    return Batch(pixels, [(s.position, s.pixels.shape[0], s.frames) for s in ok], failed)


def group_batches(items: list[Item], batch_size: int) -> list[list[int]]:
    """Consecutive positions grouped until their expected rows reach ``batch_size``."""
    batches, current, rows = [], [], 0
    for position, item in enumerate(items):
        current.append(position)
        rows += item.weight
        if rows >= batch_size:
            batches.append(current)
            current, rows = [], 0
    if current:
        batches.append(current)
    return batches


def loader_batch_size(batch_size: int, workers: int) -> int:
    """Rows per DataLoader batch: a quarter of the model's batch when several workers read.

    A worker decodes a whole loader batch before the main process sees any of it, so the first
    model batch waits for one loader batch's decoding; quartering it cuts that start-up by 4x
    (and evens out the workers' load), and the main loop joins the pieces again.
    """
    return max(1, -(-batch_size // 4)) if workers > 1 else batch_size


def model_batches(loader, rows: int):
    """Consecutive loader batches joined into groups of at least ``rows`` image rows (the last may
    have fewer); a group is a list of :class:`Batch`."""
    group, count = [], 0
    for batch in loader:
        group.append(batch)
        count += batch.pixels.shape[0]
        if count >= rows:
            yield group
            group, count = [], 0
    if group:
        yield group


def make_loader(items: list[Item], preprocess: Preprocess, *, batch_size: int, workers: int, prefetch: int,
                pin_memory: bool, fps: float = 1.0, persistent_workers: bool = False) -> DataLoader:
    """A DataLoader over ``items``: ``workers`` processes decode, each ``prefetch`` batches ahead."""
    return DataLoader(
        ItemDataset(items, preprocess, fps),
        batch_sampler=group_batches(items, batch_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers > 0 else None,
        persistent_workers=persistent_workers and workers > 0,  # True: iterate again without new workers
    )
