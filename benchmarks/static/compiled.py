"""Ahead-of-time compilation of configuration-table entries, with no GPU, and what the cubin says.

:func:`compile_entry` compiles one entry of an op's table (``kernels/<op>_table.py``) for one
architecture (``sm_80`` or ``sm_90a``) the way the runtime specialises a launch at aligned
shapes (:func:`signature`), and reads the cubin with the ``cuobjdump`` triton ships: registers,
shared memory, local memory (spills), and the SASS (:mod:`.sass`). The compile gate
(``tests/compile_gate.py``) and the static performance model both use it.

Results are cached on disk, one small JSON file per (entry, architecture), under
``$VQVAE_FAST_STATIC_CACHE`` or ``~/.cache/vqvae_fast/static``. The key hashes everything the
compiled code depends on: the entry (kernel, pointer types, constexprs, unit strides, warps,
stages and its gate specialisation), the architecture, the source of the table's ``@triton.jit``
modules, the triton version, and :data:`FACTS_VERSION` (the format of what is stored). A changed
kernel therefore recompiles; an unchanged one is read back in milliseconds.

:func:`compile_many` compiles the entries missing from the cache in parallel subprocesses (one
per CPU core) without ``TRITON_INTERPRET``, which the test session sets and under which
``@triton.jit`` functions cannot be compiled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

from .sass import SassFacts, analyse

#: bump when the stored facts change meaning or format
FACTS_VERSION = 3


def cuobjdump() -> str:
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


@dataclass
class CompiledFacts:
    """What one compilation of one table entry for one architecture gives."""

    name: str
    arch: str
    registers: int = 0
    local: int = 0
    stack: int = 0
    shared: int = 0
    threads: int = 0
    num_warps: int = 0
    num_stages: int = 0
    sass: SassFacts = field(default_factory=SassFacts)
    error: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["sass"] = self.sass.as_dict()
        return d

    @staticmethod
    def from_dict(d: dict) -> "CompiledFacts":
        d = dict(d)
        d["sass"] = SassFacts.from_dict(d["sass"])
        return CompiledFacts(**d)


def compile_entry(table, cfg, arch: str) -> CompiledFacts:
    """Compile ``cfg`` (an entry of ``table``) for ``arch``; raises if triton cannot."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vqvae_fast.kernels._table import ARCHS

    fn = table.jit_function(cfg.kernel)
    sig, constexprs, attrs = signature(fn, cfg)
    compiled = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", ARCHS[arch].capability, 32),
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
    )
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        cubin = f.name
    try:
        usage = subprocess.run([cuobjdump(), "--dump-resource-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([cuobjdump(), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(cubin)
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return CompiledFacts(
        name=cfg.name, arch=arch, registers=int(fields.get("REG", 0)), local=int(fields.get("LOCAL", 0)),
        stack=int(fields.get("STACK", 0)), shared=int(compiled.metadata.shared), threads=32 * cfg.num_warps,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, sass=analyse(sass),
    )


# ----------------------------------------------------------------------------------------------
# The disk cache


def cache_dir(path: str | None = None) -> str:
    if path:
        return path
    if os.environ.get("VQVAE_FAST_STATIC_CACHE"):
        return os.environ["VQVAE_FAST_STATIC_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vqvae_fast", "static")


_SOURCE_HASHES: dict = {}


def _source_hash(table) -> str:
    """Hash of the source files of the table's ``@triton.jit`` modules (read, not imported: no triton)."""
    if table.op not in _SOURCE_HASHES:
        h = hashlib.sha256()
        for module in table.modules:
            spec = importlib.util.find_spec(module)
            with open(spec.origin, "rb") as f:
                h.update(f.read())
        _SOURCE_HASHES[table.op] = h.hexdigest()
    return _SOURCE_HASHES[table.op]


def _triton_version() -> str:
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # not installed: nothing can compile, every lookup misses
        return "none"


def cache_key(table, cfg, arch: str) -> str:
    spec = (FACTS_VERSION, _triton_version(), arch, repr(cfg.key), cfg.unaligned, cfg.floats, _source_hash(table))
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:32]


def load(table, cfg, arch: str, directory: str | None = None) -> CompiledFacts | None:
    path = os.path.join(cache_dir(directory), cache_key(table, cfg, arch) + ".json")
    try:
        with open(path) as f:
            return CompiledFacts.from_dict(json.load(f))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def store(table, cfg, arch: str, facts: CompiledFacts, directory: str | None = None) -> None:
    """Write ``facts`` (never an error: a failed compilation is retried next time)."""
    if facts.error:
        return
    folder = cache_dir(directory)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(facts.as_dict(), f)
        os.replace(tmp, os.path.join(folder, cache_key(table, cfg, arch) + ".json"))
    except OSError:  # a read-only home: the cache is an optimisation
        pass


def compile_cached(table, cfg, arch: str, directory: str | None = None) -> CompiledFacts:
    facts = load(table, cfg, arch, directory)
    if facts is None:
        try:
            facts = compile_entry(table, cfg, arch)
        except Exception as err:  # report, so the table names the configuration
            facts = CompiledFacts(cfg.name, arch, error=f"{type(err).__name__}: {err}")
        store(table, cfg, arch, facts, directory)
    return facts


# ----------------------------------------------------------------------------------------------
# Many at once


def compile_many(jobs, directory: str | None = None, workers: int | None = None) -> dict:
    """``{(table module, entry name, arch): CompiledFacts}`` for ``jobs`` of ``(table module
    name, entry, arch)``: cached ones read back, the rest compiled in ``workers`` subprocesses
    (default one per CPU core), which store what they compile."""
    results, missing = {}, []
    for module, cfg, arch in dict.fromkeys(jobs):
        table = importlib.import_module(module).TABLE
        facts = load(table, cfg, arch, directory)
        if facts is None:
            missing.append((module, table.entries.index(table._by_key[cfg.key]), arch))
        results[(module, cfg.name, arch)] = facts
    if missing:
        workers = max(1, min(workers or os.cpu_count() or 1, len(missing)))
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        procs = [
            subprocess.Popen([sys.executable, "-m", __name__, cache_dir(directory), json.dumps(missing[i::workers])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for i in range(workers)
        ]
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"static model compile worker failed:\n{err[-4000:]}")
            for (module, name, arch), facts in json.loads(out.strip().splitlines()[-1]):
                results[(module, name, arch)] = CompiledFacts.from_dict(facts)
    return results


def _worker(directory: str, jobs: str) -> None:
    jobs = json.loads(jobs)
    out = []
    for module, index, arch in jobs:
        table = importlib.import_module(module).TABLE
        cfg = table.entries[index]
        out.append(((module, cfg.name, arch), compile_cached(table, cfg, arch, directory).as_dict()))
    print(json.dumps(out))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
