"""Ahead-of-time compile gate for the Triton kernels (docs/architecture.md, "Tests without a GPU").

Compiles every entry of an op's configuration table (``vqvae_fast.kernels.<op>_table.TABLE``)
for each architecture it is picked on (sm_80, sm_90a) with no GPU present, and reads the cubin
with the ``cuobjdump`` that triton ships: registers, shared memory, local memory (spills) and the
SASS (the compilation itself is ``vqvae_fast.benchmarks.static.compiled``, shared with the static
performance model, whose disk cache each compilation here refreshes). :func:`check_results`
turns every broken promise into a readable line: spills, more than 255 registers, fewer CTAs
per SM than the entry states (``kernels/_table.ctas_per_sm``), shared
memory over the architecture's limit, no tensor-core instruction where the entry multiplies
matrices, no 128-bit global load where it streams.

The compilation runs in subprocesses without ``TRITON_INTERPRET`` (which the test session sets,
and which turns ``@triton.jit`` functions into interpreter objects that cannot be compiled), one
shard of the table per CPU core. Run by hand::

    python tests/compile_gate.py vqvae_fast.kernels.group_norm_silu_table
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

from vqvae_fast.benchmarks.static.compiled import compile_entry, cuobjdump, signature, store

_cuobjdump = cuobjdump  # the gate's availability check (tests/test_compile_gate.py)
__all__ = ["signature", "compile_one", "run_gate", "check_results"]


def compile_one(table, cfg, arch: str) -> dict:
    """Compile ``cfg`` for ``arch`` (always afresh; the static performance model's cache gets
    the result); return its resource usage, promises and SASS facts."""
    from vqvae_fast.kernels._table import ARCHS, ctas_per_sm

    target = ARCHS[arch]
    facts = compile_entry(table, cfg, arch)
    store(table, cfg, arch, facts)
    return {
        "name": cfg.name,
        "arch": arch,
        "registers": facts.registers,
        "local": facts.local,
        "stack": facts.stack,
        "shared": facts.shared,
        "shared_limit": target.shared_per_block,
        "threads": facts.threads,
        "ctas_per_sm": ctas_per_sm(target, facts.registers, facts.threads, facts.shared),
        "claimed_ctas_per_sm": dict(cfg.occupancy)[arch],
        "tensor_core_ops": facts.sass.total.tensor,
        "wide_loads": facts.sass.total.ldg_128,
        "wants_tensor_cores": cfg.tensor_cores,
        "wants_wide_loads": cfg.wide_loads,
    }


def compilations(table) -> list[tuple[int, str]]:
    """``(entry index, arch)`` for every compilation the gate makes of ``table``."""
    return [(i, arch) for i, cfg in enumerate(table.entries) for arch in cfg.archs]


def gate_shard(module_name: str, shard: int = 0, shards: int = 1) -> list[dict]:
    """Compile every ``shards``-th compilation of the module's ``TABLE``, from ``shard`` on."""
    table = importlib.import_module(module_name).TABLE
    results = []
    for i, arch in compilations(table)[shard::shards]:
        cfg = table.entries[i]
        try:
            results.append(compile_one(table, cfg, arch))
        except Exception as err:  # report, so the test names the configuration
            results.append({"name": cfg.name, "arch": arch, "error": f"{type(err).__name__}: {err}"})
    return results


def run_gate(module_name: str, workers: int | None = None, timeout: float = 1800) -> tuple[list[dict], float]:
    """``(results, seconds)``: the whole table compiled in ``workers`` parallel subprocesses
    (default: one per CPU core) without ``TRITON_INTERPRET``."""
    workers = workers or os.cpu_count() or 1
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), module_name, f"--shard={i}/{workers}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(workers)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"compile gate for {module_name} failed:\n{err[-4000:]}")
        results += json.loads(out.strip().splitlines()[-1])
    return results, time.perf_counter() - start


def check_results(results: list[dict]) -> list[str]:
    """Every violation of the gate's rules, as readable lines (empty when all pass)."""
    problems = []
    for r in results:
        where = f"{r['name']} [{r['arch']}]"
        if "error" in r:
            problems.append(f"{where}: does not compile: {r['error']}")
            continue
        if r["local"] or r["stack"]:
            problems.append(f"{where}: spills to local memory (LOCAL={r['local']}, STACK={r['stack']})")
        if r["registers"] > 255:
            problems.append(f"{where}: {r['registers']} registers per thread (at most 255)")
        if r["ctas_per_sm"] < r["claimed_ctas_per_sm"]:
            problems.append(
                f"{where}: {r['ctas_per_sm']} CTAs per SM ({r['registers']} registers x {r['threads']} "
                f"threads, {r['shared']} B shared), the table states {r['claimed_ctas_per_sm']}"
            )
        if r["shared"] > r["shared_limit"]:
            problems.append(f"{where}: needs {r['shared']} B shared memory, limit {r['shared_limit']}")
        if r["wants_tensor_cores"] and not r["tensor_core_ops"]:
            problems.append(f"{where}: no tensor-core instruction (HMMA/HGMMA) in the SASS")
        if r["wants_wide_loads"] and not r["wide_loads"]:
            problems.append(f"{where}: no 128-bit global load in the SASS")
    return problems


def summary(module_name: str, results: list[dict], seconds: float) -> str:
    archs = sorted({r["arch"] for r in results})
    entries = len({r["name"] for r in results})
    return (f"{module_name}: {len(results)} compilations of {entries} table entries for "
            f"{', '.join(archs)} in {seconds:.0f} s")


if __name__ == "__main__":
    module = sys.argv[1]
    shard_args = [a for a in sys.argv[2:] if a.startswith("--shard=")]
    if shard_args:
        shard, shards = map(int, shard_args[0].split("=", 1)[1].split("/"))
        print(json.dumps(gate_shard(module, shard, shards)))
    else:
        found, took = run_gate(module)
        print(summary(module, found, took), file=sys.stderr)
        for line in check_results(found):
            print(line, file=sys.stderr)
        print(json.dumps(found))
