"""The smoke test of a built wheel, in a fresh environment with the torch it was built against.

The wheel is installed the way a user installs it: ``pip install vqvae-fast==X -f <page>`` with
its find-links page (so the page must offer the right file) and its dependencies resolved.
:mod:`smoke_inside` then runs there: import, ``info()``, each op on CPU against the reference,
and ``vqvae-fast info``. Then another wheel of the run, built for another torch, is forced in and
must fall back with the mismatch warning without loading its library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from .checks import parse_wheel_name, read_build_info
from .common import CheckFailed, log, run, version_tuple
from .envs import overlay_venv, pip_install, query_env
from .pages import page_name

INSIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smoke_inside.py")


def clean_env() -> dict:
    """The environment of a smoke-test process: nothing that would import the source tree or
    force a backend."""
    drop = ("PYTHONPATH", "TRITON_INTERPRET", "VQVAE_FAST_BACKEND")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_inside(python: str, wheel_version: str, cwd: str, expect_mismatch: bool = False) -> None:
    # The code is passed with -c: run by path, its folder (these tools) would come first on sys.path.
    with open(INSIDE) as handle:
        code = handle.read()
    args = ["--wheel-version", wheel_version] + (["--expect-mismatch"] if expect_mismatch else [])
    log(f"$ {python} -c \"$(cat {INSIDE})\" {' '.join(args)}")
    subprocess.run([python, "-c", code, *args], cwd=cwd, env=clean_env(), check=True)


def other_wheel(path: str, candidates: list[str]) -> str | None:
    """The next wheel after ``path`` (cyclically) that is built for another torch minor, so that it
    cannot fit ``path``'s torch (a CPU wheel fits a CUDA torch of its own minor)."""
    torch_mm = version_tuple(read_build_info(path)["torch"])
    if path not in candidates:
        candidates = [path] + list(candidates)
    start = candidates.index(path)
    for other in candidates[start + 1:] + candidates[:start]:
        if version_tuple(read_build_info(other)["torch"]) != torch_mm:
            return other
    return None


def smoke_test(path: str, base_python: str, torch_env_info: dict, pages_dir: str, work: str,
               mismatch_with: str | None = None) -> dict:
    """Install ``path`` from its page in ``pages_dir`` into a fresh environment over the torch
    environment described by ``torch_env_info`` (:func:`envs.query_env`), test it there, then
    ``mismatch_with``; returns the seconds per step."""
    times = {}
    info = read_build_info(path)
    version = parse_wheel_name(path)["version"]
    if version_tuple(torch_env_info["torch"]) != version_tuple(info["torch"]):
        raise CheckFailed(f"{os.path.basename(path)} was built against torch {info['torch']}, "
                          f"the smoke-test torch is {torch_env_info['torch']}")
    start = time.monotonic()
    venv = tempfile.mkdtemp(prefix="smoke-", dir=work)
    python = overlay_venv(base_python, torch_env_info, venv)
    page = os.path.join(pages_dir, page_name(info["torch"], info.get("cuda")))
    # the public version: the page, not the requirement, decides which build pip takes
    pip_install(python, "-q", "--find-links", page, f"vqvae-fast=={version.split('+')[0]}")
    installed = query_env(python)
    if installed["torch"] != torch_env_info["torch"]:
        raise CheckFailed(f"installing {os.path.basename(path)} changed torch from {torch_env_info['torch']} "
                          f"to {installed['torch']}")
    times["smoke install"] = time.monotonic() - start
    start = time.monotonic()
    cwd = tempfile.mkdtemp(prefix="cwd-", dir=work)  # not the source tree: import the installed copy
    run_inside(python, version, cwd)  # checks that the page gave this very version
    run([os.path.join(venv, "bin", "vqvae-fast"), "info"], cwd=cwd, env=clean_env())
    times["smoke test"] = time.monotonic() - start
    if mismatch_with:
        start = time.monotonic()
        pip_install(python, "-q", "--force-reinstall", "--no-deps", mismatch_with)
        run_inside(python, parse_wheel_name(mismatch_with)["version"], cwd, expect_mismatch=True)
        times["mismatch test"] = time.monotonic() - start
    shutil.rmtree(venv, ignore_errors=True)
    return times
