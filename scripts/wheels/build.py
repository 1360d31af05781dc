"""Build one matrix entry's wheel: ``pip wheel . --no-build-isolation --no-deps`` from a clean copy
of the source tree, against the torch of the entry's environment.

setup.py stays the one place that knows how to compile; this only chooses the settings: CUDA code
or not (``VQVAE_FAST_FORCE_CUDA`` / ``VQVAE_FAST_SKIP_CUDA``), the CUDA version's architecture
list, ``VQVAE_FAST_LOCAL_VERSION=auto`` (the label comes from the torch it compiles against),
the commit, and stripped debug info. The variant and label are read from that torch, never assumed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from .envs import TorchEnv
from .common import ROOT, local_version_tag, log, run, setup_py_functions, version_tuple
from .matrix import Entry, cuda_of_variant, default_arch_list, parse_arch_list, variant_of_cuda


class NoCudaBuild(RuntimeError):
    """A ``cuda`` entry whose torch turned out to be a CPU-only build."""


@dataclass
class Built:
    entry: Entry  # with the variant the torch resolved it to (cuXYZ or cpu)
    wheel: str
    arch_list: str | None
    env_info: dict  # envs.query_env() of the environment it was built in
    times: dict = field(default_factory=dict)
    torch_env: TorchEnv | None = None  # the cached environment it was built in (None: --python's)


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


def resolve_variant(entry: Entry, env_info: dict, toolkit_found: bool) -> str:
    """``cuXYZ`` or ``cpu`` for an entry, from the torch of its environment."""
    torch_cuda = env_info.get("cuda")
    if entry.variant == "auto":
        return variant_of_cuda(torch_cuda) if torch_cuda and toolkit_found else "cpu"
    if entry.variant == "cuda":
        if not torch_cuda:
            raise NoCudaBuild(f"torch {env_info['torch']} is a CPU-only build: no CUDA wheel for it")
        return variant_of_cuda(torch_cuda)
    cuda = cuda_of_variant(entry.variant)
    if cuda and version_tuple(torch_cuda or "0.0") != version_tuple(cuda):
        raise SystemExit(
            f"entry {entry.describe()}: {entry.variant} needs a torch built for CUDA {cuda}, but the environment "
            f"has torch {env_info['torch']} (CUDA {torch_cuda or 'none'}); give --torch-index-url, or name "
            "the entry cuda:VERSION to build for whichever CUDA that torch has"
        )
    return entry.variant


def build_env(python: str, cuda: str | None, args) -> tuple[dict, str | None]:
    """The environment variables of the build, and the architecture list (None without CUDA)."""
    (find_cuda_home,) = setup_py_functions("find_cuda_home")
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")  # the venv's ninja
    env.setdefault("MAX_JOBS", str(args.jobs or os.cpu_count() or 1))
    env.setdefault("VQVAE_FAST_LOCAL_VERSION", "auto")
    (git_commit,) = setup_py_functions("git_commit")
    commit = git_commit()
    if commit:
        env["VQVAE_FAST_GIT_COMMIT"] = commit
    if not args.keep_debug_info:  # the -g of Python's CFLAGS would triple the library's size
        env["LDFLAGS"] = (env.get("LDFLAGS", "") + " -Wl,--strip-debug").strip()
    env.pop("VQVAE_FAST_FORCE_CUDA", None)
    env.pop("VQVAE_FAST_SKIP_CUDA", None)
    if not cuda:
        env["VQVAE_FAST_SKIP_CUDA"] = "1"
        return env, None
    cuda_home = args.cuda_home or next(
        (d for d in (f"/usr/local/cuda-{cuda}",) if os.path.exists(os.path.join(d, "bin", "nvcc"))), None
    )
    if cuda_home:
        env["CUDA_HOME"] = cuda_home
    toolkit = nvcc_version(env.get("CUDA_HOME") or find_cuda_home())
    if toolkit is None:
        raise SystemExit(f"CUDA {cuda}: no nvcc found (set CUDA_HOME or --cuda-home)")
    if version_tuple(toolkit)[0] != version_tuple(cuda)[0]:
        raise SystemExit(f"nvcc is CUDA {toolkit}, torch needs CUDA {cuda}")
    arch_list = args.arch_list or os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or default_arch_list(cuda)
    parse_arch_list(arch_list)  # validates
    env["TORCH_CUDA_ARCH_LIST"] = arch_list
    env["VQVAE_FAST_FORCE_CUDA"] = "1"
    log(f"nvcc {toolkit}, TORCH_CUDA_ARCH_LIST={arch_list}")
    return env, arch_list


def build_entry(entry: Entry, python: str, env_info: dict, args, work: str, done: set) -> Built | None:
    """Build one entry's wheel in the environment of ``python`` (described by ``env_info``); None
    when a wheel with its label was built already (``done``: another Python gives the same file)."""
    if not env_info.get("torch"):
        raise SystemExit(f"{python}: torch is not installed ({env_info.get('error')})")
    # --no-build-isolation builds with this environment's setuptools (bdist_wheel is in it from 70.1)
    setuptools_version = version_tuple(env_info.get("setuptools") or "0.0")
    if setuptools_version < (64, 0) or (setuptools_version < (70, 1) and not env_info.get("wheel")):
        raise SystemExit(f"{python}: needs setuptools >= 70.1, or >= 64 and wheel (pip install -U setuptools wheel)")
    if entry.torch and version_tuple(env_info["torch"]) != version_tuple(entry.torch):
        raise SystemExit(f"asked for torch {entry.torch}, the environment has {env_info['torch']}")
    (find_cuda_home,) = setup_py_functions("find_cuda_home")
    variant = resolve_variant(entry, env_info, nvcc_version(args.cuda_home or find_cuda_home()) is not None)
    cuda = cuda_of_variant(variant)

    override = os.environ.get("VQVAE_FAST_LOCAL_VERSION", "").strip()
    fixed = override.lower() not in ("", "auto")
    label = override if fixed else local_version_tag(env_info["torch"], cuda and env_info["cuda"])
    if label in done and fixed:
        raise SystemExit(f"VQVAE_FAST_LOCAL_VERSION={override} would give two entries the same version; "
                         "build one entry at a time, or unset it")
    if label in done:
        log(f"+{label} is built already (abi3: another Python gives the same wheel); {entry.describe()} skipped")
        return None
    done.add(label)

    env, arch_list = build_env(python, cuda and env_info["cuda"], args)
    log(f"+{label}: torch {env_info['torch']}, {'CUDA ' + env_info['cuda'] if cuda else 'no CUDA code'}, "
        f"MAX_JOBS={env['MAX_JOBS']}")
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
    shutil.rmtree(source, ignore_errors=True)
    resolved = Entry(variant, entry.torch, entry.python, entry.optional)
    return Built(resolved, os.path.join(out, wheels[0]), arch_list, env_info, {"build": time.monotonic() - start})
