"""Timing and peak memory of one callable on one device.

CUDA: warm-up, then each repetition is timed with CUDA events after a write of a buffer larger
than the L2 cache (so that no input is read from a warm L2), and the per-run times give the median
and the 20th/80th percentiles. CPU: wall clock of each repetition, repeated until a time budget
is spent (at least ``min_reps`` runs).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during one call, minus what was
allocated before it (so: the call's working memory and outputs). On CPU the same quantity from the
profiler's allocation events (each allocation and free of torch's CPU allocator during one call,
summed in time order; the running maximum is the peak).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100] of ``values`` (numpy's default method)."""
    if not values:
        raise ValueError("values must not be empty")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Timing:
    p50: float  # seconds
    p20: float
    p80: float
    reps: int

    @classmethod
    def of(cls, seconds: list[float]) -> "Timing":
        return cls(percentile(seconds, 50), percentile(seconds, 20), percentile(seconds, 80), len(seconds))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class L2Flusher:
    """Writes a buffer twice the size of the device's L2 cache (at least 64 MiB) before each run."""

    def __init__(self, device: torch.device):
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or 50 * 2**20
        self.buffer = torch.empty(max(2 * l2, 64 * 2**20) // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def time_cuda(fn: Callable[[], object], device: torch.device, flush: Callable[[], None],
              target_s: float = 0.1, min_reps: int = 5, max_reps: int = 200, warmup_s: float = 0.02) -> Timing:
    """Median and 20/80 percentiles of ``fn`` with CUDA events, L2 flushed before each run."""
    synchronize(device)
    # warm-up: at least two runs and ``warmup_s``; also estimates the time per run
    start = time.perf_counter()
    runs = 0
    while runs < 2 or time.perf_counter() - start < warmup_s:
        fn()
        synchronize(device)
        runs += 1
        if runs >= 50:
            break
    per_run = (time.perf_counter() - start) / runs
    reps = int(min(max_reps, max(min_reps, target_s / max(per_run, 1e-6))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush()
        starts[i].record()
        fn()
        ends[i].record()
    synchronize(device)
    return Timing.of([s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)])


def time_cpu(fn: Callable[[], object], target_s: float = 0.2, min_reps: int = 3, max_reps: int = 100,
             warmup: bool = True) -> Timing:
    """Median and 20/80 percentiles of ``fn`` by wall clock (after one warm-up run if ``warmup``)."""
    if warmup:
        fn()
    seconds = []
    spent = 0.0
    while len(seconds) < min_reps or (spent < target_s and len(seconds) < max_reps):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        spent += elapsed
    return Timing.of(seconds)


def time_host_loop(fn: Callable[[], object], device: torch.device, target_s: float = 0.2,
                   inner_s: float = 2e-3, max_loops: int = 200) -> Timing:
    """Per-call host wall clock of ``fn``: loops of back-to-back calls (about ``inner_s`` each)
    with one device synchronisation per loop, median and percentiles over loops. For calls whose
    cost is mostly Python and dispatch: per-call timers and events would measure themselves."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    inner = max(1, int(inner_s / max(time.perf_counter() - start, 1e-7)))
    per_call, spent = [], 0.0
    while len(per_call) < 5 or (spent < target_s and len(per_call) < max_loops):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        per_call.append(elapsed / inner)
        spent += elapsed
    return Timing.of(per_call)


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[object, float | None]:
    """Run ``fn`` once; return its result and the peak bytes it allocated beyond what existed."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        return out, float(torch.cuda.max_memory_allocated(device) - before)
    return _cpu_peak_memory(fn)


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 for a moment: kineto prints a line at every profiler start and
    stop from C++, which no setting turns off."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_memory(fn: Callable[[], object]) -> tuple[object, float | None]:
    """Peak of (bytes allocated - bytes freed) by torch's CPU allocator during ``fn``.

    Read from the profiler's ``[memory]`` events; ``None`` if this torch does not expose them.
    """
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events = [e for e in events if str(e.device_type()).endswith("CPU")]
        current = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            current += event.nbytes()
            peak = max(peak, current)
    except Exception:  # private profiler API: report n/a rather than a wrong number
        return out, None
    return out, float(peak)
