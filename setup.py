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
``VQVAE_FAST_LOCAL_VERSION``  local version label: ``auto`` derives it from the build
                              (``0.1.0+cu130torch2.14``, ``0.1.0+cputorch2.13``; what
                              scripts/build_wheels.py uses), any other value is used as given
                              (``0.1.0+<value>``); unset or empty: none (``0.1.0``).
``VQVAE_FAST_GIT_COMMIT``     commit recorded in the build record when the source is not a git
                              checkout (scripts/build_wheels.py builds from a copy).
``CUDA_HOME``                 toolkit root; found from ``nvcc`` when unset.

Build record
------------
Every build of the extension writes ``vqvae_fast/_build_info.json`` next to the library: package
version, the torch and CUDA versions and C++ ABI it was compiled against, the architectures, the
git commit and the build date (``SOURCE_DATE_EPOCH`` when set). At run time ``vqvae_fast``
compares it with the installed torch before loading the library (``vqvae_fast/_extension.py``)
and reports it in ``vqvae_fast.info()``.
"""

from __future__ import annotations

import datetime
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"
BUILD_INFO_FILE = "_build_info.json"  # read by vqvae_fast/_extension.py


def read_version() -> str:
    """The package version without local label, from vqvae_fast/_version.py (no import)."""
    text = open(os.path.join(ROOT, "vqvae_fast", "_version.py")).read()
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def load_extension_module():
    """vqvae_fast/_extension.py loaded by path (importing the package would import all of it):
    the wheels' version scheme lives there, beside the run-time check that relies on it."""
    path = os.path.join(ROOT, "vqvae_fast", "_extension.py")
    spec = importlib.util.spec_from_file_location("_vqvae_fast_extension_scheme", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def local_version(setting: str, torch_version: str | None, cuda_version: str | None) -> str | None:
    """The local version label for ``VQVAE_FAST_LOCAL_VERSION=setting`` (None: no label).

    ``auto`` derives it from what is compiled (``cu130torch2.14``, ``cputorch2.13``; no label
    when the extension is not built at all); another value must be a PEP 440 local label.
    """
    setting = setting.strip()
    if not setting:
        return None
    if setting.lower() == "auto":
        if torch_version is None:
            return None
        return load_extension_module().local_version_tag(torch_version, cuda_version)
    if not re.fullmatch(r"[a-zA-Z0-9]+([._][a-zA-Z0-9]+)*", setting):
        raise ValueError(f"VQVAE_FAST_LOCAL_VERSION={setting!r} is not a PEP 440 local version label")
    return setting


def git_commit() -> str | None:
    """``VQVAE_FAST_GIT_COMMIT``, else HEAD of the git checkout this file is the root of
    (``-dirty`` appended when the tree differs from it), else None."""
    commit = os.environ.get("VQVAE_FAST_GIT_COMMIT", "").strip()
    if commit:
        return commit
    def git(*args):
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, timeout=30)
    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(ROOT):
            return None  # not a checkout, or one that merely contains this source tree
        head = git("rev-parse", "HEAD").stdout.strip()
        dirty = git("status", "--porcelain").stdout.strip()  # new files are built too
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) or None


def build_date() -> str:
    """UTC build time, or ``SOURCE_DATE_EPOCH``'s for reproducible builds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
        if epoch else datetime.datetime.now(datetime.timezone.utc)
    )
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_build_info(version: str, torch_version: str, cuda_version: str | None,
                    archs: list[str], cxx11_abi: bool | None) -> dict:
    """The build record written next to the extension (``vqvae_fast/_build_info.json``)."""
    return {
        "version": version,
        "torch": torch_version,
        "cuda": cuda_version,  # None: built without CUDA code
        "cuda_archs": archs,
        "cxx11_abi": cxx11_abi,
        "python_abi": "cp310-abi3",
        "git_commit": git_commit(),
        "build_date": build_date(),
    }


def write_build_info(path: str, info: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(info, handle, indent=2, sort_keys=True)
        handle.write("\n")


def with_build_info(build_ext_base, info: dict):
    """``build_ext`` that also writes the build record beside the library it builds: into the
    build tree (hence into the wheel) and, for in-place and editable builds, into the source
    package, so that the record always describes the library next to it."""

    class build_ext(build_ext_base):
        def _build_info_targets(self) -> tuple[str, str]:
            built = os.path.join(self.build_lib, "vqvae_fast", BUILD_INFO_FILE)
            in_place = os.path.join(ROOT, "vqvae_fast", BUILD_INFO_FILE)
            return built, in_place

        def run(self):
            super().run()
            built, in_place = self._build_info_targets()
            write_build_info(built, info)
            if self.inplace:
                write_build_info(in_place, info)

        def get_outputs(self):  # build-tree paths (in place: the keys of the mapping below)
            outputs = list(super().get_outputs())
            built, _ = self._build_info_targets()
            return outputs if built in outputs else outputs + [built]

        def get_output_mapping(self):
            mapping = dict(super().get_output_mapping())
            if self.inplace:
                built, in_place = self._build_info_targets()
                mapping[built] = in_place
            return mapping

    return build_ext


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
    """Return (ext_modules, cmdclass, config) for vqvae_fast._C, or ([], {}, config) without torch.

    ``config``: the torch version, C++ ABI, CUDA version (None without CUDA code) and
    architectures the extension is compiled for; ``cmdclass["build_ext"]`` writes the build
    record into the dict ``config["build_info"]``, filled in once the version is known.
    """
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    info = {"torch": None, "cxx11_abi": None, "cuda": None, "archs": [], "build_info": {}}
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
    extra_link = []
    # at::parallel_for is an inline `#pragma omp parallel` in torch's headers: without OpenMP the
    # CPU loops would run on one thread. The libgomp linked here is the one torch already loaded.
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        extra_cxx.append("-fopenmp")
        extra_link.append("-fopenmp")
    abi = getattr(torch, "compiled_with_cxx11_abi", None)
    info.update(torch=torch.__version__, cxx11_abi=bool(abi()) if abi is not None else None)
    if with_cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_ARCH_LIST
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        info.update(cuda=torch.version.cuda, archs=[a for a in re.split(r"[;,\s]+", archs) if a])
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
            extra_link_args=extra_link,
            py_limited_api=True,
        )
    else:
        ext = cpp_extension.CppExtension(
            "vqvae_fast._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": extra_cxx},
            extra_link_args=extra_link,
            py_limited_api=True,
        )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    return [ext], {"build_ext": with_build_info(build_ext, info["build_info"])}, info


ext_modules, cmdclass, _config = build_extensions()
_local = local_version(os.environ.get("VQVAE_FAST_LOCAL_VERSION", ""), _config["torch"], _config["cuda"])
VERSION = read_version() + (f"+{_local}" if _local else "")
if ext_modules:
    _config["build_info"].update(
        make_build_info(VERSION, _config["torch"], _config["cuda"], _config["archs"], _config["cxx11_abi"])
    )

setup(
    version=VERSION,
    packages=find_packages(include=["vqvae_fast", "vqvae_fast.*"])
    + ["vqvae_fast.kernels", "vqvae_fast.benchmarks", "vqvae_fast.benchmarks.static"],
    package_dir={"vqvae_fast.kernels": "kernels", "vqvae_fast.benchmarks": "benchmarks"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
