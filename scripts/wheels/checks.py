"""Post-build checks of a wheel (also ``build_wheels.py check WHEEL...``).

The build record ``_build_info.json`` is inside and agrees with the file name and the entry; the
wheel holds exactly one shared library, ``vqvae_fast/_C.abi3.so`` (no copies of libtorch, the
CUDA runtime, cuDNN...); that library needs only torch's libraries, torch's CUDA runtime and
system libraries, found at run time (no RPATH outside the package); with CUDA code,
``cuobjdump`` lists machine code for every requested architecture and PTX where asked; without,
there is no device code at all; a ``manylinux_X_Y`` platform tag is backed by glibc symbol
versions <= X.Y.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile

from .common import CheckFailed, local_version_tag, log, setup_py_functions, version_tuple
from .matrix import parse_arch_list, variant_of_cuda
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


def find_tool(name: str) -> str | None:
    """A CUDA binutil: the toolkit's (found as setup.py finds it), then PATH, then triton's copy
    (``triton/backends/nvidia/bin``, in this interpreter's environment)."""
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


def parse_wheel_name(path: str) -> dict:
    name = os.path.basename(path)
    match = re.fullmatch(r"([^-]+)-([^-]+)-([^-]+)-([^-]+)-([^-]+)\.whl", name)
    if not match:
        raise CheckFailed(f"{name} is not a wheel file name")
    dist, version, python_tag, abi_tag, platform_tag = match.groups()
    return {"dist": dist, "version": version, "python": python_tag, "abi": abi_tag, "platform": platform_tag}


def read_build_info(path: str) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(BUILD_INFO))
    except KeyError:
        raise CheckFailed(f"{os.path.basename(path)} has no {BUILD_INFO}") from None
    except zipfile.BadZipFile:
        raise CheckFailed(f"{os.path.basename(path)} is not a zip file") from None


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
