#!/usr/bin/env python3
"""Build, check and smoke-test vqvae_fast wheels for a matrix of (CUDA, torch) versions.

setup.py stays the one place that knows how to compile; this script only chooses the settings
for each matrix entry, runs ``pip wheel . --no-build-isolation --no-deps`` against the torch of
the chosen Python environment, and checks what came out.

Matrix entries
--------------
``VARIANT[:TORCH[:PYTHON]]``, for example ``cu130``, ``cu128:2.14.1``, ``cpu:2.13.0``:

* ``VARIANT``: ``cuXYZ`` (CUDA X.Y code, e.g. ``cu130`` = CUDA 13.0), ``cpu`` (no CUDA code), or
  ``auto`` (``cuXYZ`` of the environment's torch if it is a CUDA build, else ``cpu``).
* ``TORCH``: a torch version to ``pip install`` into a fresh virtual environment made for this
  entry. Left out, the build uses the torch already installed in the ``PYTHON`` environment.
* ``PYTHON``: the interpreter (default ``--python``, itself defaulting to this one).

The extension uses the limited Python API: one ``cp310-abi3`` wheel per (CUDA, torch) pair serves
every CPython >= 3.10, so the Python axis of the matrix collapses. Entries that differ only in
their Python build the same file; the later ones are skipped.

Version scheme
--------------
``0.1.0+cu130torch2.14``: CUDA 13.0 code, built against torch 2.14.x. ``0.1.0+cputorch2.13``: no
CUDA code, built against torch 2.13.x (the C++ code still ties it to that torch). Only torch's
major.minor counts. setup.py derives the label (``VQVAE_FAST_LOCAL_VERSION=auto``, which this
script sets); a ``VQVAE_FAST_LOCAL_VERSION`` already in the environment overrides it.

Architectures: each CUDA version has a default ``TORCH_CUDA_ARCH_LIST`` (:func:`default_arch_list`):
8.0, 8.6, 8.9, 9.0, plus 10.0 and 12.0 from CUDA 12.8 on, with PTX for the newest. A
``TORCH_CUDA_ARCH_LIST`` in the environment or ``--arch-list`` overrides it. ``MAX_JOBS`` sets the
parallel compile jobs (default: the CPU count).

Checks after each build (also ``check WHEEL...``): the build record ``_build_info.json`` is
inside and agrees with the file name and the entry; the wheel holds exactly one shared library,
``vqvae_fast/_C.abi3.so`` (no copies of libtorch, the CUDA runtime, cuDNN...); that library
needs only torch's libraries, torch's CUDA runtime and system libraries, found at run time (no
RPATH outside the package); with CUDA code, ``cuobjdump`` lists machine code for every requested
architecture and PTX where asked; without, there is no device code at all; a ``manylinux_X_Y``
platform tag is backed by glibc symbol versions <= X.Y. Then (also ``smoke WHEEL...``) the wheel
is installed into a fresh virtual environment with the torch it was built against, where import,
``info()`` and each op on CPU against the PyTorch reference must pass; every other wheel of the
run is then installed there too and must fall back, with the mismatch warning, without loading
its library.

Examples::

    python scripts/build_wheels.py build                      # the current environment, as is
    python scripts/build_wheels.py build cu130 cpu:2.13.0     # CI: this torch, and a CPU wheel
    python scripts/build_wheels.py plan cu126:2.14.1 cu130:2.14.1 cpu:2.14.1
    python scripts/build_wheels.py check wheelhouse/*.whl

Published matrix (manylinux_2_28)
---------------------------------
Build each CUDA version in PyTorch's manylinux_2_28 builder image for it
(``pytorch/manylinux2_28-builder:cuda12.8``, ``...:cuda13.0``; the CPU wheel in ``...:cpu``),
which has that toolkit in ``/usr/local/cuda-X.Y``, CPython builds in ``/opt/python`` and glibc 2.28.
Inside the container the command is this script, as here::

    docker run --rm -v "$PWD":/src -w /src -e VQVAE_FAST_GIT_COMMIT="$(git rev-parse HEAD)" \\
        pytorch/manylinux2_28-builder:cuda12.8 \\
        /opt/python/cp310-cp310/bin/python scripts/build_wheels.py build cu128:2.14.1 \\
        --python /opt/python/cp310-cp310/bin/python \\
        --torch-index-url 'https://download.pytorch.org/whl/{variant}' \\
        --plat-name manylinux_2_28_x86_64 --out wheelhouse

(no ``auditwheel repair``: it would copy libtorch into the wheel).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = "vqvae_fast/_C.abi3.so"
BUILD_INFO = "vqvae_fast/_build_info.json"
BUILD_INFO_KEYS = ("version", "torch", "cuda", "cuda_archs", "cxx11_abi", "git_commit", "build_date")
SCHEME_LABEL = re.compile(r"(cu\d+|cpu)torch\d+\.\d+")

# What the extension may link against: torch's libraries and, with CUDA code, torch's CUDA runtime
# (both loaded by `import torch` before the extension), and the C/C++ runtime of the system.
# libgomp.so.1 is the OpenMP runtime torch's Linux wheels ship and load: at::parallel_for in the
# CPU kernels runs on it, so the extension shares torch's thread pool.
TORCH_LIBS = {"libc10.so", "libc10_cuda.so", "libtorch.so", "libtorch_cpu.so", "libtorch_cuda.so",
              "libgomp.so.1"}
SYSTEM_LIBS = {
    "libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2",
    "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
}
# Libraries a wheel must never carry a copy of (torch and the NVIDIA wheels provide them).
BUNDLED_LIB = re.compile(r"lib(torch|c10|cuda|cudart|cudnn|cublas|cufft|curand|cusolver|cusparse|nccl|nvrtc|nvjitlink|nvToolsExt|gomp|shm)")


def log(message: str) -> None:
    print(f"[build_wheels] {message}", flush=True)


class CheckFailed(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# Matrix, version labels, architectures


@dataclass
class Entry:
    variant: str  # "cpu", "cuXYZ" or "auto"
    torch: str | None = None  # version to install into a fresh venv; None: use the one installed
    python: str | None = None  # interpreter; None: --python

    @property
    def cuda(self) -> str | None:
        """``cu130`` -> ``"13.0"``; None for cpu."""
        return cuda_of_variant(self.variant)

    def describe(self) -> str:
        return f"{self.variant}:{self.torch or 'installed'}:{self.python or '--python'}"


def cuda_of_variant(variant: str) -> str | None:
    if variant == "cpu":
        return None
    match = re.fullmatch(r"cu(\d+)(\d)", variant)
    if not match:
        raise ValueError(f"variant {variant!r}: expected cpu, auto or cuXYZ (cu130 = CUDA 13.0)")
    return f"{int(match.group(1))}.{match.group(2)}"


def variant_of_cuda(cuda: str | None) -> str:
    if not cuda:
        return "cpu"
    major, minor = cuda.split(".")[:2]
    return f"cu{major}{minor}"


def parse_entry(text: str) -> Entry:
    variant, _, rest = text.partition(":")
    torch_version, _, python = rest.partition(":")
    variant = variant.strip().lower()
    if variant != "auto":
        cuda_of_variant(variant)  # validates
    elif torch_version not in ("", "installed"):
        raise ValueError(f"entry {text!r}: 'auto' takes the installed torch; name cpu or cuXYZ to install one")
    if torch_version in ("", "installed"):
        torch_version = None
    elif not re.fullmatch(r"\d+\.\d+(\.\d+)?([a-z0-9.+]*)", torch_version):
        raise ValueError(f"entry {text!r}: {torch_version!r} is not a torch version")
    return Entry(variant, torch_version or None, python or None)


def version_tuple(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def default_arch_list(cuda: str) -> str:
    """The published wheels' ``TORCH_CUDA_ARCH_LIST`` for a CUDA version.

    sm_80 (A100), sm_86 (RTX 30xx, A10/A40), sm_89 (RTX 40xx, L4/L40), sm_90 (H100/H200); from
    CUDA 12.8, sm_100 (B200/GB200) and sm_120 (RTX 50xx). PTX for the newest, so that later GPUs
    can JIT-compile it.
    """
    if version_tuple(cuda) < (11, 8):
        raise ValueError(f"CUDA {cuda} cannot target sm_89/sm_90; the wheels need CUDA >= 11.8")
    archs = ["8.0", "8.6", "8.9", "9.0"]
    if version_tuple(cuda) >= (12, 8):
        archs += ["10.0", "12.0"]
    archs[-1] += "+PTX"
    return ";".join(archs)


def parse_arch_list(archs: str | list[str]) -> list[tuple[str, bool]]:
    """``"8.0;9.0+PTX"`` -> ``[("sm_80", False), ("sm_90", True)]`` (``9.0a`` -> ``sm_90a``)."""
    items = archs if isinstance(archs, list) else re.split(r"[;,\s]+", archs)
    parsed = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        match = re.fullmatch(r"(\d+)\.(\d+)([af]?)(\+PTX)?", item)
        if not match:
            raise ValueError(f"architecture {item!r}: expected e.g. 8.0, 9.0a or 12.0+PTX")
        parsed.append((f"sm_{match.group(1)}{match.group(2)}{match.group(3)}", bool(match.group(4))))
    return parsed


def setup_py_functions(*names: str) -> list:
    """Functions defined in setup.py (its imports and defs only: the build itself is not run)."""
    path = os.path.join(ROOT, "setup.py")
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    body = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    body += [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    for node in tree.body:  # the constants above the first function (ROOT, ...)
        if isinstance(node, ast.FunctionDef):
            break
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            body.append(node)
    namespace: dict = {"__file__": path}
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
    return [namespace[name] for name in names]


def local_version_tag(torch_version: str, cuda_version: str | None) -> str:
    """setup.py's label for a build (defined in vqvae_fast/_extension.py, loaded by path)."""
    (load,) = setup_py_functions("load_extension_module")
    return load().local_version_tag(torch_version, cuda_version)


# ----------------------------------------------------------------------------------------------
# Environments


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kwargs)


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


def torch_index_args(template: str | None, variant: str) -> list[str]:
    return ["--index-url", template.format(variant=variant)] if template else []


QUERY = r"""
import importlib.util, json, shutil, sys, os
out = {"python": sys.version.split()[0], "prefix": sys.prefix}
try:
    import torch
    abi = getattr(torch, "compiled_with_cxx11_abi", None)
    out.update(torch=torch.__version__, cuda=torch.version.cuda, cxx11_abi=bool(abi()) if abi else None)
except ImportError as err:
    out.update(torch=None, error=str(err))
try:
    import setuptools
    out["setuptools"] = setuptools.__version__
except ImportError:
    out["setuptools"] = None
out["wheel"] = importlib.util.find_spec("wheel") is not None
print(json.dumps(out))
"""


def query_env(python: str) -> dict:
    result = subprocess.run([python, "-c", QUERY], capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
    return json.loads(result.stdout.strip().splitlines()[-1])


def find_tool(name: str) -> str | None:
    """A CUDA binutil: the toolkit's (found as setup.py finds it), then PATH, then triton's copy
    (``triton/backends/nvidia/bin``, in this interpreter's environment)."""
    import importlib.util

    (find_cuda_home,) = setup_py_functions("find_cuda_home")
    candidates = []
    home = os.environ.get("CUDA_HOME") or find_cuda_home()
    if home:
        candidates.append(os.path.join(home, "bin", name))
    candidates.append(shutil.which(name))
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        candidates.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", name))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def nvcc_version(cuda_home: str | None) -> str | None:
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return None
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def source_files(root: str) -> list[str]:
    """The files of the source tree, as git sees them (tracked, or new and not ignored)."""
    try:
        out = subprocess.run(
            ["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, check=True,
        ).stdout.decode()
        files = [f for f in out.split("\0") if f and os.path.isfile(os.path.join(root, f))]
        if files:
            return files
    except (OSError, subprocess.CalledProcessError):
        pass
    skip = re.compile(r"(^|/)(\.git|\.venv[^/]*|build|dist|wheelhouse|__pycache__|[^/]*\.egg-info)(/|$)|\.so$|_build_info\.json$")
    files = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if not skip.search(rel):
                files.append(rel)
    return files


def copy_source(dest: str) -> None:
    """A clean copy to build from: no stale build/ tree or in-place library can leak into a wheel,
    and the working tree is left alone."""
    for rel in source_files(ROOT):
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), target)


def git_commit() -> str | None:
    (commit,) = setup_py_functions("git_commit")
    return commit()


# ----------------------------------------------------------------------------------------------
# Build


@dataclass
class Built:
    entry: Entry
    wheel: str
    arch_list: str | None
    python: str  # interpreter to base the smoke-test venv on
    torch: str  # torch version it was built against
    times: dict = field(default_factory=dict)


def build_entry(entry: Entry, args, work: str, venvs: dict, done: set) -> Built | None:
    """Build one entry's wheel; None when a wheel with its label was built already (``done``)."""
    (find_cuda_home,) = setup_py_functions("find_cuda_home")
    times = {}
    start = time.monotonic()
    base_python = resolve_python(entry.python or args.python)
    if entry.torch:
        # A fresh environment with the requested torch, shared by the entries that ask for the same.
        key = (base_python, entry.torch, entry.variant)
        if key not in venvs:
            venv = os.path.join(work, f"build-{entry.variant}-torch{entry.torch}-{len(venvs)}")
            python = create_venv(base_python, venv)
            pip_install(python, f"torch=={entry.torch}", *torch_index_args(args.torch_index_url, entry.variant))
            pip_install(python, "setuptools>=64", "wheel", "ninja")
            venvs[key] = python
        python = venvs[key]
        times["build venv"] = time.monotonic() - start
    else:
        python = base_python
    env_info = query_env(python)
    if not env_info.get("torch"):
        raise SystemExit(f"{python}: torch is not installed ({env_info.get('error')})")
    # --no-build-isolation builds with this environment's setuptools (bdist_wheel is in it from 70.1)
    setuptools_version = version_tuple(env_info.get("setuptools") or "0.0")
    if setuptools_version < (64, 0) or (setuptools_version < (70, 1) and not env_info.get("wheel")):
        raise SystemExit(f"{python}: needs setuptools >= 70.1, or >= 64 and wheel (pip install -U setuptools wheel)")
    variant = entry.variant if entry.variant != "auto" else variant_of_cuda(env_info["cuda"])
    if entry.variant == "auto" and env_info["cuda"] and not nvcc_version(find_cuda_home()):
        variant = "cpu"  # a CUDA torch but no toolkit: what setup.py itself would build
    cuda = cuda_of_variant(variant)
    if entry.torch and not env_info["torch"].startswith(entry.torch):
        raise SystemExit(f"asked for torch {entry.torch}, the environment has {env_info['torch']}")
    if cuda and version_tuple(env_info["cuda"] or "0.0") != version_tuple(cuda):
        raise SystemExit(
            f"entry {entry.describe()}: {variant} needs a torch built for CUDA {cuda}, but {python} has "
            f"torch {env_info['torch']} (CUDA {env_info['cuda'] or 'none'}); give a torch version and "
            "--torch-index-url, or another --python"
        )

    env = dict(os.environ)
    env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")  # the venv's ninja
    env.setdefault("MAX_JOBS", str(args.jobs or os.cpu_count() or 1))
    env.setdefault("VQVAE_FAST_LOCAL_VERSION", "auto")
    commit = git_commit()
    if commit:
        env["VQVAE_FAST_GIT_COMMIT"] = commit
    if not args.keep_debug_info:  # the -g of Python's CFLAGS would triple the library's size
        env["LDFLAGS"] = (env.get("LDFLAGS", "") + " -Wl,--strip-debug").strip()
    env.pop("VQVAE_FAST_FORCE_CUDA", None)
    env.pop("VQVAE_FAST_SKIP_CUDA", None)
    arch_list = None
    if cuda:
        cuda_home = args.cuda_home or next(
            (d for d in (f"/usr/local/cuda-{cuda}",) if os.path.exists(os.path.join(d, "bin", "nvcc"))), None
        )
        if cuda_home:
            env["CUDA_HOME"] = cuda_home
        toolkit = nvcc_version(env.get("CUDA_HOME") or find_cuda_home())
        if toolkit is None:
            raise SystemExit(f"entry {entry.describe()}: no nvcc found (set CUDA_HOME or --cuda-home)")
        if version_tuple(toolkit)[0] != version_tuple(cuda)[0]:
            raise SystemExit(f"entry {entry.describe()}: nvcc is CUDA {toolkit}, torch needs CUDA {cuda}")
        arch_list = args.arch_list or os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or default_arch_list(cuda)
        parse_arch_list(arch_list)  # validates
        env["TORCH_CUDA_ARCH_LIST"] = arch_list
        env["VQVAE_FAST_FORCE_CUDA"] = "1"
        log(f"{variant}: torch {env_info['torch']}, nvcc {toolkit}, TORCH_CUDA_ARCH_LIST={arch_list}, MAX_JOBS={env['MAX_JOBS']}")
    else:
        env["VQVAE_FAST_SKIP_CUDA"] = "1"
        log(f"cpu: torch {env_info['torch']}, no CUDA code, MAX_JOBS={env['MAX_JOBS']}")

    override = os.environ.get("VQVAE_FAST_LOCAL_VERSION", "").strip()
    fixed = override.lower() not in ("", "auto")
    label = override if fixed else local_version_tag(env_info["torch"], cuda)
    if label in done and fixed:
        raise SystemExit(f"VQVAE_FAST_LOCAL_VERSION={override} would give two entries the same version; "
                         "build one entry at a time, or unset it")
    if label in done:
        log(f"+{label} is built already (abi3: another Python gives the same wheel); {entry.describe()} skipped")
        return None
    done.add(label)

    source = tempfile.mkdtemp(prefix="src-", dir=work)
    copy_source(source)
    out = tempfile.mkdtemp(prefix="out-", dir=work)
    start = time.monotonic()
    plat = [f"--config-settings=--build-option=--plat-name={args.plat_name}"] if args.plat_name else []
    run([python, "-m", "pip", "wheel", source, "--no-build-isolation", "--no-deps", "--no-cache-dir",
         "--disable-pip-version-check", "-w", out, *plat], env=env, cwd=source)
    wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
    if len(wheels) != 1:
        raise SystemExit(f"pip wheel produced {wheels}, expected one wheel")
    wheel = os.path.join(out, wheels[0])
    times["build"] = time.monotonic() - start
    shutil.rmtree(source, ignore_errors=True)
    return Built(Entry(variant, entry.torch, entry.python), wheel, arch_list, base_python, env_info["torch"], times)


# ----------------------------------------------------------------------------------------------
# Post-build checks


def parse_wheel_name(path: str) -> dict:
    name = os.path.basename(path)
    match = re.fullmatch(r"([^-]+)-([^-]+)-([^-]+)-([^-]+)-([^-]+)\.whl", name)
    if not match:
        raise CheckFailed(f"{name} is not a wheel file name")
    dist, version, python_tag, abi_tag, platform_tag = match.groups()
    return {"dist": dist, "version": version, "python": python_tag, "abi": abi_tag, "platform": platform_tag}


def read_build_info(path: str) -> dict:
    with zipfile.ZipFile(path) as archive:
        try:
            return json.loads(archive.read(BUILD_INFO))
        except KeyError:
            raise CheckFailed(f"{os.path.basename(path)} has no {BUILD_INFO}") from None


def readelf(flag: str, library: str) -> str:
    tool = shutil.which("readelf")
    if tool is None:
        raise CheckFailed("readelf (binutils) is needed for the checks")
    return subprocess.run([tool, flag, "-W", library], capture_output=True, text=True, check=True).stdout


def check_linkage(library: str, cuda: str | None) -> list[str]:
    problems = []
    dynamic = readelf("-d", library)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    allowed = TORCH_LIBS | SYSTEM_LIBS
    if cuda:
        allowed |= {f"libcudart.so.{version_tuple(cuda)[0]}"}
    for lib in needed:
        if lib not in allowed:
            problems.append(f"the library needs {lib}, which neither torch nor the system provides")
    for kind, paths in re.findall(r"\((RPATH|RUNPATH)\)\s+Library (?:r|run)path: \[([^\]]*)\]", dynamic):
        for entry in paths.split(":"):
            if entry and not entry.startswith("$ORIGIN"):
                problems.append(f"{kind} {entry} points at the build machine")
    sections = readelf("-S", library)
    if not cuda and ".nv_fatbin" in sections:
        problems.append("a CPU wheel's library holds CUDA device code (.nv_fatbin)")
    log(f"NEEDED: {', '.join(needed)}")
    return problems


def check_device_code(library: str, arch_list: str | list[str]) -> list[str]:
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        return ["cuobjdump was found neither in the CUDA toolkit, on PATH nor in triton"]
    elf = subprocess.run([cuobjdump, "--list-elf", library], capture_output=True, text=True).stdout
    ptx = subprocess.run([cuobjdump, "--list-ptx", library], capture_output=True, text=True).stdout
    have_elf = set(re.findall(r"\.(sm_\d+[af]?)\.cubin", elf))
    have_ptx = set(re.findall(r"\.(sm_\d+[af]?)\.ptx", ptx)) | {
        "sm_" + n for n in re.findall(r"compute_(\d+[af]?)", ptx)
    }
    log(f"cuobjdump: cubins {sorted(have_elf)}, PTX {sorted(have_ptx)}")
    problems = []
    for sm, with_ptx in parse_arch_list(arch_list):
        if sm not in have_elf:
            problems.append(f"no {sm} machine code (cuobjdump --list-elf)")
        if with_ptx and sm not in have_ptx:
            problems.append(f"no {sm} PTX (cuobjdump --list-ptx)")
    return problems


def check_glibc(library: str, platform_tag: str) -> list[str]:
    match = re.match(r"manylinux_(\d+)_(\d+)_", platform_tag)
    if not match:
        return []
    limit = (int(match.group(1)), int(match.group(2)))
    objdump = shutil.which("objdump")
    if objdump is None:
        return ["objdump (binutils) is needed to check the manylinux tag"]
    symbols = subprocess.run([objdump, "-T", library], capture_output=True, text=True, check=True).stdout
    versions = {tuple(int(p) for p in v.split(".")[:2]) for v in re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", symbols)}
    newest = max(versions, default=(0, 0))
    if newest > limit:
        return [f"the library needs GLIBC {newest[0]}.{newest[1]}, newer than its tag {platform_tag} allows"]
    return []


def check_wheel(path: str, arch_list: str | None = None, variant: str | None = None,
                torch_version: str | None = None) -> dict:
    """Every post-build check on one wheel; raises CheckFailed listing what is wrong."""
    name = parse_wheel_name(path)
    info = read_build_info(path)
    problems = []
    missing = [key for key in BUILD_INFO_KEYS if key not in info]
    if missing:
        problems.append(f"the build record lacks {missing}")
    if info.get("version") != name["version"]:
        problems.append(f"the build record says version {info.get('version')}, the file name {name['version']}")
    label = name["version"].partition("+")[2]
    if SCHEME_LABEL.fullmatch(label) and label != local_version_tag(info["torch"], info.get("cuda")):
        problems.append(f"label +{label} does not describe the build (torch {info['torch']}, CUDA {info.get('cuda')})")
    if (name["python"], name["abi"]) != ("cp310", "abi3"):
        problems.append(f"tagged {name['python']}-{name['abi']}, expected cp310-abi3 (limited API)")
    if variant and variant_of_cuda(info.get("cuda")) != variant:
        problems.append(f"built as {variant_of_cuda(info.get('cuda'))}, asked for {variant}")
    if torch_version and version_tuple(info["torch"]) != version_tuple(torch_version):
        problems.append(f"built against torch {info['torch']}, asked for {torch_version}")
    cuda = info.get("cuda")
    if cuda:
        requested = parse_arch_list(arch_list) if arch_list else None
        recorded = parse_arch_list(info.get("cuda_archs") or [])
        if requested is not None and set(requested) != set(recorded):
            problems.append(f"the build record lists archs {info.get('cuda_archs')}, asked for {arch_list}")

    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
        members = archive.namelist()
        libraries = [m for m in members if re.search(r"\.so(\.|$)", os.path.basename(m))]
        if libraries != [LIBRARY]:
            problems.append(f"shared libraries in the wheel: {libraries}; expected only {LIBRARY}")
        for member in members:
            if BUNDLED_LIB.match(os.path.basename(member)) or re.search(r"\.libs/", member):
                problems.append(f"the wheel carries {member}: torch and the NVIDIA wheels provide it")
        if LIBRARY in members:
            library = archive.extract(LIBRARY, tmp)
            problems += check_linkage(library, cuda)
            if cuda:
                problems += check_device_code(library, arch_list or info.get("cuda_archs") or [])
            problems += check_glibc(library, name["platform"])
    size = os.path.getsize(path)
    if problems:
        raise CheckFailed(f"{os.path.basename(path)}:\n  " + "\n  ".join(problems))
    log(f"checks passed: {os.path.basename(path)} ({size / 2**20:.1f} MiB; torch {info['torch']}, "
        f"CUDA {cuda or 'none'}, archs {';'.join(info.get('cuda_archs') or []) or '-'}, commit {info.get('git_commit')})")
    return info


# ----------------------------------------------------------------------------------------------
# Smoke test in a fresh virtual environment


def smoke_test(path: str, python: str, work: str, index_url: str | None, torch_spec: str | None,
               others: list[str] = (), keep: bool = False) -> dict:
    """Install the wheel into a fresh venv with the torch it was built against and run
    ``_smoke_inside`` there; then each wheel of ``others`` in turn, which must fall back."""
    times = {}
    info = read_build_info(path)
    variant = variant_of_cuda(info.get("cuda"))
    start = time.monotonic()
    venv = tempfile.mkdtemp(prefix=f"smoke-{variant}-", dir=work)
    vpython = create_venv(python, venv)
    public = info["torch"].split("+")[0]
    pip_install(vpython, f"torch=={torch_spec or public}", *torch_index_args(index_url, variant))
    installed = query_env(vpython)
    if torch_spec is None and installed["torch"] != info["torch"]:
        raise CheckFailed(
            f"the smoke venv got torch {installed['torch']}, the wheel was built against {info['torch']} "
            "(give --torch-index-url, or --smoke-torch to test another torch on purpose)"
        )
    times["smoke venv"] = time.monotonic() - start
    start = time.monotonic()
    pip_install(vpython, path)  # with its dependencies: the metadata must resolve
    here = os.path.abspath(__file__)
    cwd = tempfile.mkdtemp(prefix="cwd-", dir=work)  # not the source tree: import the installed copy
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET", "VQVAE_FAST_BACKEND")}
    run([vpython, here, "_smoke_inside", "--wheel-version", parse_wheel_name(path)["version"]], cwd=cwd, env=env)
    run([os.path.join(venv, "bin", "vqvae-fast"), "info"], cwd=cwd, env=env)
    times["smoke test"] = time.monotonic() - start
    for other in others:
        start = time.monotonic()
        pip_install(vpython, "--force-reinstall", "--no-deps", other)
        run([vpython, here, "_smoke_inside", "--wheel-version", parse_wheel_name(other)["version"],
             "--expect-mismatch"], cwd=cwd, env=env)
        times[f"mismatch with {parse_wheel_name(other)['version']}"] = time.monotonic() - start
    if not keep:
        shutil.rmtree(venv, ignore_errors=True)
    return times


def _smoke_inside(wheel_version: str, expect_mismatch: bool) -> None:
    """Runs inside the fresh venv: the installed wheel imports, reports and computes correctly."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import vqvae_fast
        from vqvae_fast import _extension, reference
        from vqvae_fast.info import format_info

        assert vqvae_fast.__file__.startswith(sys.prefix), f"imported {vqvae_fast.__file__}, not the installed wheel"
        assert "triton" not in sys.modules, "import vqvae_fast imported triton"
        assert "vqvae_fast._C" not in sys.modules, "import vqvae_fast loaded the extension"
        assert not torch.cuda.is_initialized(), "import vqvae_fast initialised CUDA"

        report = vqvae_fast.info()
        print(format_info(report))
        build, ext = report["build"], report["extension"]
        assert build is not None and build["version"] == wheel_version, (build, wheel_version)
        if expect_mismatch:
            assert ext["mismatch"] and not ext["loaded"], ext
            assert "vqvae_fast._C" not in sys.modules, "a mismatched library was loaded"
            assert ext["wheel_for_this_torch"] in ext["reason"], ext
        else:
            assert ext["loaded"] and not ext["mismatch"], ext
            assert ext["cuda_code"] == bool(build["cuda"]), ext
            assert report["ops"]["padded_conv2d"]["cpu"]["backend"] == "cpu", report["ops"]["padded_conv2d"]

        torch.manual_seed(0)
        x = torch.randn(2, 64, 9, 7)
        w, b = torch.randn(64), torch.randn(64)
        torch.testing.assert_close(vqvae_fast.group_norm_silu(x, 32, w, b), reference.group_norm_silu(x, 32, w, b, eps=1e-6))
        q, k, v = (torch.randn(2, 32, 5, 6) for _ in range(3))
        torch.testing.assert_close(vqvae_fast.spatial_attention(q, k, v), reference.spatial_attention(q, k, v))
        z, codebook = torch.randn(2, 16, 4, 5), torch.randn(96, 16)
        idx, dist = vqvae_fast.codebook_argmin(z, codebook, return_distance=True)
        ref_idx, ref_dist = reference.codebook_argmin(z, codebook, return_distance=True)
        torch.testing.assert_close(dist, ref_dist, rtol=1e-4, atol=1e-4)
        assert (idx == ref_idx).float().mean() > 0.99
        weight, bias = torch.randn(16, 64, 3, 3), torch.randn(16)
        xg = x.clone().requires_grad_()
        out = vqvae_fast.padded_conv2d(xg, weight, bias, stride=2, padding=(0, 1, 0, 1))
        torch.testing.assert_close(out, reference.padded_conv2d(x, weight, bias, (2, 2), (0, 1, 0, 1)))
        out.sum().backward()
        xr = x.clone().requires_grad_()
        reference.padded_conv2d(xr, weight, bias, (2, 2), (0, 1, 0, 1)).sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad)
        if not expect_mismatch:
            assert "vqvae_fast._C" in sys.modules and _extension.load()

    mismatch_warnings = [w for w in caught if issubclass(w.category, _extension.ExtensionMismatchWarning)]
    others = [w for w in caught if issubclass(w.category, RuntimeWarning) and "vqvae_fast" in str(w.message)
              and w not in mismatch_warnings]
    if expect_mismatch:
        assert len(mismatch_warnings) == 1, [str(w.message) for w in caught]
        print(f"mismatch warning: {mismatch_warnings[0].message}")
    else:
        assert not mismatch_warnings and not others, [str(w.message) for w in caught]
    print(f"smoke test passed: vqvae_fast {wheel_version}, torch {torch.__version__}, python {sys.version.split()[0]}"
          + (" (mismatched build: extension not loaded, fallbacks used)" if expect_mismatch else ""))


# ----------------------------------------------------------------------------------------------
# Command line


def cmd_plan(args) -> int:
    (read_version,) = setup_py_functions("read_version")
    print(f"{'entry':<22} {'label':<18} TORCH_CUDA_ARCH_LIST")
    for entry in map(parse_entry, args.entries or ["auto"]):
        if entry.variant == "auto" or not entry.torch:
            info = query_env(resolve_python(entry.python or args.python))
            torch_version = info.get("torch") or "?"
            variant = variant_of_cuda(info.get("cuda")) if entry.variant == "auto" else entry.variant
        else:
            torch_version, variant = entry.torch, entry.variant
        cuda = cuda_of_variant(variant)
        label = local_version_tag(torch_version, cuda)
        archs = (args.arch_list or os.environ.get("TORCH_CUDA_ARCH_LIST") or default_arch_list(cuda)) if cuda else "-"
        print(f"{entry.describe():<22} {read_version() + '+' + label:<18} {archs}")
    print("one cp310-abi3 wheel per (CUDA, torch) pair serves every CPython >= 3.10")
    return 0


def cmd_build(args) -> int:
    entries = [parse_entry(e) for e in (args.entries or ["auto"])]
    os.makedirs(args.out, exist_ok=True)
    work = args.work_dir or tempfile.mkdtemp(prefix="vqvae-fast-wheels-")
    os.makedirs(work, exist_ok=True)
    venvs: dict = {}
    done: set = set()
    built: list[Built] = []
    try:
        for entry in entries:
            log(f"=== {entry.describe()}")
            result = build_entry(entry, args, work, venvs, done)
            if result is None:
                continue
            if not args.no_check:
                start = time.monotonic()
                check_wheel(result.wheel, result.arch_list, result.entry.variant, result.torch)
                result.times["checks"] = time.monotonic() - start
            built.append(result)
        for venv_python_path in venvs.values():  # build environments are no longer needed
            shutil.rmtree(os.path.dirname(os.path.dirname(venv_python_path)), ignore_errors=True)
        if not args.no_smoke:
            for result in built:
                others = [b.wheel for b in built if b is not result] if not args.no_mismatch_check else []
                log(f"=== smoke test of {os.path.basename(result.wheel)}")
                result.times.update(smoke_test(
                    result.wheel, result.python, work, args.torch_index_url, args.smoke_torch, others, args.keep_work
                ))
        for result in built:
            target = os.path.join(args.out, os.path.basename(result.wheel))
            shutil.copy2(result.wheel, target)
            result.wheel = target
    finally:
        if not args.keep_work and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    log("=== summary")
    for result in built:
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in result.times.items())
        log(f"{os.path.basename(result.wheel)}  {os.path.getsize(result.wheel) / 2**20:.1f} MiB  ({steps})")
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
    work = tempfile.mkdtemp(prefix="vqvae-fast-smoke-")
    try:
        for path in args.wheels:
            others = [w for w in args.wheels if w != path] if not args.no_mismatch_check else []
            smoke_test(path, resolve_python(args.python), work, args.torch_index_url, args.smoke_torch, others, args.keep_work)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--python", default=sys.executable,
                       help="interpreter whose environment builds (entries without a torch version) or "
                            "on which fresh venvs are based (default: this one)")
        p.add_argument("--torch-index-url", default=None,
                       help="pip index for torch, '{variant}' replaced by cpu/cu130/...: "
                            "e.g. https://download.pytorch.org/whl/{variant} (default: pip's configuration)")
        p.add_argument("--smoke-torch", default=None,
                       help="torch version for the smoke-test venv (default: the one the wheel was built against)")
        p.add_argument("--no-mismatch-check", action="store_true",
                       help="skip installing the other wheels into each smoke venv to test the fallback")
        p.add_argument("--keep-work", action="store_true", help="keep the work directory (venvs, sources)")

    p_build = sub.add_parser("build", help="build (then check and smoke-test) wheels for matrix entries")
    p_build.add_argument("entries", nargs="*", help="VARIANT[:TORCH[:PYTHON]] (default: auto)")
    common(p_build)
    p_build.add_argument("--out", default=os.path.join(ROOT, "wheelhouse"), help="where the wheels go (default: wheelhouse/)")
    p_build.add_argument("--arch-list", default=None, help="TORCH_CUDA_ARCH_LIST for every CUDA entry (default: per CUDA version)")
    p_build.add_argument("--cuda-home", default=None, help="CUDA toolkit root (default: /usr/local/cuda-X.Y, else as setup.py finds it)")
    p_build.add_argument("--jobs", type=int, default=None, help="MAX_JOBS when not set (default: CPU count)")
    p_build.add_argument("--plat-name", default=None, help="platform tag to give the wheels, e.g. manylinux_2_28_x86_64")
    p_build.add_argument("--keep-debug-info", action="store_true", help="do not strip debug info from the library")
    p_build.add_argument("--work-dir", default=None, help="work directory (default: a temporary one, removed)")
    p_build.add_argument("--no-check", action="store_true", help="skip the post-build checks")
    p_build.add_argument("--no-smoke", action="store_true", help="skip the fresh-venv smoke tests")
    p_build.set_defaults(func=cmd_build)

    p_plan = sub.add_parser("plan", help="print each entry's version label and architectures; build nothing")
    p_plan.add_argument("entries", nargs="*")
    p_plan.add_argument("--python", default=sys.executable)
    p_plan.add_argument("--arch-list", default=None)
    p_plan.set_defaults(func=cmd_plan)

    p_check = sub.add_parser("check", help="run the post-build checks on built wheels")
    p_check.add_argument("wheels", nargs="+")
    p_check.add_argument("--arch-list", default=None, help="architectures to require (default: the build record's)")
    p_check.set_defaults(func=cmd_check)

    p_smoke = sub.add_parser("smoke", help="install wheels into fresh venvs and smoke-test them")
    p_smoke.add_argument("wheels", nargs="+")
    common(p_smoke)
    p_smoke.set_defaults(func=cmd_smoke)

    p_inside = sub.add_parser("_smoke_inside", help=argparse.SUPPRESS)
    p_inside.add_argument("--wheel-version", required=True)
    p_inside.add_argument("--expect-mismatch", action="store_true")
    p_inside.set_defaults(func=lambda a: _smoke_inside(a.wheel_version, a.expect_mismatch) or 0)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CheckFailed as err:
        print(f"[build_wheels] FAILED {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
