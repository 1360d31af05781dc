"""The static performance model: estimated kernel times without a GPU (``vqvae-fast bench --static``).

For every case of a benchmark shape set (``benchmarks/shapes.py``; default ``full``, which holds
the ``quick`` shapes) and each modelled GPU (H100 ``sm_90a``, A100 ``sm_80``): the launches the
planners make (on ``meta`` tensors, nothing runs), each launch's table entry compiled ahead of
time for that architecture (registers, spills, shared memory, SASS; cached on disk), CTAs per SM,
waves, the instruction mix and pipelining, the bytes and FLOPs each launch really moves and
executes against the op's floor, and an estimated time and % of floor with the limit that binds.
The model is stated in ``benchmarks/static/estimate.py`` and docs/performance.md; the per-op
accounting lives in ``benchmarks/static/work_<op>.py``. Every number is an estimate, to be
replaced by measurements: when a GPU run's ``results.json`` is given (``--measured``) or found
under ``benchmarks/results/<gpu>/``, model and measurement are printed side by side.

Writes ``static_model.md``, ``.csv`` and ``.json`` into ``--out`` (default ``bench-out``)::

    vqvae-fast bench --static                         # full set, H100 and A100
    vqvae-fast bench --static --shapes quick --ops spatial_attention --gpus sm_90a
    python -m vqvae_fast.benchmarks.static_model --out benchmarks/results/static-model
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

from .shapes import DTYPES, SETS

STATIC_OPS = ("group_norm_silu", "spatial_attention", "codebook_argmin")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def add_static_arguments(parser: argparse.ArgumentParser, standalone: bool = False) -> None:
    """The static model's options (``vqvae-fast bench`` takes them beside its own)."""
    if standalone:
        parser.add_argument("--ops", default=",".join(STATIC_OPS), help="ops, comma-separated")
        parser.add_argument("--shapes", choices=SETS, default=None, help="shape set (default full)")
        parser.add_argument("--dtype", default=None, help=f"dtypes, comma-separated ({','.join(DTYPES)})")
        parser.add_argument("--modes", default=None, help="forward, backward (default both)")
        parser.add_argument("--out", default="bench-out", help="output folder (default ./bench-out)")
    else:
        parser.add_argument("--static", action="store_true",
                            help="estimate kernel times with the static model instead of running anything "
                                 "(no GPU needed; see docs/performance.md)")
    parser.add_argument("--gpus", default="sm_90a,sm_80",
                        help="static model: GPUs to model (sm_90a: H100, sm_80: A100)")
    parser.add_argument("--cache", default=None,
                        help="static model: folder of cached compilations (default ~/.cache/vqvae_fast/static)")
    parser.add_argument("--measured", action="append", default=None,
                        help="static model: a GPU run's results.json to compare with (default: every "
                             "benchmarks/results/*/results.json of a modelled GPU)")
    parser.add_argument("--workers", type=int, default=None, help="static model: parallel compilations")


def _names(value, default) -> tuple:
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def run_static(args) -> int:
    from .static import model, report
    from .static.hardware import GPUS

    started = time.monotonic()
    ops = tuple(op for op in _names(args.ops, STATIC_OPS) if op in STATIC_OPS)
    gpus = _names(args.gpus, GPUS)
    unknown = [g for g in gpus if g not in GPUS]
    if unknown or not ops:
        print(f"vqvae-fast bench --static: GPUs must be among {', '.join(GPUS)} and ops among "
              f"{', '.join(STATIC_OPS)}", file=sys.stderr)
        return 2
    modes = tuple(m for m in _names(args.modes, ("forward", "backward")) if m != "forward+backward") or (
        "forward", "backward")
    cases = model.cases(args.shapes or "full", ops, _names(args.dtype, ()) or None, modes)
    print(f"vqvae-fast bench --static: {len(cases)} cases on {', '.join(GPUS[g].name for g in gpus)} "
          f"(compiling what the cache lacks)", file=sys.stderr, flush=True)
    estimates = model.run(cases, tuple(GPUS[g] for g in gpus), args.cache, args.workers)
    paths = report.write(estimates, args.out)
    for e in estimates:
        print(_line(e))
    measured = args.measured
    if measured is None:
        measured = sorted(glob.glob(os.path.join(RESULTS, "*", "results.json")))
    for path in measured:
        with open(path) as f:
            rows = report.compare(estimates, json.load(f))
        if rows:
            print("\n" + report.comparison_text(rows))
    errors = [e for e in estimates if e.error]
    print(f"wrote {', '.join(os.path.basename(p) for p in paths.values())} to {args.out}/ in "
          f"{time.monotonic() - started:.0f} s; every time and % of floor is an estimate", file=sys.stderr)
    return 1 if errors else 0


def _line(e) -> str:
    c = e.case
    if e.error:
        return f"{e.gpu.key:<7} {c.op:<18} {c.shape:<16} {c.dtype:<5} {c.format:<13} {c.mode:<8} error: {e.error}"
    return (f"{e.gpu.key:<7} {c.op:<18} {c.shape:<16} {c.dtype:<5} {c.format:<13} {c.mode:<8} "
            f"{c.provider:<16} est. {e.seconds * 1e6:9.1f} us  floor {e.floor_seconds * 1e6:8.1f} us  "
            f"{e.pct_floor:5.1f}% of floor  binds: {e.binds}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqvae_fast.benchmarks.static_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_static_arguments(parser, standalone=True)
    return run_static(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
