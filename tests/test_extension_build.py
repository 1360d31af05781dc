"""The compiled extension ``vqvae_fast._C``: it loads, registers its ops, stays abi3 without
pybind11, and, when built with its CUDA part, carries machine code for every requested
architecture (sm_80 and sm_90 by default), checked with ``cuobjdump``.

CI sets ``VQVAE_FAST_EXPECT_CUDA=1`` (its machine has nvcc and a CUDA build of torch): there a
missing extension, an extension without CUDA code or a missing ``cuobjdump`` fails instead of
skipping.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from vqvae_fast import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPECT_CUDA = os.environ.get("VQVAE_FAST_EXPECT_CUDA", "").strip().lower() in ("1", "true", "yes", "on")
DEFAULT_ARCHS = "8.0;9.0"  # setup.py's default TORCH_CUDA_ARCH_LIST


def skip_or_fail(reason: str) -> None:
    """Fail when CI expects a CUDA build, skip elsewhere."""
    if EXPECT_CUDA:
        pytest.fail(f"VQVAE_FAST_EXPECT_CUDA=1 but {reason}")
    pytest.skip(reason)


def library_path() -> str:
    spec = importlib.util.find_spec("vqvae_fast._C")
    if spec is None or spec.origin is None:
        skip_or_fail("vqvae_fast._C is not built")
    return spec.origin


def setup_py_function(name: str):
    """A function defined in setup.py, without running the build script."""
    path = os.path.join(ROOT, "setup.py")
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    body = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    body += [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    namespace: dict = {"__file__": path}
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
    return namespace[name]


def find_cuobjdump() -> str | None:
    """The toolkit's cuobjdump (the toolkit found as setup.py finds it), else triton's copy."""
    candidates = []
    cuda_home = setup_py_function("find_cuda_home")()
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", "cuobjdump"))
    candidates.append(shutil.which("cuobjdump"))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        candidates.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def expected_archs() -> set[str]:
    """sm_XY for each architecture the build was asked for (TORCH_CUDA_ARCH_LIST or the default)."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_ARCHS
    names = set()
    for arch in re.split(r"[;, ]+", archs):
        match = re.fullmatch(r"(\d+)\.(\d+)(a|f)?(\+PTX)?", arch.strip())
        if match:
            names.add(f"sm_{match.group(1)}{match.group(2)}{match.group(3) or ''}")
    return names


def test_extension_loads_and_registers_its_ops():
    library_path()
    if _extension.status() is not None:
        skip_or_fail(_extension.status())
    assert _extension.load()
    for name in ("padded_conv2d", "padded_conv2d_backward"):
        assert hasattr(torch.ops.vqvae_fast, name), f"torch.ops.vqvae_fast.{name} is not registered"


def test_library_is_abi3_without_pybind11():
    path = library_path()
    assert path.endswith(".abi3.so"), f"{os.path.basename(path)} is not a limited-API (abi3) build"
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not found")
    needed = subprocess.run([readelf, "-d", path], capture_output=True, text=True, check=True).stdout
    assert "libtorch_python" not in needed, "the extension links libtorch_python (pybind11 bindings)"


def test_cpu_loops_are_built_with_openmp_when_torch_is():
    """at::parallel_for is an inline OpenMP loop: built without OpenMP it silently runs serially."""
    path = library_path()
    if not (torch.backends.openmp.is_available() and sys.platform.startswith("linux")):
        pytest.skip("torch is built without OpenMP here")
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not found")
    needed = subprocess.run([readelf, "-d", path], capture_output=True, text=True, check=True).stdout
    assert "libgomp" in needed, "the extension was built without -fopenmp: its CPU loops run on one thread"


def test_cuda_part_has_code_for_every_requested_architecture():
    path = library_path()
    if not _extension.has_cuda_code():
        skip_or_fail(f"the extension was built without CUDA code ({_extension.status(need_cuda=True)})")
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        skip_or_fail("cuobjdump was found neither in the CUDA toolkit nor in triton")
    listing = subprocess.run(
        [cuobjdump, "--list-elf", path], capture_output=True, text=True, timeout=300
    ).stdout
    print(listing)
    found = set(re.findall(r"\.(sm_\d+[af]?)\.cubin", listing))
    missing = expected_archs() - found
    assert not missing, f"{os.path.basename(path)} lacks machine code for {sorted(missing)}:\n{listing}"


def test_cuda_kernels_use_no_local_memory():
    path = library_path()
    if not _extension.has_cuda_code():
        skip_or_fail("the extension was built without CUDA code")
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        skip_or_fail("cuobjdump was found neither in the CUDA toolkit nor in triton")
    usage = subprocess.run(
        [cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True, timeout=300
    ).stdout
    print(usage)
    locals_ = [int(n) for n in re.findall(r"LOCAL:(\d+)", usage)]
    assert locals_, f"no kernel found in the resource usage dump:\n{usage}"
    assert max(locals_) == 0, f"a kernel spills to local memory:\n{usage}"
