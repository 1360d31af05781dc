"""Ahead-of-time compile gate for the Triton kernels (docs/architecture.md, "Tests without a GPU").

Compiles every entry of an op's configuration table (``vqvae_fast.kernels.<op>_table.TABLE``)
for each architecture it is picked on (sm_80, sm_90a) with no GPU present, and reads the cubin
with the ``cuobjdump`` that triton ships: registers, shared memory, local memory (spills) and the
SASS. :func:`check_results` turns every broken promise into a readable line: spills, more than
255 registers, fewer CTAs per SM than the entry states (``kernels/_table.ctas_per_sm``), shared
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
import re
import subprocess
import sys
import tempfile
import time

def _cuobjdump() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise FileNotFoundError(f"cuobjdump not found at {path}")
    return path


def signature(fn, cfg) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` of ``cfg`` as the runtime specialises a launch at
    aligned shapes: pointers and integers 16-divisible unless listed ``unaligned``, the
    arguments in ``ones`` constants equal to 1."""
    pointers, constexprs = dict(cfg.pointers), dict(cfg.constexprs)
    constexprs.update({name: 1 for name in cfg.ones})
    sig, aligned = {}, []
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*" + pointers[name]
            aligned.append(name)
        elif name in cfg.floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name not in cfg.unaligned:
                aligned.append(name)
    unknown = set(pointers) - set(fn.arg_names)
    if unknown:
        raise ValueError(f"{cfg.name}: {sorted(unknown)} are not arguments of {fn.__name__}")
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    return sig, constexprs, attrs


def compile_one(table, cfg, arch: str) -> dict:
    """Compile ``cfg`` for ``arch``; return its resource usage, promises and SASS facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vqvae_fast.kernels._table import ARCHS, ctas_per_sm

    target = ARCHS[arch]
    fn = table.jit_function(cfg.kernel)
    sig, constexprs, attrs = signature(fn, cfg)
    compiled = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", target.capability, 32),
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        cubin = f.name
    try:
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", cubin], capture_output=True,
                               text=True, check=True).stdout
        sass = ""
        if cfg.tensor_cores or cfg.wide_loads:
            sass = subprocess.run([_cuobjdump(), "-sass", cubin], capture_output=True, text=True,
                                  check=True).stdout
    finally:
        os.unlink(cubin)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    registers, shared, threads = int(fields.get("REG", 0)), int(compiled.metadata.shared), 32 * cfg.num_warps
    return {
        "name": cfg.name,
        "arch": arch,
        "registers": registers,
        "local": int(fields.get("LOCAL", 0)),
        "stack": int(fields.get("STACK", 0)),
        "shared": shared,
        "shared_limit": target.shared_per_block,
        "threads": threads,
        "ctas_per_sm": ctas_per_sm(target, registers, threads, shared),
        "claimed_ctas_per_sm": dict(cfg.occupancy)[arch],
        "tensor_core_ops": len(re.findall(r"\b(?:HMMA|HGMMA)\b", sass)),
        "wide_loads": len(re.findall(r"\bLDG\.E\.(?:128|EL\.128|[A-Z.]*128)\b", sass)),
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
