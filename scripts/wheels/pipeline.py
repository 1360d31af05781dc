"""One ``build`` run over a matrix: prepare each entry's torch environment, build, check, write the
find-links pages, smoke-test every wheel from its page, then publish wheels and pages to ``--out``
and print a summary (time per step and entry, sizes, skipped entries, disk used by the cached
environments).

Entries run one after the other: preparing the next torch environment while one compiles was
tried and gained nothing measurable on 2 cores (unpacking a CUDA torch is CPU work too). Wheels
reach ``--out`` only once every wheel of the run has passed its checks and smoke test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from . import envs
from .build import Built, NoCudaBuild, build_entry
from .checks import check_wheel, read_build_info
from .common import log
from .matrix import Entry, torch_requirement, variant_of_cuda
from .pages import write_pages
from .smoke import other_wheel, smoke_test


@dataclass
class Matrix:
    """What the run needs besides the entries: where environments live and where torch comes from."""

    base_python: str
    cache_dir: str
    index_url: str | None  # may contain "{variant}"
    listings: dict = field(default_factory=dict)  # index URL -> versions it lists (None: could not list)

    def index_for(self, variant: str) -> str | None:
        if self.index_url and "{variant}" in self.index_url:
            if variant in ("cuda", "auto"):
                raise SystemExit(f"--torch-index-url {self.index_url} needs the variant: name the entry cuXYZ:VERSION")
            return self.index_url.format(variant=variant)
        return self.index_url

    def listed(self, index_url: str | None) -> list[str] | None:
        """The torch versions on the index (None: unknown; requirements fall back to ``==``)."""
        if index_url not in self.listings:
            self.listings[index_url] = envs.list_torch_versions(self.base_python, index_url)
        return self.listings[index_url]

    def environment(self, variant: str, torch_version: str, python: str | None = None) -> envs.TorchEnv:
        """The cached environment with the build of ``torch_version`` that ``variant`` wants."""
        index_url = self.index_for(variant)
        requirement = torch_requirement(torch_version, variant, self.listed(index_url))
        base = envs.resolve_python(python or self.base_python)
        return envs.torch_env(self.cache_dir, base, requirement, index_url)

    def environment_of(self, wheel: str) -> envs.TorchEnv:
        """The cached environment with the torch a built wheel was built against."""
        record = read_build_info(wheel)
        return self.environment(variant_of_cuda(record.get("cuda")), record["torch"].split("+")[0])


def _prepare(matrix: Matrix, entry: Entry) -> envs.TorchEnv | None:
    return matrix.environment(entry.variant, entry.torch, entry.python) if entry.torch else None


def build_all(entries: list[Entry], matrix: Matrix, args, work: str) -> tuple[list[Built], list[str]]:
    """Build and check every entry; returns the wheels and the reasons of skipped entries."""
    built, skipped, done = [], [], set()
    for entry in entries:
        log(f"=== {entry.describe()}")
        torch_env = _prepare(matrix, entry)
        if torch_env:
            python, info = torch_env.python, torch_env.info
        else:
            python = envs.resolve_python(entry.python or matrix.base_python)
            info = envs.query_env(python)
        try:
            result = build_entry(entry, python, info, args, work, done)
        except NoCudaBuild as err:
            if not entry.optional:
                raise SystemExit(f"entry {entry.describe()}: {err}") from None
            skipped.append(f"{entry.describe()}: {err}")
            log(f"skipped: {err}")
            continue
        if result is None:
            continue
        result.torch_env = torch_env
        result.times = {"env": torch_env.seconds if torch_env else 0.0, **result.times}
        if not args.no_check:
            start = time.monotonic()
            check_wheel(result.wheel, result.arch_list, result.entry.variant, result.env_info["torch"])
            result.times["checks"] = time.monotonic() - start
        built.append(result)
    return built, skipped


def smoke_all(built: list[Built], matrix: Matrix, stage: str, work: str, mismatch_check: bool) -> None:
    """Smoke-test each wheel (staged in ``stage`` with its pages) over its own torch environment."""
    staged = [os.path.join(stage, os.path.basename(b.wheel)) for b in built]
    for result, wheel in zip(built, staged):
        log(f"=== smoke test of {os.path.basename(wheel)}")
        torch_env = result.torch_env or matrix.environment_of(wheel)
        other = other_wheel(wheel, staged) if mismatch_check else None
        result.times.update(smoke_test(wheel, envs.resolve_python(result.entry.python or matrix.base_python),
                                       torch_env.info, stage, work, other))


def summarise(built: list[Built], skipped: list[str], matrix: Matrix, total: float) -> None:
    log("=== summary")
    for result in built:
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in result.times.items())
        log(f"{os.path.basename(result.wheel)}  {os.path.getsize(result.wheel) / 2**20:.1f} MiB  "
            f"torch {result.env_info['torch']}  ({steps}; {sum(result.times.values()):.0f}s in all)")
    for reason in skipped:
        log(f"skipped {reason}")
    used = sorted({b.torch_env.path for b in built if b.torch_env})
    for path in used:
        log(f"environment {path}: {envs.disk_usage(path) / 2**30:.1f} GiB")
    if os.path.isdir(matrix.cache_dir):
        free = shutil.disk_usage(matrix.cache_dir).free
        log(f"cached environments in {matrix.cache_dir}: {envs.disk_usage(matrix.cache_dir) / 2**30:.1f} GiB "
            f"in all ({free / 2**30:.0f} GiB free on its disk; remove the folder to reclaim it)")
    log(f"{len(built)} wheel{'s' * (len(built) != 1)} in {total / 60:.1f} min")


def run_build(entries: list[Entry], matrix: Matrix, args) -> list[Built]:
    start = time.monotonic()
    os.makedirs(args.out, exist_ok=True)
    work = args.work_dir or tempfile.mkdtemp(prefix="vqvae-fast-wheels-")
    os.makedirs(work, exist_ok=True)
    try:
        built, skipped = build_all(entries, matrix, args, work)
        stage = os.path.join(work, "stage")
        os.makedirs(stage, exist_ok=True)
        for result in built:
            shutil.copy2(result.wheel, stage)
        if built:
            write_pages(stage)
        if not args.no_smoke:
            smoke_all(built, matrix, stage, work, not args.no_mismatch_check)
        for result in built:  # publish: every wheel of the run passed
            result.wheel = shutil.copy2(result.wheel, os.path.join(args.out, os.path.basename(result.wheel)))
        write_pages(args.out)
    finally:
        if not args.keep_work and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    summarise(built, skipped, matrix, time.monotonic() - start)
    return built
