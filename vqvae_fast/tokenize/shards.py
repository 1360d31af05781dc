"""The output shards: codes as ``.npy`` arrays plus one record file each, committed atomically.

Layout of ``OUT/shards/`` (every file readable with numpy and json alone)::

    r00000-000000.npy    codes of rank 0's first shard: (rows, h, w), the smallest integer dtype
                         that holds the codebook (uint8 up to 256 codes, int16 up to 32768,
                         int32 above; signed int16 because torch has no uint16 arithmetic on the
                         versions we support, and codes are never negative)
    r00000-000000.json   its records: one per input committed with the shard (ok ones with their
                         row, failed ones with the reason), the grid, the row count

A shard is committed when its ``.json`` exists: the ``.npy`` is written to a temporary name in
the same folder, flushed to disk (``fsync``), renamed, then the same for the ``.json``, then the
folder is fsynced. A kill at any point leaves either a committed shard or files that the next
run deletes (temporaries, a ``.npy`` without its ``.json``). Every rank writes only its own
``rNNNNN-*`` names, so ranks never touch each other's files.
"""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

SHARD_DIR = "shards"
SHARD_NAME = re.compile(r"^r(\d{5})-(\d{6})\.json$")
TMP_MARK = ".tmp-"


def codes_dtype(codebook_size: int) -> np.dtype:
    """The smallest integer dtype holding codes ``0 .. codebook_size - 1``."""
    if codebook_size <= 1 << 8:
        return np.dtype(np.uint8)
    if codebook_size <= 1 << 15:
        return np.dtype(np.int16)
    if codebook_size <= 1 << 31:
        return np.dtype(np.int32)
    raise ValueError(f"codebook_size {codebook_size} does not fit int32")


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, write, *, sync_dir: bool = True) -> None:
    """``write(file)`` to a temporary sibling, fsync, rename over ``path`` (then fsync the folder)."""
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if sync_dir:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_json_atomic(path: str, payload, **kwargs) -> None:
    data = json.dumps(payload, indent=1, sort_keys=True).encode()
    write_atomic(path, lambda f: f.write(data), **kwargs)


def shard_dir(out: str) -> str:
    return os.path.join(out, SHARD_DIR)


def shard_rows(npy_path: str) -> int | None:
    """Rows of a ``.npy`` read from its header alone; None if it is unreadable."""
    try:
        return int(np.load(npy_path, mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return None


def read_committed(out: str) -> dict[str, dict]:
    """Every committed shard: name (``r00000-000000``) -> its record file's content."""
    shards = {}
    for path in sorted(glob.glob(os.path.join(shard_dir(out), "r*-*.json"))):
        name = os.path.basename(path)
        if not SHARD_NAME.match(name):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                part = json.load(f)
        except (OSError, ValueError):
            continue  # cannot happen after an atomic commit; such a file is cleaned up
        if shard_rows(path[:-5] + ".npy") != part.get("rows"):
            continue
        shards[name[:-5]] = part
    return shards


def clean_uncommitted(out: str) -> list[str]:
    """Delete what an interrupted run left: temporaries, arrays without records, broken pairs."""
    folder = shard_dir(out)
    committed = read_committed(out)
    removed = []
    for path in sorted(glob.glob(os.path.join(folder, "r*"))):
        name = os.path.basename(path)
        stem = name.split(TMP_MARK)[0].rsplit(".", 1)[0]
        if TMP_MARK in name or stem not in committed:
            os.remove(path)
            removed.append(name)
    return removed


class ShardWriter:
    """Buffers one rank's codes and records; commits a shard every ``shard_size`` rows."""

    def __init__(self, out: str, rank: int, dtype: np.dtype, grid: tuple[int, int], shard_size: int,
                 start_index: int):
        self.folder = shard_dir(out)
        self.rank = rank
        self.dtype = dtype
        self.grid = tuple(grid)
        self.shard_size = shard_size
        self.next_index = start_index
        self.arrays: list[np.ndarray] = []
        self.records: list[dict] = []
        self.rows = 0
        self.committed: list[str] = []

    @staticmethod
    def first_free_index(out: str, rank: int) -> int:
        taken = [int(m.group(2)) for n in os.listdir(shard_dir(out)) if (m := SHARD_NAME.match(n))
                 and int(m.group(1)) == rank]
        return max(taken, default=-1) + 1

    def add(self, codes: np.ndarray, records: list[dict]) -> None:
        """``codes`` ``(n, h, w)`` for the ``status == "ok"`` records (in order), plus failed records."""
        ok = [r for r in records if r["status"] == "ok"]
        if codes.shape[0] != len(ok):
            raise ValueError(f"{codes.shape[0]} rows of codes for {len(ok)} ok records")
        for i, record in enumerate(ok):
            record["row"] = self.rows + i
        if codes.shape[0]:
            self.arrays.append(codes.astype(self.dtype, copy=False))
        self.records.extend(records)
        self.rows += codes.shape[0]
        if len(self.records) >= self.shard_size:  # failed inputs count too: they must be committed
            self.commit()

    def commit(self) -> str | None:
        if not self.records:
            return None
        name = f"r{self.rank:05d}-{self.next_index:06d}"
        codes = np.concatenate(self.arrays) if self.arrays else np.empty((0, *self.grid), self.dtype)
        write_atomic(os.path.join(self.folder, name + ".npy"), lambda f: np.save(f, codes), sync_dir=False)
        part = {"rows": int(codes.shape[0]), "grid": list(self.grid), "dtype": self.dtype.name,
                "records": self.records}
        write_json_atomic(os.path.join(self.folder, name + ".json"), part)  # the commit point
        self.committed.append(name)
        self.next_index += 1
        self.arrays, self.records, self.rows = [], [], 0
        return name
