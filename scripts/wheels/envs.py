"""Python environments: the interpreter to base them on, what torch an environment holds, the
torch versions the package index offers, and a cache of one environment per torch.

A CUDA build of torch brings ~5.5 GB of dependencies, so each torch the matrix needs is installed
once, into ``<cache>/<python>-torch-<version>`` (``.venv-wheels/`` by default; reused by later
runs while its record still matches), together with the build tools. Wheels are built there.
A smoke test gets a fresh, empty environment of its own whose ``site-packages`` adds the cached
torch environment's behind its own (:func:`overlay_venv`): the wheel and its other dependencies
are installed into the fresh one, torch is the very installation the wheel was built against, and
nothing is copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .common import log, run

STAMP = ".wheels-venv.json"
BUILD_TOOLS = ("setuptools>=70.1", "wheel", "ninja")


def resolve_python(python: str) -> str:
    found = shutil.which(python) if os.sep not in python else python
    if not found or not os.path.exists(found):
        raise SystemExit(f"python interpreter {python!r} not found")
    return os.path.abspath(found)


def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def create_venv(python: str, venv: str) -> str:
    run([python, "-m", "venv", venv])
    return venv_python(venv)


def pip_install(python: str, *args: str) -> None:
    run([python, "-m", "pip", "install", "--disable-pip-version-check", *args])


def index_args(index_url: str | None) -> list[str]:
    """An index for torch builds, beside the configured ones (the build tools come from those;
    the exact requirement of :func:`matrix.torch_requirement` picks the build)."""
    return ["--extra-index-url", index_url] if index_url else []


QUERY = r"""
import importlib.util, json, sys, sysconfig
out = {"python": sys.version.split()[0], "prefix": sys.prefix, "purelib": sysconfig.get_paths()["purelib"]}
try:
    import torch
    abi = getattr(torch, "compiled_with_cxx11_abi", None)
    out.update(torch=torch.__version__, cuda=torch.version.cuda, cxx11_abi=bool(abi()) if abi else None)
except ImportError as err:
    out.update(torch=None, cuda=None, error=str(err))
try:
    import setuptools
    out["setuptools"] = setuptools.__version__
except ImportError:
    out["setuptools"] = None
out["wheel"] = importlib.util.find_spec("wheel") is not None
print(json.dumps(out))
"""


def python_version(python: str) -> str:
    return subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def query_env(python: str) -> dict:
    """What an interpreter's environment holds: python and torch versions, torch's CUDA version
    (None for a CPU-only torch), C++ ABI, setuptools, its site-packages."""
    result = subprocess.run([python, "-c", QUERY], capture_output=True, text=True, check=True,
                            cwd=tempfile.gettempdir())
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# What the index offers


def parse_index_versions(text: str) -> list[str]:
    """The versions in ``pip index versions`` output (``Available versions: 2.14.1, 2.13.0+cpu, ...``)."""
    match = re.search(r"^Available versions:\s*(.+)$", text, re.MULTILINE)
    if not match:
        raise ValueError(f"no 'Available versions:' line in pip's answer:\n{text}")
    return [v.strip() for v in match.group(1).split(",") if v.strip()]


def list_torch_versions(python: str, index_url: str | None = None) -> list[str] | None:
    """Every torch version pip can install here (its index, extra indexes and find-links); None
    when pip cannot tell (no index reachable, a pip without ``pip index``)."""
    cmd = [python, "-m", "pip", "index", "versions", "torch", "--disable-pip-version-check", *index_args(index_url)]
    log("$ " + " ".join(cmd))
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    try:
        if result.returncode == 0:
            return parse_index_versions(result.stdout)
    except ValueError:
        pass
    log(f"could not list the torch versions on the index:\n{result.stdout}{result.stderr}")
    return None


# ----------------------------------------------------------------------------------------------
# One cached environment per torch


@dataclass
class TorchEnv:
    path: str
    python: str
    info: dict  # query_env() of the environment
    seconds: float  # time to create it (0 when reused)
    reused: bool


def cache_key(python_version: str, requirement: str, index_url: str | None) -> str:
    """``py3.11-torch-2.11.0`` for ``torch===2.11.0`` (plus a hash of a non-default index)."""
    spec = re.sub(r"^torch\s*={2,3}\s*", "", requirement)
    key = f"py{'.'.join(python_version.split('.')[:2])}-torch-{re.sub(r'[^A-Za-z0-9.+_-]', '_', spec)}"
    if index_url:
        key += "-" + hashlib.sha256(index_url.encode()).hexdigest()[:8]
    return key


def torch_env(cache_dir: str, base_python: str, requirement: str, index_url: str | None) -> TorchEnv:
    """The cached environment with ``requirement`` (e.g. ``torch===2.11.0``) and the build tools,
    made if missing or if its record no longer matches (a failed or interrupted install)."""
    path = os.path.join(cache_dir, cache_key(python_version(base_python), requirement, index_url))
    want = {"requirement": requirement, "index_url": index_url}  # the python version is in the key
    stamp = os.path.join(path, STAMP)
    if os.path.exists(stamp):
        with open(stamp) as handle:
            record = json.load(handle)
        python = venv_python(path)
        if {k: record.get(k) for k in want} == want and os.path.exists(python):
            info = query_env(python)
            if info.get("torch") == record.get("torch"):
                log(f"reusing {path} (torch {info['torch']}, CUDA {info['cuda'] or 'none'})")
                return TorchEnv(path, python, info, 0.0, True)
        log(f"{path} does not match its record; making it again")
    start = time.monotonic()
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(cache_dir, exist_ok=True)
    python = create_venv(base_python, path)
    # --no-cache-dir: the environment is the cache; a second copy in pip's would double the disk use
    # one resolution, so that the build tools satisfy torch's own requirements (setuptools<82, ...)
    pip_install(python, "-q", "--no-cache-dir", requirement, *BUILD_TOOLS, *index_args(index_url))
    info = query_env(python)
    with open(stamp, "w") as handle:
        json.dump({**want, "base_python": base_python, "torch": info["torch"], "cuda": info["cuda"]}, handle, indent=1)
    seconds = time.monotonic() - start
    log(f"made {path} in {seconds:.0f}s: torch {info['torch']}, CUDA {info['cuda'] or 'none'}, "
        f"{disk_usage(path) / 2**30:.1f} GiB")
    return TorchEnv(path, python, info, seconds, False)


def overlay_venv(base_python: str, torch_env_info: dict, dest: str) -> str:
    """A fresh environment at ``dest`` that sees the cached torch environment's packages behind
    its own (``site.addsitedir`` in a ``.pth`` file, so that their ``.pth`` files work too)."""
    python = create_venv(base_python, dest)
    purelib = query_env(python)["purelib"]
    with open(os.path.join(purelib, "zz-torch-env.pth"), "w") as handle:
        handle.write(f"import site; site.addsitedir({torch_env_info['purelib']!r})\n")
    return python


def disk_usage(path: str) -> int:
    """Bytes under ``path`` (``du``; 0 if it is gone)."""
    if not os.path.exists(path):
        return 0
    out = subprocess.run(["du", "-sk", path], capture_output=True, text=True).stdout.split()
    return int(out[0]) * 1024 if out else 0
