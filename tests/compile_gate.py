"""Ahead-of-time compile gate for the Triton kernels (DESIGN.md section 4.2).

Compiles kernels for sm_80 and sm_90a with no GPU present and reads the resulting cubin with the
``cuobjdump`` that triton ships: registers, shared memory, local memory (spills) and the SASS.

A kernel module opts in by defining ``gate_configs()`` returning a list of
``vqvae_fast.kernels.gate.GateConfig``, one per configuration its launcher can choose. Tests call :func:`run_gate` with the module's
name; the compilation runs in a subprocess because ``TRITON_INTERPRET=1`` (set for the rest of
the test session) turns ``@triton.jit`` functions into interpreter objects that cannot be
compiled. Run by hand: ``python tests/compile_gate.py vqvae_fast.kernels.group_norm_silu``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

from vqvae_fast.kernels.gate import TARGETS, GateConfig  # noqa: F401  (re-exported)


def _cuobjdump() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise FileNotFoundError(f"cuobjdump not found at {path}")
    return path


def compile_one(cfg: GateConfig, arch: str) -> dict:
    """Compile ``cfg`` for ``arch``; return resource usage and SASS facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    capability, shared_limit = TARGETS[arch]
    fn = cfg.kernel
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in cfg.aligned}
    src = ASTSource(fn=fn, signature=cfg.signature, constexprs=cfg.constexprs, attrs=attrs)
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        cubin = f.name
    try:
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", cubin], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(cubin)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    shared = int(compiled.metadata.shared)
    return {
        "name": cfg.name,
        "arch": arch,
        "registers": int(fields.get("REG", 0)),
        "local": int(fields.get("LOCAL", 0)),
        "stack": int(fields.get("STACK", 0)),
        "shared": shared,
        "shared_limit": shared_limit,
        "tensor_core_ops": len(re.findall(r"\b(?:HMMA|HGMMA)\b", sass)),
        "wide_loads": len(re.findall(r"\bLDG\.E\.(?:128|EL\.128|[A-Z.]*128)\b", sass)),
        "wants_tensor_cores": cfg.tensor_cores,
        "wants_wide_loads": cfg.wide_loads,
    }


def gate_module(module_name: str) -> list[dict]:
    """Compile every configuration of ``module_name.gate_configs()`` for each of its archs."""
    module = importlib.import_module(module_name)
    results = []
    for cfg in module.gate_configs():
        for arch in cfg.archs:
            try:
                results.append(compile_one(cfg, arch))
            except Exception as err:  # report, so the test names the configuration
                results.append({"name": cfg.name, "arch": arch, "error": f"{type(err).__name__}: {err}"})
    return results


def run_gate(module_name: str, timeout: float = 1800) -> list[dict]:
    """Run :func:`gate_module` in a fresh interpreter without ``TRITON_INTERPRET``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), module_name],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"compile gate for {module_name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
        if r["shared"] > r["shared_limit"]:
            problems.append(f"{where}: needs {r['shared']} B shared memory, limit {r['shared_limit']}")
        if r["wants_tensor_cores"] and not r["tensor_core_ops"]:
            problems.append(f"{where}: no tensor-core instruction (HMMA/HGMMA) in the SASS")
        if r["wants_wide_loads"] and not r["wide_loads"]:
            problems.append(f"{where}: no 128-bit global load in the SASS")
    return problems


if __name__ == "__main__":
    print(json.dumps(gate_module(sys.argv[1])))
