"""``vqvae-fast bench``: the benchmark suite from the command line (the README's main job)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .shapes import DTYPES, IMAGE_FORMATS, MODES, OPS, SETS

CPU_TIME_BUDGET_S = 150.0  # default safety net on CPU, so that a default run stays within minutes


def csv_list(choices):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated), got {text!r}")
        return items

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .definitions import EXTRA_PROVIDERS, PROVIDERS
    from .lowmem import PROVIDERS as LOWMEM_PROVIDERS
    from .tokenize_pipeline import PROVIDERS as TOKENIZE_PROVIDERS

    providers = tuple(dict.fromkeys(PROVIDERS + EXTRA_PROVIDERS + TOKENIZE_PROVIDERS + LOWMEM_PROVIDERS))
    parser.add_argument("--ops", type=csv_list(OPS), default=OPS, help=f"ops to run (default all: {','.join(OPS)})")
    parser.add_argument("--shapes", choices=SETS, default=None,
                        help="shape set: quick, full, cpu (CPU-sized), tiny (default: cpu on CPU, quick on CUDA)")
    parser.add_argument("--dtype", type=csv_list(DTYPES), default=None,
                        help="dtypes, e.g. bf16 or fp16,fp32 (default: the set's choice per op)")
    parser.add_argument("--formats", type=csv_list(IMAGE_FORMATS), default=None,
                        help="memory formats of the image ops: nchw, channels_last (default: the set's)")
    parser.add_argument("--modes", type=csv_list(MODES), default=None,
                        help="forward, backward, forward+backward (default: the set's; ops without a "
                             "backward run forward only)")
    parser.add_argument("--providers", type=csv_list(providers), default=None,
                        help=f"providers (default: all but whole-model torch.compile): {','.join(providers)}")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    parser.add_argument("--out", default="bench-out", help="output folder (default ./bench-out)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help=f"seconds for the whole run; the least important rows are skipped past it "
                             f"(default: none on CUDA, {CPU_TIME_BUDGET_S:.0f} on CPU)")
    parser.add_argument("--repeat-time", type=float, default=None,
                        help="seconds of measured runs per row (default 0.1 on CUDA, 0.2 on CPU)")
    parser.add_argument("--no-check", action="store_true", help="skip the error against the fp64 reference")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    parser.add_argument("--list", action="store_true", help="print the cases that would run and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-row lines")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice, fewer when the CPU is already "
                             "busy with other work, which makes multi-threaded timings jump)")
    parser.add_argument("--seed", type=int, default=0)
    from .static_model import add_static_arguments

    add_static_arguments(parser)


def resolve_device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("vqvae-fast bench: --device cuda was asked for but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"vqvae-fast bench: --device must be cpu or cuda[:N], got {name!r}")
    return device


def make_settings(args):
    import torch

    from .runner import Settings

    device = resolve_device(args.device)
    threads_note = None
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("vqvae-fast bench: --threads must be >= 1")
        torch.set_num_threads(args.threads)
    elif device.type == "cpu":
        threads_note = steady_cpu_threads()
    shapes = args.shapes or ("quick" if device.type == "cuda" else "cpu")
    budget = args.time_budget
    if budget is None and device.type == "cpu" and shapes != "tiny":
        budget = CPU_TIME_BUDGET_S
    return Settings(device=device, shapes=shapes, ops=tuple(args.ops), providers=args.providers,
                    dtypes=args.dtype, formats=args.formats, modes=args.modes, time_budget=budget or None,
                    target_s=args.repeat_time, check_errors=not args.no_check, seed=args.seed,
                    threads=torch.get_num_threads() if device.type == "cpu" else None, threads_note=threads_note)


def steady_cpu_threads() -> str | None:
    """On a CPU partly busy with other work, time with only the idle cores' worth of threads.

    OpenMP threads spin while they wait for each other; when another process holds one of the
    cores, a parallel op then waits for a scheduler time slice (~16 ms), so timings jump by
    orders of magnitude from run to run. Using ``cores - load`` threads (at least one) measures
    every provider the same way.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    idle = max(1, int(cores - load + 0.5))
    if idle < torch.get_num_threads():
        torch.set_num_threads(idle)
        return (f"CPU busy (load {load:.1f} on {cores} cores): timing with {idle} thread(s) for steady "
                f"numbers; pass --threads N to override")
    return None


def run(args) -> int:
    """Run the suite and write ``results.csv``, ``results.json``, ``table.txt`` and the plots."""
    import torch

    if getattr(args, "static", False):  # no GPU, nothing runs: the static performance model
        from .static_model import run_static

        return run_static(args)
    threads = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # leave the process as it was (the tests call this in-process)


def _run(args) -> int:
    started = time.monotonic()
    settings = make_settings(args)
    from . import report
    from .runner import Suite, plan, settings_dict

    planned = plan(settings)
    if args.list:
        for case, providers in planned:
            from .registry import all_benches

            bench = all_benches()[case.op]
            print(f"{case.op:<18} {bench.describe(case.shape):<26} {case.dtype:<5} {case.format:<13} "
                  f"{case.mode:<17} {','.join(providers)}")
        print(f"{len(planned)} cases, {sum(len(p) for _, p in planned)} rows on {settings.device} "
              f"(set {settings.shapes})")
        return 0

    os.makedirs(args.out, exist_ok=True)
    writer = report.CsvWriter(os.path.join(args.out, "results.csv"))

    def on_start(suite):  # environment and ceilings on disk before the first row
        report.write_json(os.path.join(args.out, "results.json"), {
            "environment": suite.env, "peaks": suite.peaks.as_dict(), "settings": settings_dict(settings),
            "rows": [], "notes": ["run in progress or interrupted"]})

    rows_total = sum(len(p) for _, p in planned)
    print(f"vqvae-fast bench: {len(planned)} cases, {rows_total} rows on {settings.device} "
          f"(set {settings.shapes}{', budget %.0f s' % settings.time_budget if settings.time_budget else ''}"
          f"{', %d CPU threads' % settings.threads if settings.threads else ''}); writing {args.out}/",
          file=sys.stderr, flush=True)
    if settings.threads_note:
        print(f"vqvae-fast bench: {settings.threads_note}", file=sys.stderr, flush=True)
    try:
        result = Suite(settings, on_row=writer, progress=not args.quiet, on_start=on_start).run()
    finally:
        writer.close()
    from .lowmem import memory_notes
    from .tokenize_pipeline import throughput_notes

    # images/s of the tokenize rows, peaks in activations of the lowmem rows
    notes = result.notes + throughput_notes(result.rows) + memory_notes(result.rows)
    out = report.write_outputs(args.out, result.rows, result.environment, result.peaks, result.settings,
                               result.wall_s, notes, plots=not args.no_plots)
    print(out["text"])
    if out["plot_note"]:
        print(out["plot_note"])
    files = ["results.csv", "results.json", "table.txt"] + [os.path.basename(p) for p in out["plots"]]
    print(f"wrote {', '.join(files)} to {args.out}/ in {time.monotonic() - started:.0f} s")
    statuses = {r["status"] for r in result.rows}
    if "ok" not in statuses:
        return 1
    return 3 if any("CUDA context lost" in (r["error"] or "") for r in result.rows) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqvae_fast.benchmarks", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
