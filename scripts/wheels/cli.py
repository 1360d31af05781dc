"""The command line of scripts/build_wheels.py: build, plan, check, smoke, pages."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from . import envs
from .checks import check_wheel
from .common import ROOT, CheckFailed, local_version_tag, log, setup_py_functions
from .build import Built
from .matrix import (NEWEST_SUPPORTED, SELECTORS, Entry, cuda_of_variant, default_arch_list, discover, expand,
                     oldest_supported, torch_requirement, variant_of_cuda)
from .pages import write_pages
from .pipeline import Matrix, run_build, smoke_all

DEFAULT_CACHE = os.path.join(ROOT, ".venv-wheels")


def make_matrix(args) -> Matrix:
    matrix = Matrix(envs.resolve_python(args.python), os.path.abspath(args.venv_cache), args.torch_index_url)
    if args.torch_versions:  # given instead of asking the index
        versions = [v.strip() for v in args.torch_versions.split(",") if v.strip()]
        matrix.listings[matrix.index_url] = versions
    return matrix


def entries_of(tokens: list[str], matrix: Matrix) -> list:
    """The entries of the command line's tokens, selectors expanded from what the index lists."""
    discovered = None
    if any(t.strip().lower() in SELECTORS for t in tokens):
        index_url = matrix.index_url if matrix.index_url and "{variant}" not in matrix.index_url else None
        listed = matrix.listed(index_url)
        if listed is None:
            raise SystemExit("the selectors need the torch versions on the index: give them with --torch-versions, "
                             "or name the entries")
        discovered = discover(listed, oldest_supported(), NEWEST_SUPPORTED)
        log(f"supported torch {'.'.join(map(str, oldest_supported()))} to {'.'.join(map(str, NEWEST_SUPPORTED))}; "
            f"on the index: {', '.join(discovered.cuda)} (CUDA candidates), {discovered.cpu or 'no +cpu build'} (CPU)")
    return expand(tokens, discovered)


def cmd_build(args) -> int:
    matrix = make_matrix(args)
    entries = entries_of(args.entries or ["auto"], matrix)
    log("matrix: " + ", ".join(e.describe() for e in entries))
    run_build(entries, matrix, args)
    return 0


def cmd_plan(args) -> int:
    (read_version,) = setup_py_functions("read_version")
    matrix = make_matrix(args)
    print(f"{'entry':<26} {'torch requirement':<24} {'label':<22} TORCH_CUDA_ARCH_LIST")
    for entry in entries_of(args.entries or ["auto"], matrix):
        if entry.torch:
            torch_version, variant = entry.torch, entry.variant
            requirement = torch_requirement(entry.torch, variant, matrix.listed(matrix.index_for(variant)))
        else:
            info = envs.query_env(envs.resolve_python(entry.python or args.python))
            torch_version, requirement = info.get("torch") or "?", "(installed)"
            variant = variant_of_cuda(info.get("cuda")) if entry.variant in ("auto", "cuda") else entry.variant
        if variant == "cuda":  # known once installed
            label, archs = f"cu?torch{'.'.join(torch_version.split('.')[:2])}", "(per the torch's CUDA)"
        else:
            cuda = cuda_of_variant(variant)
            label = local_version_tag(torch_version, cuda)
            archs = (args.arch_list or os.environ.get("TORCH_CUDA_ARCH_LIST") or default_arch_list(cuda)) if cuda else "-"
        print(f"{entry.describe():<26} {requirement:<24} {read_version() + '+' + label:<22} {archs}")
    print("one cp310-abi3 wheel per (CUDA, torch) pair serves every CPython >= 3.10")
    return 0


def cmd_check(args) -> int:
    failed = 0
    for path in args.wheels:
        try:
            check_wheel(path, args.arch_list)
        except CheckFailed as err:
            print(f"FAILED {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_smoke(args) -> int:
    """Smoke-test built wheels, each over a cached environment with the torch it was built against."""
    matrix = make_matrix(args)
    work = tempfile.mkdtemp(prefix="vqvae-fast-smoke-")
    try:
        stage = os.path.join(work, "stage")
        os.makedirs(stage)
        for path in args.wheels:
            shutil.copy2(path, stage)
        write_pages(stage)
        built = [Built(Entry("auto"), path, None, {}) for path in args.wheels]
        smoke_all(built, matrix, stage, work, not args.no_mismatch_check)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def cmd_pages(args) -> int:
    write_pages(args.folder)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="build_wheels.py", description=sys.modules["__main__"].__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def matrix_options(p):
        p.add_argument("--python", default=sys.executable,
                       help="interpreter the environments are based on, and whose torch entries without a "
                            "version build against (default: this one)")
        p.add_argument("--torch-index-url", default=None,
                       help="an extra pip index for torch, '{variant}' replaced by cpu/cu130/...: "
                            "e.g. https://download.pytorch.org/whl/{variant} (default: pip's configuration)")
        p.add_argument("--torch-versions", default=None,
                       help="comma-separated torch versions the selectors choose from, instead of asking "
                            "the index (pip index versions torch)")
        p.add_argument("--venv-cache", default=DEFAULT_CACHE,
                       help="folder of the cached torch environments, one per torch (default: .venv-wheels/)")

    p_build = sub.add_parser("build", help="build, check and smoke-test wheels for matrix entries")
    p_build.add_argument("entries", nargs="*", help="all, ci, or VARIANT[:TORCH[:PYTHON]] (default: auto)")
    matrix_options(p_build)
    p_build.add_argument("--out", default=os.path.join(ROOT, "wheelhouse"), help="where the wheels go (default: wheelhouse/)")
    p_build.add_argument("--arch-list", default=None, help="TORCH_CUDA_ARCH_LIST for every CUDA entry (default: per CUDA version)")
    p_build.add_argument("--cuda-home", default=None, help="CUDA toolkit root (default: /usr/local/cuda-X.Y, else as setup.py finds it)")
    p_build.add_argument("--jobs", type=int, default=None, help="MAX_JOBS when not set (default: CPU count)")
    p_build.add_argument("--plat-name", default=None, help="platform tag to give the wheels, e.g. manylinux_2_28_x86_64")
    p_build.add_argument("--keep-debug-info", action="store_true", help="do not strip debug info from the library")
    p_build.add_argument("--work-dir", default=None, help="work directory (default: a temporary one, removed)")
    p_build.add_argument("--keep-work", action="store_true", help="keep the temporary work directory")
    p_build.add_argument("--no-check", action="store_true", help="skip the post-build checks")
    p_build.add_argument("--no-smoke", action="store_true", help="skip the smoke tests")
    p_build.add_argument("--no-mismatch-check", action="store_true",
                         help="skip forcing another torch's wheel into each smoke environment")
    p_build.set_defaults(func=cmd_build)

    p_plan = sub.add_parser("plan", help="print each entry's torch requirement, label and architectures")
    p_plan.add_argument("entries", nargs="*")
    matrix_options(p_plan)
    p_plan.add_argument("--arch-list", default=None)
    p_plan.set_defaults(func=cmd_plan)

    p_check = sub.add_parser("check", help="run the post-build checks on built wheels")
    p_check.add_argument("wheels", nargs="+")
    p_check.add_argument("--arch-list", default=None, help="architectures to require (default: the build record's)")
    p_check.set_defaults(func=cmd_check)

    p_smoke = sub.add_parser("smoke", help="smoke-test built wheels over their torch (installed from their pages)")
    p_smoke.add_argument("wheels", nargs="+")
    matrix_options(p_smoke)
    p_smoke.add_argument("--keep-work", action="store_true", help="keep the temporary work directory")
    p_smoke.add_argument("--no-mismatch-check", action="store_true")
    p_smoke.set_defaults(func=cmd_smoke)

    p_pages = sub.add_parser("pages", help="(re)write the find-links pages of a folder of wheels")
    p_pages.add_argument("folder", nargs="?", default=os.path.join(ROOT, "wheelhouse"))
    p_pages.set_defaults(func=cmd_pages)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CheckFailed as err:
        print(f"[build_wheels] FAILED {err}", file=sys.stderr)
        return 1
