"""Finding the work: INPUT (a folder, a list file, a ``.tar`` shard, an image) to a sorted item list.

``INPUT`` may be

* a folder: walked recursively (hidden entries skipped), inputs sorted by relative path; images, ``.tar`` shards and
  videos found anywhere below it are inputs;
* a ``.tar`` file: a webdataset-style shard (uncompressed tar); each image member is an input,
  read later by offset without unpacking;
* a text file (any other file that is not an image or video): one path per line (``#`` starts a
  comment), relative paths taken from the list file's folder; each may be an image, a shard or
  a video; repeated paths count once;
* an image or a video file.

Every item gets a ``source`` name, unique in the run: the path relative to the folder (or list
file folder), and ``shard.tar::member`` for shard members. The order is deterministic (sorted
walk, list order), which is what sharding by rank relies on. An unreadable shard or a video
that cannot be read becomes an item that carries its reason instead of stopping the job.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
TAR_EXTENSIONS = (".tar",)


@dataclass(frozen=True)
class Item:
    """One input. ``kind``: ``image`` (a file), ``member`` (bytes at ``offset`` in the tar
    ``path``), ``video``, ``failed`` (unreadable before decoding; ``reason`` says why) or
    ``unsupported`` (e.g. a video without a video reader; not attempted, not committed)."""

    source: str
    kind: str
    path: str
    offset: int = 0
    size: int = 0
    weight: int = 1  # expected rows (frames for a video), for grouping items into batches
    reason: str = ""


def lower_ext(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def is_image(name: str) -> bool:
    return lower_ext(name) in IMAGE_EXTENSIONS


def tar_members(path: str, source: str) -> list[Item]:
    """The image members of an uncompressed tar (webdataset shard), in archive order."""
    try:
        with tarfile.open(path, "r:") as tar:
            return [Item(f"{source}::{m.name}", "member", path, m.offset_data, m.size)
                    for m in tar if m.isfile() and is_image(m.name)]
    except (OSError, tarfile.TarError, EOFError) as err:
        return [Item(source, "failed", path, reason=f"unreadable tar shard: {type(err).__name__}: {err}")]


def file_items(path: str, source: str, fps: float) -> list[Item]:
    ext = lower_ext(path)
    if ext in TAR_EXTENSIONS:
        return tar_members(path, source)
    if ext in VIDEO_EXTENSIONS:
        from .video import video_item

        return [video_item(path, source, fps)]
    return [Item(source, "image", path)]


def walk(folder: str):
    """Files below ``folder``, hidden files and folders skipped."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def relative_source(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def list_file_paths(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    paths = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                paths.append(line if os.path.isabs(line) else os.path.join(base, line))
    return paths


def discover(input_path: str, fps: float = 1.0) -> list[Item]:
    """Every input under ``input_path``, in a deterministic order, with unique sources."""
    if not isinstance(input_path, (str, os.PathLike)):
        raise TypeError(f"input must be a path, got {type(input_path).__name__}")
    input_path = os.fspath(input_path)
    if not os.path.exists(input_path):
        raise ValueError(f"input {input_path!r} does not exist")
    wanted = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS + TAR_EXTENSIONS
    if os.path.isdir(input_path):
        paths = sorted(p for p in walk(input_path) if lower_ext(p) in wanted)  # sorted by relative path
        root = input_path
    elif lower_ext(input_path) in wanted:
        paths, root = [input_path], os.path.dirname(os.path.abspath(input_path))
    else:
        paths, root = list_file_paths(input_path), os.path.dirname(os.path.abspath(input_path))
    items, seen = [], set()
    for path in paths:
        source = relative_source(os.path.abspath(path), os.path.abspath(root))
        if source in seen:
            continue
        seen.add(source)
        items.extend(file_items(path, source, fps))
    return items
