"""Build script: the single place that knows how to compile vqvae_fast.

What gets built
---------------
* The Python package ``vqvae_fast`` with the top-level ``kernels/`` folder installed as the
  subpackage ``vqvae_fast.kernels`` (never as a top-level ``kernels`` module: an unrelated
  distribution of that name exists), and ``benchmarks/`` as ``vqvae_fast.benchmarks`` so that
  the installed ``vqvae-fast bench`` command has its suite.
* The extension ``vqvae_fast._C`` from ``csrc/``: the C++ part (op schemas, CPU kernels) always,
  the CUDA part (``csrc/cuda/*.cu``) when a CUDA build of torch and ``nvcc`` are present.

Environment variables
---------------------
``VQVAE_FAST_FORCE_CUDA=1``   compile the CUDA part even when this machine has no GPU
                              (it still needs nvcc and a CUDA build of torch).
``VQVAE_FAST_SKIP_CUDA=1``    never compile the CUDA part.
``TORCH_CUDA_ARCH_LIST``      architectures to compile for (default "8.0;9.0").
``MAX_JOBS``                  parallel compile jobs (read by torch's ninja builder).
``VQVAE_FAST_LOCAL_VERSION``  local version tag (``0.1.0+<tag>``); default: none.
``CUDA_HOME``                 toolkit root; found from ``nvcc`` when unset.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"


def read_version() -> str:
    text = open(os.path.join(ROOT, "vqvae_fast", "_version.py")).read()
    version = re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)
    local = os.environ.get("VQVAE_FAST_LOCAL_VERSION", "").strip()
    return f"{version}+{local}" if local else version


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def find_cuda_home() -> str | None:
    """Toolkit root: $CUDA_HOME if valid, else where ``nvcc`` really lives.

    ``nvcc`` on PATH may be a wrapper script, so its own location says nothing; a dry-run
    compile prints the directory of the real binary (``_HERE_=<root>/bin``; ``--dryrun --version``
    prints nothing of the kind, hence the dummy input).
    """
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60,
        )
        match = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
    except (OSError, subprocess.SubprocessError):
        match = None
    if match:
        root = os.path.dirname(os.path.normpath(match.group(1)))
        if os.path.exists(os.path.join(root, "bin", "nvcc")):
            return root
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def pip_cuda_include_dirs() -> list[str]:
    """Headers of the pip-installed CUDA libraries (cublas_v2.h, cusparse.h, ...).

    torch's CUDA headers include them; a toolkit that ships only the compiler lacks them, but a
    CUDA build of torch from pip brings them under site-packages/nvidia/.
    """
    dirs = []
    for site in sys.path:
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            dirs.extend(sorted(glob.glob(os.path.join(site, pattern))))
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def build_extensions():
    """Return (ext_modules, cmdclass, build_info) for vqvae_fast._C, or ([], {}, info) without torch."""
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    info = {"cuda": None, "archs": []}
    if not sources:
        return [], {}, info

    with_cuda = False
    cuda_home = None
    if not env_flag("VQVAE_FAST_SKIP_CUDA") and cuda_sources:
        cuda_home = find_cuda_home()
        if cuda_home is not None:
            # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
            os.environ["CUDA_HOME"] = cuda_home
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("vqvae_fast setup: torch is not installed; building without the extension", file=sys.stderr)
        return [], {}, info

    if not env_flag("VQVAE_FAST_SKIP_CUDA") and cuda_sources:
        torch_has_cuda = torch.version.cuda is not None
        if env_flag("VQVAE_FAST_FORCE_CUDA"):
            if not (torch_has_cuda and cuda_home):
                raise RuntimeError(
                    "VQVAE_FAST_FORCE_CUDA=1 needs a CUDA build of torch and nvcc "
                    f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={cuda_home})"
                )
            with_cuda = True
        else:
            with_cuda = torch_has_cuda and cuda_home is not None

    # torch's builder defines Py_LIMITED_API itself for py_limited_api extensions (its minimum
    # supported CPython), so the wheel is tagged abi3 from that version on.
    define_macros = []
    # No -std flag: torch's builder passes the C++ standard its own headers need (C++20 for
    # torch >= 2.10; an explicit -std=c++17 here would break compiling against them).
    extra_cxx = ["-O3"]
    if with_cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_ARCH_LIST
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        info.update(cuda=torch.version.cuda, archs=archs.replace(",", ";").split(";"))
        define_macros.append(("VQVAE_FAST_WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "vqvae_fast._C",
            sources + cuda_sources,
            # The toolkit's own headers first: a pip CUDA runtime's include dir may carry a
            # cuda_runtime.h without the crt/ headers it includes.
            include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(cuda_home, "include")]
            + pip_cuda_include_dirs(),
            define_macros=define_macros,
            extra_compile_args={
                "cxx": extra_cxx,
                "nvcc": ["-O3", "--use_fast_math", "-lineinfo"],
            },
            py_limited_api=True,
        )
    else:
        ext = cpp_extension.CppExtension(
            "vqvae_fast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": extra_cxx},
            py_limited_api=True,
        )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return [ext], {"build_ext": build_ext}, info


ext_modules, cmdclass, _build_info = build_extensions()

setup(
    version=read_version(),
    packages=find_packages(include=["vqvae_fast", "vqvae_fast.*"])
    + ["vqvae_fast.kernels", "vqvae_fast.benchmarks"],
    package_dir={"vqvae_fast.kernels": "kernels", "vqvae_fast.benchmarks": "benchmarks"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
