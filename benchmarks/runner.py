"""Runs the cases of a set through every provider and turns each measurement into a row.

One case (op, shape, dtype, memory format, mode) builds its inputs once; every provider runs on
them in turn: first call (compilation, autotuning), one call for peak memory and the output, the
error of that output against the fp64 reference (computed once per case), then the timing. A
provider that raises gives a row with ``status = error`` and the message; the suite goes on. After
a CUDA error that breaks the context (illegal address, device-side assert) the remaining rows are
``skipped``, as are those left when ``time_budget`` runs out.
"""

from __future__ import annotations

import gc
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import formulas
from .definitions import OpBench, ProviderUnavailable, make_generator
from .registry import all_benches
from .device import Peaks, environment
from .shapes import OPS, Case, build_cases
from .timing import L2Flusher, Timing, peak_memory, synchronize, time_cpu, time_cuda, time_host_loop

COLUMNS = (
    "op", "provider", "backend", "mode", "shape", "dtype", "format", "status",
    "time_p50_us", "time_p20_us", "time_p80_us", "reps", "first_call_ms",
    "gbps", "tflops", "floor_us", "bound", "pct_floor", "speedup",
    "peak_mem_mb", "max_err", "rel_err", "flops", "bytes", "source", "error", "note",
    "device", "torch", "triton", "cuda", "vqvae_fast",
)
ENV_COLUMNS = ("device", "torch", "triton", "cuda", "vqvae_fast")
FATAL_CUDA_MARKERS = ("illegal memory access", "illegal address", "device-side assert", "unspecified launch failure",
                      "misaligned address", "an illegal instruction", "CUDA error: unknown error")


@dataclass
class Settings:
    device: torch.device
    shapes: str = "cpu"
    ops: tuple[str, ...] = OPS
    providers: tuple[str, ...] | None = None  # None: each op's default providers
    dtypes: tuple[str, ...] | None = None
    formats: tuple[str, ...] | None = None
    modes: tuple[str, ...] | None = None
    time_budget: float | None = None  # seconds for the whole run; None: no limit
    target_s: float | None = None  # measured time per row (default 0.1 s CUDA, 0.2 s CPU)
    check_errors: bool = True
    seed: int = 0
    threads: int | None = None  # torch CPU threads, for the record
    threads_note: str | None = None


@dataclass
class CaseState:
    grad_out: object = None
    grad_out_ready: bool = False
    expected: object = None
    expected_error: str | None = None
    expected_done: bool = False


@dataclass
class SuiteResult:
    rows: list[dict]
    environment: dict
    peaks: dict
    settings: dict
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def providers_for(bench: OpBench, settings: Settings) -> list[str]:
    available = bench.providers_on(settings.device)
    if settings.providers is not None:
        return [p for p in available if p in settings.providers]
    opt_in = getattr(bench, "opt_in_providers", ())
    return [p for p in available if p not in opt_in]


def plan(settings: Settings) -> list[tuple[Case, list[str]]]:
    """The cases to run, most important first, each with its providers."""
    benches = all_benches()
    unknown = [op for op in settings.ops if op not in benches]
    if unknown:
        raise ValueError(f"ops must be among {list(benches)}, got unknown {unknown}")
    cases = build_cases(settings.shapes, settings.ops, settings.dtypes, settings.formats, settings.modes,
                        allowed_modes=lambda shape: benches[shape.op].modes_for(shape))
    planned = [(case, providers_for(benches[case.op], settings)) for case in cases]
    return [(case, providers) for case, providers in planned if providers]


def is_fatal_cuda_error(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return False
    text = str(err)
    return any(marker in text for marker in FATAL_CUDA_MARKERS)


def short_error(err: BaseException, limit: int = 300) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text[:limit]


class Suite:
    def __init__(self, settings: Settings, on_row: Callable[[dict], None] | None = None, progress: bool = True,
                 on_start: Callable[["Suite"], None] | None = None):
        self.settings = settings
        self.device = settings.device
        self.on_row = on_row
        self.on_start = on_start
        self.progress = progress
        self.benches = all_benches()
        self.env = environment(self.device)
        self.peaks = Peaks(self.device)
        self.rows: list[dict] = []
        self.broken: str | None = None
        self.deadline: float | None = None
        self.flush = None
        self.target_s = settings.target_s or (0.1 if self.device.type == "cuda" else 0.2)

    # -- rows
    def new_row(self, case: Case, provider: str) -> dict:
        bench = self.benches[case.op]
        row = {c: None for c in COLUMNS}
        row.update(op=case.op, provider=provider, backend="", mode=case.mode, shape=bench.describe(case.shape),
                   dtype=case.dtype, format=case.format, source=case.shape.source, error="", note="")
        row.update({c: self.env[c] for c in ENV_COLUMNS})
        return row

    def emit(self, row: dict, bar) -> None:
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)
        if bar is not None:
            bar.update(1)
        elif self.progress and row["status"] != "skipped":
            print(progress_line(row), file=sys.stderr, flush=True)

    def skip(self, case: Case, provider: str, reason: str, bar) -> None:
        row = self.new_row(case, provider)
        row.update(status="skipped", error=reason)
        self.emit(row, bar)

    # -- the run
    def run(self) -> SuiteResult:
        start = time.monotonic()
        if self.settings.time_budget:
            self.deadline = start + self.settings.time_budget
        planned = plan(self.settings)
        self.measure_peaks(planned)
        if self.on_start is not None:
            self.on_start(self)
        if self.device.type == "cuda":
            self.flush = L2Flusher(self.device)
        bar = make_bar(sum(len(p) for _, p in planned), self.progress)
        try:
            for case, providers in planned:
                self.run_case(case, providers, bar)
        finally:
            if bar is not None:
                bar.close()
        notes = [self.settings.threads_note] if self.settings.threads_note else []
        skipped = sum(r["status"] == "skipped" for r in self.rows)
        if skipped:
            notes.append(f"{skipped} rows skipped ({self.broken or 'time budget'})")
        return SuiteResult(self.rows, self.env, self.peaks.as_dict(), settings_dict(self.settings),
                           time.monotonic() - start, notes)

    def measure_peaks(self, planned) -> None:
        """Bandwidth and the FLOP rate of every dtype this run needs, once, before any case."""
        self.peaks.bandwidth
        for case, providers in planned:
            bench = self.benches[case.op]
            if bench.has_flops:
                for provider in providers:
                    self.peaks.flop_rate(bench.peak_dtype(case, provider, self.device))

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def run_case(self, case: Case, providers: list[str], bar) -> None:
        bench = self.benches[case.op]
        if bar is not None:
            bar.set_postfix_str(f"{case.op} {bench.describe(case.shape)} {case.dtype} {case.format} {case.mode}")
        if self.broken or self.out_of_time():
            for provider in providers:
                self.skip(case, provider, self.broken or "time budget", bar)
            return
        gen = make_generator(self.device, self.settings.seed)
        try:
            inputs = bench.make_inputs(case, self.device, case.mode != "forward", gen)
            work = bench.work(case)
        except Exception as err:  # noqa: BLE001 - a case that cannot even be built is reported
            for provider in providers:
                row = self.new_row(case, provider)
                row.update(status="error", error="inputs: " + short_error(err))
                self.emit(row, bar)
            self.check_fatal(err)
            return
        if "compiled" in providers:
            torch._dynamo.reset()  # fresh caches: no guard pile-up or recompile limit across cases
        state = CaseState()
        reference_us = None  # the baseline runs first: speedups are known as rows come
        for provider in providers:
            if self.broken or self.out_of_time():
                self.skip(case, provider, self.broken or "time budget", bar)
                continue
            row = self.new_row(case, provider)
            self.measure(bench, case, provider, inputs, work, state, gen, row)
            if row["status"] == "ok":
                if provider == bench.baseline_provider:
                    reference_us = row["time_p50_us"]
                if reference_us is not None:
                    row["speedup"] = reference_us / row["time_p50_us"]
            self.emit(row, bar)
        del inputs, state
        release(self.device)

    def check_fatal(self, err: BaseException) -> None:
        if self.device.type == "cuda" and is_fatal_cuda_error(err):
            self.broken = f"CUDA context lost earlier ({short_error(err, 120)})"

    def measure(self, bench: OpBench, case: Case, provider: str, inputs, work, state: CaseState, gen, row) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self._measure(bench, case, provider, inputs, work, state, gen, row)
                row["status"] = "ok"
            except ProviderUnavailable as err:
                row.update(status="unavailable", error=str(err))
            except Exception as err:  # noqa: BLE001 - one failing provider must not end the suite
                row.update(status="error", error=short_error(err))
                self.check_fatal(err)
        if row["status"] == "error" and not self.broken:
            release(self.device)  # e.g. after running out of memory, before the next provider
        messages = [row["note"]] if row["note"] else []  # a self-measuring provider's own note
        for w in caught:
            text = f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}"
            if text not in messages:
                messages.append(text)
        if state.expected_error and row["status"] == "ok":
            messages.insert(0, f"fp64 reference failed: {state.expected_error}")
        row["note"] = " | ".join(messages)[:400]

    def _measure(self, bench, case, provider, inputs, work, state, gen, row) -> None:
        runner = bench.build(provider, inputs, case, self.device)
        row["backend"] = runner.backend
        if runner.measured is not None:
            self._record_measured(bench, case, provider, inputs, work, state, row, runner.measured())
            return
        with runner.scope():
            self._time_runner(bench, case, provider, inputs, work, state, gen, row, runner)

    def _record_measured(self, bench, case, provider, inputs, work, state, row, measured: dict) -> None:
        """The row of a provider that measured itself (a process per case and provider)."""
        row["first_call_ms"] = measured["first_call_s"] * 1e3
        peak = measured.get("peak_bytes")
        row["peak_mem_mb"] = None if peak is None else peak / 2**20
        row["note"] = measured.get("note", "")
        if self.settings.check_errors:
            expected = self.expected(bench, case, inputs, state)
            if expected is not None:
                row["max_err"], row["rel_err"] = bench.error(bench.output_for_error(measured["output"]), expected)
        self._fill_timing(bench, case, provider, work, row, Timing.of(measured["times_s"]))

    def _time_runner(self, bench, case, provider, inputs, work, state, gen, row, runner) -> None:
        device = self.device
        start = time.perf_counter()  # the first call: compilation, autotuning, the backward's graph
        call, result_of = make_call(bench, case, runner, state, gen)
        call()
        synchronize(device)
        row["first_call_ms"] = (time.perf_counter() - start) * 1e3

        out, peak = peak_memory(call, device)
        row["peak_mem_mb"] = None if peak is None else peak / 2**20
        if self.settings.check_errors:
            expected = self.expected(bench, case, inputs, state)
            if expected is not None:
                row["max_err"], row["rel_err"] = bench.error(result_of(out), expected)
        del out

        if getattr(bench, "host_loop", False):  # per-call overhead: loops of calls on the host
            timing = time_host_loop(call, device, target_s=self.target_s)
        elif device.type == "cuda":
            timing = time_cuda(call, device, self.flush, target_s=self.target_s)
        else:
            timing = time_cpu(call, target_s=self.target_s, warmup=False)  # the calls above warmed it
        self._fill_timing(bench, case, provider, work, row, timing)

    def _fill_timing(self, bench, case, provider, work, row, timing) -> None:
        device = self.device
        row.update(time_p50_us=timing.p50 * 1e6, time_p20_us=timing.p20 * 1e6, time_p80_us=timing.p80 * 1e6,
                   reps=timing.reps, flops=work.flops, bytes=work.bytes)
        if work.bytes is not None:
            row["gbps"] = work.bytes / timing.p50 / 1e9
        if work.flops is not None:
            row["tflops"] = work.flops / timing.p50 / 1e12
        flop_rate = self.peaks.flop_rate(bench.peak_dtype(case, provider, device)) if work.flops else None
        floor, bound = formulas.floor_seconds(work, self.peaks.bandwidth, flop_rate)
        if floor is not None:
            row.update(floor_us=floor * 1e6, bound=bound, pct_floor=100 * floor / timing.p50)

    def expected(self, bench, case, inputs, state: CaseState):
        """The fp64 reference of this case, computed on first need; None if it failed."""
        if not state.expected_done:
            state.expected_done = True
            try:
                state.expected = bench.expected(case, inputs, self.device, state.grad_out)
            except Exception as err:  # noqa: BLE001 - the timing stays valid without it
                state.expected_error = short_error(err, 160)
                self.check_fatal(err)
        return state.expected


def make_call(bench: OpBench, case: Case, runner, state: CaseState, gen):
    """The timed callable of a mode, and how to read the comparable result from its return."""
    if case.mode == "forward":
        def forward():
            with torch.no_grad():
                return runner.fn()

        return forward, bench.output_for_error

    def ensure_grad_out(out):
        if not state.grad_out_ready:
            state.grad_out = bench.make_grad_out(bench.output_for_error(out), gen)
            state.grad_out_ready = True

    def grads(result):
        return runner.grads_to_common(list(result))

    if case.mode == "backward":
        out = runner.fn()  # the graph the timed backward runs through, again and again
        ensure_grad_out(out)
        target, grad_out = bench.backward_target(out, state.grad_out)

        def backward():
            return torch.autograd.grad(target, runner.grad_tensors, grad_out, retain_graph=True, allow_unused=True)

        return backward, grads

    ensure_grad_out(runner.fn())

    def forward_backward():
        target, grad_out = bench.backward_target(runner.fn(), state.grad_out)
        return torch.autograd.grad(target, runner.grad_tensors, grad_out, allow_unused=True)

    return forward_backward, grads


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def settings_dict(settings: Settings) -> dict:
    out = {k: getattr(settings, k) for k in settings.__dataclass_fields__}
    out["device"] = str(settings.device)
    return out


def make_bar(total: int, progress: bool):
    """A tqdm progress bar on a terminal; None elsewhere (then one line per row is printed)."""
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    if not sys.stderr.isatty():
        return None
    return tqdm(total=total, unit="row", file=sys.stderr, dynamic_ncols=True, leave=False)


def progress_line(row: dict) -> str:
    if row["status"] != "ok":
        detail = f"{row['status']}: {row['error']}"
    else:
        speed = f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-"
        detail = f"{row['time_p50_us']:.1f} us  ({row['backend']}) {speed if row['provider'] != 'reference' else ''}"
    return f"[bench] {row['op']} {row['shape']} {row['dtype']} {row['format']} {row['mode']} {row['provider']}: {detail}"
