"""The tokenize job: inputs -> DataLoader workers -> accelerated model -> committed shards -> manifest.

On every rank: discover (rank 0, broadcast) -> load the model -> rank 0 checks or writes the
header and deletes what an interrupted run left -> skip what is committed -> encode this rank's
block of the rest, committing a shard every ``shard_size`` inputs -> ``barrier`` -> rank 0 merges
every rank's records into ``manifest.csv``.

The device never waits for Python between batches: batch ``i + 1`` is copied (from pinned
memory, asynchronously) and its encode launched before the codes of batch ``i`` are read back,
and the codes come back through a pinned buffer with an event, so the host waits for batch ``i``
alone while batch ``i + 1`` runs.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import manifest as mf
from .dataset import Batch, loader_batch_size, make_loader, model_batches
from .distributed import DEFAULT_TIMEOUT_S, Context, partition
from .inputs import Item, discover
from .model_kinds import fingerprint, load_model, resolve_model_source
from .preprocess import CROPS, Preprocess, parse_size
from .shards import ShardWriter, clean_uncommitted, codes_dtype, read_committed, shard_dir

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Summary:
    """What a run did (summed over ranks). ``skipped`` = already committed + unsupported."""

    out: str
    done: int = 0  # inputs tokenized by this run
    failed: int = 0  # inputs this run could not read
    already_committed: int = 0  # skipped: committed by an earlier run
    unsupported: int = 0  # skipped: not attempted (e.g. video without a reader)
    rows: int = 0  # rows of codes written (frames count one each)
    seconds: float = 0.0
    world_size: int = 1
    dry_run: bool = False
    manifest: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.already_committed + self.unsupported

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        verb = "would tokenize" if self.dry_run else "tokenized"
        text = (f"{verb} {self.done} inputs, {self.failed} failed, {self.skipped} skipped "
                f"({self.already_committed} already committed, {self.unsupported} unsupported)")
        if not self.dry_run:
            text += (f"; {self.rows} rows of codes in {self.seconds:.1f} s ({self.rows_per_second:.1f} images/s) "
                     f"on {self.world_size} rank(s)")
        return "\n".join([text] + self.notes)


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPE_NAMES:
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of auto, fp32, bf16, fp16, got {dtype!r}")


def default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(8, per_rank - 1))


def check_positive(name: str, value, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return value


class BatchEncoder:
    """Runs the model on batches and hands the codes back one batch late (see the module doc)."""

    def __init__(self, model, device: torch.device, dtype: np.dtype, grid: tuple[int, int], chunk: int):
        self.model, self.device, self.grid, self.chunk = model, device, tuple(grid), chunk
        self.torch_dtype = {np.uint8: torch.uint8, np.int16: torch.int16, np.int32: torch.int32}[dtype.type]

    def launch(self, group: list[Batch]):
        """Queue the copies and the encode of one model batch; returns what ``result`` reads."""
        parts = [b.pixels.to(self.device, non_blocking=True) for b in group if b.ok]  # from pinned memory
        if not parts:
            return group, None, None
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        codes = torch.cat([self.model.encode_to_codes(x[i:i + self.chunk])[0]
                           for i in range(0, x.shape[0], self.chunk)])
        if tuple(codes.shape[1:]) != self.grid:
            raise RuntimeError(f"the model produced a {tuple(codes.shape[1:])} grid, expected {self.grid}")
        codes = codes.to(self.torch_dtype)
        if self.device.type != "cuda":
            return group, codes, None
        host = torch.empty(codes.shape, dtype=codes.dtype, pin_memory=True)
        host.copy_(codes, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return group, host, event

    @staticmethod
    def result(launched) -> tuple[list[Batch], np.ndarray | None]:
        group, host, event = launched
        if event is not None:
            event.synchronize()
        return group, None if host is None else host.numpy()


def batch_records(group: list[Batch], items: list[Item]) -> list[dict]:
    """Records in the order of the codes' rows (ok inputs, one per frame), then the failures."""
    records = []
    for position, rows, frames in (ok for batch in group for ok in batch.ok):
        source = items[position].source
        if frames:
            records += [{"source": source, "status": "ok", "frame": f, "time": round(t, 6)} for f, t in frames]
        else:
            records.append({"source": source, "status": "ok"})
    records += [{"source": items[p].source, "status": "failed", "reason": reason}
                for batch in group for p, reason in batch.failed]
    return records


def make_bar(total: int, ctx: Context, enabled: bool):
    if not enabled or ctx.rank != 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is optional: pip install tqdm
        return None

    tty = sys.stderr.isatty()
    desc = "tokenize" if ctx.world_size == 1 else f"tokenize (rank 0 of {ctx.world_size})"
    return tqdm(total=total, unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                mininterval=0.5 if tty else 30.0)


def encode_batches(loader, todo: list[Item], model, writer: ShardWriter, device: torch.device, *, chunk: int,
                   bar=None) -> tuple[int, int, int]:
    """Encode ``loader``'s batches (over ``todo``) in model batches of ``chunk`` rows and commit
    them; returns ``(done, failed, rows)``."""
    encoder = BatchEncoder(model, device, writer.dtype, writer.grid, chunk)
    done = failed = rows = 0

    def finish(launched) -> None:
        nonlocal done, failed, rows
        group, codes = BatchEncoder.result(launched)
        codes = np.empty((0, *writer.grid), writer.dtype) if codes is None else codes
        writer.add(codes, batch_records(group, todo))
        ok, bad = sum(len(b.ok) for b in group), sum(len(b.failed) for b in group)
        done, failed, rows = done + ok, failed + bad, rows + codes.shape[0]
        if bar is not None:
            bar.update(ok + bad)
            if failed:
                bar.set_postfix(failed=failed, refresh=False)

    pending = None
    for group in model_batches(loader, chunk):
        launched = encoder.launch(group)  # batch i + 1 is queued before batch i is read back
        if pending is not None:
            finish(pending)
        pending = launched
    if pending is not None:
        finish(pending)
    writer.commit()
    return done, failed, rows


def encode_items(todo: list[Item], model, writer: ShardWriter, ctx: Context, pre: Preprocess, *, batch_size: int,
                 workers: int, prefetch: int, fps: float, progress: bool) -> tuple[int, int, int]:
    """Encode ``todo`` through a DataLoader and commit it; returns ``(done, failed, rows)``."""
    if not todo:
        writer.commit()
        return 0, 0, 0
    loader = make_loader(todo, pre, batch_size=loader_batch_size(batch_size, workers), workers=workers,
                         prefetch=prefetch, pin_memory=ctx.device.type == "cuda", fps=fps)
    bar = make_bar(len(todo), ctx, progress)
    try:
        return encode_batches(loader, todo, model, writer, ctx.device, chunk=batch_size, bar=bar)
    finally:
        if bar is not None:
            bar.close()


def prepare_out(out: str, header: dict, dry_run: bool) -> list[str]:
    """Rank 0: refuse a mismatched ``out``, write the header, delete uncommitted leftovers."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out {out!r} exists and is not a folder")
    existing = os.path.isdir(out) and mf.check_header(out, header)
    if os.path.isdir(out) and not existing and os.path.isdir(shard_dir(out)) and os.listdir(shard_dir(out)):
        raise ValueError(f"out {out!r} has shards but no {mf.HEADER}; refusing to add to it")
    if dry_run:
        return []
    os.makedirs(shard_dir(out), exist_ok=True)
    if not existing:
        mf.write_header(out, header)
    return clean_uncommitted(out)


def tokenize(input, out, model: str, *, config: str | None = None, checkpoint: str | None = None,
             level: int | None = None, size=None, crop: str = "center", dtype="auto", batch_size: int = 64,
             workers: int | None = None, prefetch: int = 4, shard_size: int = 4096, device=None, fps: float = 1.0,
             retry_failed: bool = False, dry_run: bool = False, progress: bool = True,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> Summary:
    """Tokenize every image (and video frame) under ``input`` into ``out``; see ``docs/tokenize.md``.

    Args:
        input: a folder (recursive), a ``.tar`` shard, a text file of paths, or one image / video.
        out: output folder (created); rerunning the same call resumes.
        model, config, checkpoint, level: the model (see :mod:`vqvae_fast.tokenize.model_kinds`).
        size: ``N`` or ``(H, W)`` / ``"HxW"``; default the model's training resolution.
        crop: ``"center"`` (keep aspect, crop the middle) or ``"stretch"``.
        dtype: ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        batch_size: images per model call; workers: DataLoader processes (default from the CPU
            count per local rank, at most 8); prefetch: batches each worker reads ahead.
        shard_size: inputs per committed shard (the work a crash can lose).
        device: default ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``.
        fps: frames per second sampled from videos.
        retry_failed: try again the inputs an earlier run recorded as failed.
        dry_run: report what would be done; write nothing.
        progress: a progress bar on rank 0.

    Returns a :class:`Summary` (the same on every rank). Raises ``ValueError`` for bad arguments
    and for an ``out`` that holds codes of another model or preprocessing.
    """
    for name, value in (("batch_size", batch_size), ("prefetch", prefetch), ("shard_size", shard_size)):
        check_positive(name, value)
    workers = default_workers() if workers is None else check_positive("workers", workers, allow_zero=True)
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path, got {type(out).__name__}")
    out = os.fspath(out)
    try:
        import PIL  # noqa: F401 - decoding needs it; fail here, not once per image in the workers
    except ImportError as err:
        raise ImportError("vqvae_fast.tokenize needs Pillow to read images: pip install pillow") from err
    source = resolve_model_source(model, config=config, checkpoint=checkpoint, level=level)
    ctx = Context.from_environment(device, timeout_s)
    try:
        torch_dtype = resolve_dtype(dtype, ctx.device)
        return run(ctx, input, out, source, size, crop, torch_dtype, batch_size=batch_size, workers=workers,
                   prefetch=prefetch, shard_size=shard_size, fps=float(fps), retry_failed=retry_failed,
                   dry_run=dry_run, progress=progress)
    finally:
        ctx.close()


def run(ctx: Context, input, out: str, source, size, crop, torch_dtype, *, batch_size, workers, prefetch,
        shard_size, fps, retry_failed, dry_run, progress) -> Summary:
    started = time.perf_counter()
    items = ctx.on_rank0(lambda: discover(input, fps))
    model = ctx.on_every_rank(lambda: load_model(source, ctx.device, torch_dtype))
    pre = Preprocess(parse_size(size if size is not None else model.native_size), crop)
    f = model.downsampling
    if pre.size[0] % f or pre.size[1] % f:
        raise ValueError(f"size {pre.size} must be divisible by the model's downsampling factor {f}")
    grid = (pre.size[0] // f, pre.size[1] // f)
    dtype = codes_dtype(model.codebook_size)

    def header() -> dict:
        fp = {"model": fingerprint(source), "preprocess": {**pre.as_dict(), "fps": fps},
              "dtype": DTYPE_NAMES[torch_dtype], "codebook_size": model.codebook_size,
              "codes_dtype": dtype.name, "grid": list(grid)}
        fp["preprocess"].pop("pillow")  # recorded under versions, not compared
        return mf.make_header(fp, model_source=source.as_dict(), description=model.description,
                              input_path=os.fspath(input), device=str(ctx.device))

    removed = ctx.on_rank0(lambda: prepare_out(out, header(), dry_run))
    committed = read_committed(out) if os.path.isdir(shard_dir(out)) else {}
    settled = {s for s, recs in mf.committed_by_source(committed).items()
               if recs[0]["status"] == "ok" or not retry_failed}
    mine = [items[i] for i in partition(len(items), ctx.rank, ctx.world_size)]
    todo = [it for it in mine if it.source not in settled and it.kind != "unsupported"]
    counts = {"already": sum(it.source in settled for it in mine),
              "unsupported": sum(it.kind == "unsupported" and it.source not in settled for it in mine)}
    if dry_run:
        counts.update(done=len(todo), failed=0, rows=0, first=[it.source for it in todo[:3]])
    else:
        writer = ShardWriter(out, ctx.rank, dtype, grid, shard_size, ShardWriter.first_free_index(out, ctx.rank))
        done, failed, rows = encode_items(todo, model, writer, ctx, pre, batch_size=batch_size, workers=workers,
                                          prefetch=prefetch, fps=fps, progress=progress)
        counts.update(done=done, failed=failed, rows=rows)
    counts["seconds"] = time.perf_counter() - started
    ctx.barrier()  # every rank has committed its last shard
    gathered = ctx.gather(counts)
    summary = Summary(out, sum(c["done"] for c in gathered), sum(c["failed"] for c in gathered),
                      sum(c["already"] for c in gathered), sum(c["unsupported"] for c in gathered),
                      sum(c["rows"] for c in gathered), max(c["seconds"] for c in gathered), ctx.world_size, dry_run)
    if dry_run:
        for rank, c in enumerate(gathered):
            shown = ", ".join(c["first"]) + (", ..." if c["done"] > len(c["first"]) else "")
            summary.notes.append(f"rank {rank}: {c['done']} inputs to tokenize" + (f": {shown}" if shown else ""))
    if removed:
        summary.notes.append(f"removed {len(removed)} uncommitted files left by an interrupted run")
    if summary.unsupported:
        reasons = sorted({it.reason for it in items if it.kind == "unsupported"})
        summary.notes.append(f"skipped {summary.unsupported} inputs: {'; '.join(reasons)}")
    if not dry_run:
        summary.manifest = ctx.on_rank0(lambda: mf.write_manifest(out, mf.manifest_rows(items, read_committed(out))))
    return summary
