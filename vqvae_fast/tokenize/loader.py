"""Reading a tokenize output back: ``load_codes(OUT)``.

Without this package the same data reads with numpy and the csv module: ``manifest.csv`` says
for each input its shard and row, and ``shards/<shard>.npy`` is a ``(rows, h, w)`` array::

    import csv, numpy as np
    for line in csv.DictReader(open("OUT/manifest.csv")):
        if line["status"] == "ok":
            codes = np.load(f"OUT/shards/{line['shard']}.npy", mmap_mode="r")[int(line["row"])]
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .manifest import read_header, read_manifest
from .shards import shard_dir


@dataclass
class Codes:
    """The codes of every ``ok`` manifest line, in manifest order.

    ``codes``: ``(N, h, w)`` integer array (the header's ``codes_dtype``); ``sources[i]`` and
    ``frames[i]`` (``None`` for images) say where row ``i`` came from; ``failed`` and ``skipped``
    list ``(source, reason)``; ``header`` is ``header.json``.
    """

    codes: np.ndarray
    sources: list[str]
    frames: list[int | None]
    failed: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    header: dict

    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def codebook_size(self) -> int:
        return int(self.header["fingerprint"]["codebook_size"])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.header["fingerprint"]["grid"])


def load_codes(out, *, sources=None) -> Codes:
    """Load the codes in ``out`` (all of them, or those of the given ``sources``) into memory.

    Raises ``ValueError`` if ``out`` is not a finished tokenize output.
    """
    out = os.fspath(out)
    header = read_header(out)
    if header is None:
        raise ValueError(f"out {out!r} has no header.json: not a tokenize output")
    lines = read_manifest(out)
    wanted = None if sources is None else set(sources)
    ok = [line for line in lines if line["status"] == "ok" and (wanted is None or line["source"] in wanted)]
    if wanted is not None:
        missing = wanted - {line["source"] for line in ok}
        if missing:
            raise ValueError(f"sources not tokenized in {out!r}: {sorted(missing)[:5]}")
    fp = header["fingerprint"]
    codes = np.empty((len(ok), *fp["grid"]), dtype=np.dtype(fp["codes_dtype"]))
    by_shard = defaultdict(list)
    for position, line in enumerate(ok):
        by_shard[line["shard"]].append((position, line["row"]))
    for shard, pairs in by_shard.items():
        array = np.load(os.path.join(shard_dir(out), shard + ".npy"), mmap_mode="r")
        positions, rows = (np.array(v, dtype=np.int64) for v in zip(*pairs))
        codes[positions] = array[rows]
    return Codes(
        codes, [line["source"] for line in ok], [line["frame"] for line in ok],
        [(line["source"], line["reason"]) for line in lines if line["status"] == "failed"],
        [(line["source"], line["reason"]) for line in lines if line["status"] in ("skipped", "pending")],
        header)
