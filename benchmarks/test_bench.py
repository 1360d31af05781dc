"""The benchmark definitions as pytest-benchmark tests (``pytest benchmarks/``).

Each test sets up one provider on one case exactly as ``vqvae-fast bench`` does, then lets
pytest-benchmark time it (the L2 cache flushed and the device synchronised around every round on
CUDA). GB/s, TFLOP/s, % of the floor and the backend go to ``extra_info``. A provider that does not
exist here is skipped; one that raises fails its test.
"""

import pytest

from vqvae_fast.benchmarks import formulas
from vqvae_fast.benchmarks.definitions import ProviderUnavailable, make_generator
from vqvae_fast.benchmarks.registry import all_benches
from vqvae_fast.benchmarks.runner import CaseState, make_call
from vqvae_fast.benchmarks.timing import L2Flusher, synchronize


def test_bench(benchmark, bench_case, bench_peaks):
    case, provider = bench_case
    device = bench_peaks.device
    bench = all_benches()[case.op]
    gen = make_generator(device, 0)
    inputs = bench.make_inputs(case, device, case.mode != "forward", gen)
    try:
        runner = bench.build(provider, inputs, case, device)
    except ProviderUnavailable as err:
        pytest.skip(str(err))
    if runner.measured is not None:
        pytest.skip(f"{case.op} measures each run in a process of its own: vqvae-fast bench --ops {case.op}")
    call, _ = make_call(bench, case, runner, CaseState(), gen)
    call()  # compilation and autotuning stay out of the timing
    synchronize(device)

    flush = L2Flusher(device) if device.type == "cuda" else None

    def setup():
        if flush is not None:
            flush()
        synchronize(device)

    def timed():
        call()
        synchronize(device)

    benchmark.group = f"{case.op} {bench.describe(case.shape)} {case.dtype} {case.format} {case.mode}"
    benchmark.extra_info.update(op=case.op, provider=provider, backend=runner.backend, device=str(device))
    rounds = 30 if device.type == "cuda" else 5
    benchmark.pedantic(timed, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)

    stats = getattr(benchmark, "stats", None)
    if not stats:  # --benchmark-disable: ran once, nothing to report
        return
    seconds = stats.stats.median
    work = bench.work(case)
    if work.bytes is not None:
        benchmark.extra_info["gbps"] = work.bytes / seconds / 1e9
    if work.flops is not None:
        benchmark.extra_info["tflops"] = work.flops / seconds / 1e12
    flop_rate = bench_peaks.flop_rate(bench.peak_dtype(case, provider, device)) if work.flops else None
    floor, bound = formulas.floor_seconds(work, bench_peaks.bandwidth, flop_rate)
    if floor is not None:
        benchmark.extra_info.update(pct_floor=100 * floor / seconds, bound=bound)
