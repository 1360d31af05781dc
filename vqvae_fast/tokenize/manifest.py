"""``OUT/header.json`` (what produced the codes) and ``OUT/manifest.csv`` (where each input went).

The header's ``fingerprint`` is everything that changes the codes: the model (kind, config,
SHA-256 of the weights), the preprocessing (size, crop, resampling, EXIF handling, video fps),
the compute dtype, the codebook size, the code dtype and grid. A run into an ``OUT`` whose
fingerprint differs is refused, so one ``OUT`` never mixes codes of two models. Versions, the
input path and the time of the first run are recorded beside it and not compared.

The manifest has one line per input (per frame for videos), in input order:
``source, status, shard, row, grid, frame, time, reason`` with ``status`` one of ``ok`` (codes
at ``shards/<shard>.npy[row]``), ``failed`` (unreadable; ``reason``), ``skipped`` (not attempted,
e.g. a video without a reader; ``reason``) or ``pending`` (not done yet: the job stopped early).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time

from .shards import write_atomic, write_json_atomic

HEADER = "header.json"
MANIFEST = "manifest.csv"
COLUMNS = ("source", "status", "shard", "row", "grid", "frame", "time", "reason")
FORMAT_VERSION = 1


def versions() -> dict:
    import numpy
    import torch

    from .._version import __version__

    out = {"vqvae_fast": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version(), "cuda": torch.version.cuda}
    try:
        import PIL

        out["pillow"] = PIL.__version__
    except ImportError:
        pass
    return out


def make_header(fingerprint: dict, *, model_source: dict, description: dict, input_path: str,
                device: str) -> dict:
    return {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "model_source": model_source,
            "model": description, "input": os.path.abspath(input_path), "device": device,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
            "files": {"shards": "shards/rRRRRR-NNNNNN.npy + .json", "manifest": MANIFEST}}


def differences(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [f"{prefix}: {old!r} != {new!r}"[:300]]


def read_header(out: str) -> dict | None:
    path = os.path.join(out, HEADER)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_header(out: str, header: dict) -> bool:
    """True if ``out`` already has a header matching ``header``; False if it has none. Raises
    ``ValueError`` listing the differences if it belongs to another model or preprocessing."""
    old = read_header(out)
    if old is None:
        return False
    # the JSON round trip makes tuples lists, as in the stored header
    diff = differences(old.get("fingerprint"), json.loads(json.dumps(header["fingerprint"])))
    if diff:
        raise ValueError(
            f"out {out!r} holds codes of another model or preprocessing; refusing to mix them. "
            f"Differences (stored != this run): {'; '.join(diff[:6])}. Use another output folder, or delete "
            "this one to start over.")
    return True


def write_header(out: str, header: dict) -> None:
    write_json_atomic(os.path.join(out, HEADER), header)


def committed_by_source(committed: dict[str, dict]) -> dict[str, list[dict]]:
    """source -> its committed records (with ``shard``); an ``ok`` commit wins over a ``failed`` one."""
    by_source: dict[str, list[dict]] = {}
    for shard in sorted(committed):
        for record in committed[shard]["records"]:
            record = {**record, "shard": shard, "grid": committed[shard]["grid"]}
            previous = by_source.get(record["source"])
            if previous and previous[0]["shard"] != shard:
                if previous[0]["status"] == "ok" or record["status"] != "ok":
                    continue  # keep the first ok commit; a retried failure's success replaces it
                by_source[record["source"]] = []
            by_source.setdefault(record["source"], []).append(record)
    return by_source


def manifest_rows(items, committed: dict[str, dict]) -> list[dict]:
    """Manifest lines for the current inputs (in order), then committed sources no longer listed."""
    by_source = committed_by_source(committed)
    rows = []
    for item in items:
        records = by_source.pop(item.source, None)
        if records:
            rows.extend(records)
        elif item.kind == "unsupported":
            rows.append({"source": item.source, "status": "skipped", "reason": item.reason})
        else:
            rows.append({"source": item.source, "status": "pending"})
    for source in sorted(by_source):
        rows.extend(by_source[source])
    return rows


def format_row(row: dict) -> list[str]:
    grid = row.get("grid")
    values = {**row, "grid": "x".join(map(str, grid)) if grid and row["status"] == "ok" else ""}
    if row["status"] != "ok":
        values["shard"] = values["shard"] if row["status"] == "failed" else ""
    return ["" if values.get(c) is None else str(values.get(c)) for c in COLUMNS]


def write_manifest(out: str, rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(format_row(row))
    path = os.path.join(out, MANIFEST)
    data = buffer.getvalue().encode()
    write_atomic(path, lambda f: f.write(data))
    return path


def read_manifest(out: str) -> list[dict]:
    """The manifest lines as dicts (``row`` and ``frame`` as int, ``time`` as float, or None)."""
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        raise ValueError(f"out {out!r} has no {MANIFEST}: the job has not finished (rerun it to resume and "
                         "write the manifest) or this is not a tokenize output")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            for key, kind in (("row", int), ("frame", int), ("time", float)):
                row[key] = kind(row[key]) if row.get(key) else None
            rows.append(row)
    return rows
