"""``pytest benchmarks/``: the suite's definitions as pytest-benchmark tests.

One test per (case, provider) of a shape set: ``quick`` on CUDA and ``tiny`` on CPU unless
``--bench-shapes`` says otherwise; ``--bench-providers`` and ``--bench-ops`` narrow it down. The
regular test run (``pytest tests``) does not collect these.
"""

import pytest
import torch

from vqvae_fast.benchmarks.shapes import OPS, SETS


def pytest_addoption(parser):
    group = parser.getgroup("vqvae_fast benchmarks")
    group.addoption("--bench-shapes", choices=SETS, default=None,
                    help="shape set for pytest benchmarks/ (default: quick on CUDA, tiny on CPU)")
    group.addoption("--bench-ops", default=None, help=f"comma-separated ops among {','.join(OPS)}")
    group.addoption("--bench-providers", default=None, help="comma-separated providers")
    group.addoption("--bench-device", default=None, help="cpu or cuda (default: cuda when present)")


def bench_device(config) -> torch.device:
    name = config.getoption("--bench-device")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    from vqvae_fast.benchmarks.registry import all_benches
    from vqvae_fast.benchmarks.runner import Settings, plan

    config = metafunc.config
    device = bench_device(config)
    ops = config.getoption("--bench-ops")
    providers = config.getoption("--bench-providers")
    settings = Settings(
        device=device,
        shapes=config.getoption("--bench-shapes") or ("quick" if device.type == "cuda" else "tiny"),
        ops=tuple(ops.split(",")) if ops else OPS,
        providers=tuple(providers.split(",")) if providers else None,
    )
    benches = all_benches()
    params, ids = [], []
    for case, case_providers in plan(settings):
        for provider in case_providers:
            params.append((case, provider))
            describe = benches[case.op].describe(case.shape).replace(" ", "_")
            ids.append(f"{case.op}-{describe}-{case.dtype}-{case.format}-{case.mode}-{provider}")
    metafunc.parametrize("bench_case", params, ids=ids)


@pytest.fixture(scope="session")
def bench_peaks(request):
    """The device's ceilings, measured once per session."""
    from vqvae_fast.benchmarks.device import Peaks

    return Peaks(bench_device(request.config))
