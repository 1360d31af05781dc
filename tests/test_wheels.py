"""Wheels: the version label scheme, the build record, the per-CUDA architecture lists, the
post-build checks of scripts/wheels/checks.py, and what happens when the installed vqvae_fast was
built for another torch or CUDA version (the library is not loaded, one warning names the wheel
that fits, the Triton and reference paths still work).

Building a wheel takes minutes, so these tests call the pieces directly; `.ci/run` builds the real
wheels and then runs this file again with ``VQVAE_FAST_WHEELHOUSE`` pointing at them, which
enables the tests that read the built wheels.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from packaging.version import Version

import vqvae_fast
from vqvae_fast import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELHOUSE = os.environ.get("VQVAE_FAST_WHEELHOUSE", "").strip()
# labels the wheelhouse must hold, as shell patterns: cu*torch2.11 is a wheel for torch 2.11 with
# whichever CUDA version the index's torch 2.11 has
EXPECTED_LABELS = [x for x in os.environ.get("VQVAE_FAST_EXPECT_WHEEL_LABELS", "").split(",") if x]


sys.path.insert(0, os.path.join(ROOT, "scripts"))

from wheels import checks, common, matrix, pages  # noqa: E402  (scripts/wheels: the build tools)


def setup_py(*names):
    return common.setup_py_functions(*names)


# ----------------------------------------------------------------------------------------------
# Version labels and architecture lists


@pytest.mark.parametrize(
    "torch_version, cuda, label",
    [
        ("2.14.1+cu130", "13.0", "cu130torch2.14"),
        ("2.14.1", "13.0", "cu130torch2.14"),
        ("2.13.0+cpu", None, "cputorch2.13"),
        ("2.11.0+cu128", "12.8", "cu128torch2.11"),
        ("2.12.0a0+git1234abc", "12.6", "cu126torch2.12"),
        ("2.14.0", "11.8", "cu118torch2.14"),
    ],
)
def test_local_version_tag(torch_version, cuda, label):
    assert _extension.local_version_tag(torch_version, cuda) == label
    version = Version(f"0.1.0+{label}")  # a valid PEP 440 local version, unchanged by normalisation
    assert version.local == label and version.public == "0.1.0"


def test_local_version_tag_rejects_what_it_cannot_read():
    with pytest.raises(ValueError):
        _extension.local_version_tag("nightly", None)
    with pytest.raises(ValueError):
        _extension.local_version_tag("2.14.1", "thirteen")


def test_label_of_the_installed_torch():
    major, minor = torch.__version__.split(".")[:2]
    cuda = torch.version.cuda
    expected = (f"cu{cuda.replace('.', '')}" if cuda else "cpu") + f"torch{major}.{minor}"
    assert _extension.local_version_tag(torch.__version__, cuda) == expected
    assert _extension.wheel_for_installed_torch() == f"{vqvae_fast.__version__}+{expected}"


def test_setup_py_local_version_setting():
    (local_version,) = setup_py("local_version")
    assert local_version("", "2.14.1+cu130", "13.0") is None
    assert local_version("auto", "2.14.1+cu130", "13.0") == "cu130torch2.14"
    assert local_version("AUTO", "2.13.0+cpu", None) == "cputorch2.13"
    assert local_version("auto", None, None) is None  # no extension built: no label
    assert local_version("cu130torch2.14.post1", "2.13.0", None) == "cu130torch2.14.post1"
    with pytest.raises(ValueError):
        local_version("not a label!", "2.14.1", None)


def test_default_arch_list_per_cuda_version():
    assert matrix.default_arch_list("11.8") == "8.0;8.6;8.9;9.0+PTX"
    assert matrix.default_arch_list("12.6") == "8.0;8.6;8.9;9.0+PTX"
    assert matrix.default_arch_list("12.8") == "8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    assert matrix.default_arch_list("13.0") == "8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    with pytest.raises(ValueError):
        matrix.default_arch_list("11.7")
    assert matrix.parse_arch_list("8.0;9.0a, 12.0+PTX") == [
        ("sm_80", False), ("sm_90a", False), ("sm_120", True)
    ]
    with pytest.raises(ValueError):
        matrix.parse_arch_list("sm_90")


def test_matrix_entries():
    entry = matrix.parse_entry("cu128:2.14.1:/opt/python/cp310-cp310/bin/python")
    assert (entry.variant, entry.torch, entry.python) == ("cu128", "2.14.1", "/opt/python/cp310-cp310/bin/python")
    assert matrix.cuda_of_variant(entry.variant) == "12.8"
    assert matrix.parse_entry("cpu:2.13.0+cpu").torch == "2.13.0+cpu"
    assert matrix.parse_entry("cuda:2.11.0").variant == "cuda"  # CUDA version: the torch's own
    assert matrix.cuda_of_variant("cuda") is None and matrix.cuda_of_variant("cpu") is None
    assert matrix.parse_entry("cu130").torch is None  # the installed torch
    assert matrix.cuda_of_variant(matrix.parse_entry("CU118").variant) == "11.8"
    for bad in ("cuda13", "rocm6.2", "cpu:latest", "auto:2.14.1", "cuda:2.14", "cuda:2.14.1rc1"):
        with pytest.raises(ValueError):
            matrix.parse_entry(bad)


def test_plan_prints_requirements_labels_and_arch_lists():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "build_wheels.py"), "plan", "cu128:2.14.1", "ci",
         "--torch-versions", "2.15.0,2.14.1,2.13.0+cpu,2.13.0,2.11.0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"cu128:2\.14\.1\S*\s+torch===2\.14\.1\s+\S+\+cu128torch2\.14\s+8\.0;8\.6;8\.9;9\.0;10\.0;12\.0\+PTX", out)
    assert re.search(r"cuda:2\.14\.1\S*\s+torch===2\.14\.1\s+\S+\+cu\?torch2\.14", out)
    assert re.search(r"cuda:2\.11\.0\S*\s+torch===2\.11\.0\s+\S+\+cu\?torch2\.11", out)
    assert re.search(r"cpu:2\.13\.0\+cpu\S*\s+torch===2\.13\.0\+cpu\s+\S+\+cputorch2\.13\s+-", out)
    assert "2.15" not in out.split("TORCH_CUDA_ARCH_LIST")[1] and "abi3" in out


# ----------------------------------------------------------------------------------------------
# Build record


def test_build_record_generation(monkeypatch, tmp_path):
    make_build_info, write_build_info = setup_py("make_build_info", "write_build_info")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.setenv("VQVAE_FAST_GIT_COMMIT", "0123456789abcdef")
    info = make_build_info("0.1.0+cu130torch2.14", "2.14.1+cu130", "13.0", ["8.0", "9.0+PTX"], True)
    assert info == {
        "version": "0.1.0+cu130torch2.14",
        "torch": "2.14.1+cu130",
        "cuda": "13.0",
        "cuda_archs": ["8.0", "9.0+PTX"],
        "cxx11_abi": True,
        "python_abi": "cp310-abi3",
        "git_commit": "0123456789abcdef",
        "build_date": "2023-11-14T22:13:20Z",
    }
    path = tmp_path / "vqvae_fast" / "_build_info.json"
    write_build_info(str(path), info)
    assert json.loads(path.read_text()) == info
    assert set(checks.BUILD_INFO_KEYS) <= set(info)


def test_git_commit_of_the_checkout(monkeypatch):
    (git_commit,) = setup_py("git_commit")
    monkeypatch.delenv("VQVAE_FAST_GIT_COMMIT", raising=False)
    top = subprocess.run(["git", "-C", ROOT, "rev-parse", "--show-toplevel"], capture_output=True, text=True) \
        if shutil.which("git") else None
    if top is None or top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(ROOT):
        assert git_commit() is None  # not a checkout of its own: no commit rather than a wrong one
    else:
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", git_commit() or ""), git_commit()


def test_this_build_has_a_record_that_fits_the_installed_torch():
    spec = importlib.util.find_spec("vqvae_fast._C")
    if spec is None or spec.origin is None:
        pytest.skip("vqvae_fast._C is not built")
    record = os.path.join(os.path.dirname(spec.origin), _extension.BUILD_INFO_FILE)
    assert os.path.exists(record), f"the build wrote no {record} beside {spec.origin}"
    info = _extension.build_info()
    assert info == json.load(open(record))
    assert info["torch"] == torch.__version__
    assert set(checks.BUILD_INFO_KEYS) <= set(info)
    assert _extension.mismatch() == []
    if _extension.status() is None:  # loaded: the record says what the library holds
        assert bool(info["cuda"]) == _extension.has_cuda_code()
        if info["cuda"]:
            assert info["cuda"] == torch.version.cuda and info["cuda_archs"]
    report = vqvae_fast.info()
    assert report["build"] == info and report["extension"]["mismatch"] == []


@pytest.mark.parametrize(
    "build, torch_version, torch_cuda, abi, problems",
    [
        ({"torch": "2.14.1+cu130", "cuda": "13.0"}, "2.14.1+cu130", "13.0", True, []),
        ({"torch": "2.14.0+cu130", "cuda": "13.0"}, "2.14.1+cu130", "13.0", True, []),  # patch release
        ({"torch": "2.14.1+cpu", "cuda": None}, "2.14.1+cu130", "13.0", True, []),  # CPU build, CUDA torch
        ({"torch": "2.13.0+cpu", "cuda": None}, "2.14.1+cu130", "13.0", True, ["torch"]),
        ({"torch": "2.14.1+cu130", "cuda": "13.0"}, "2.14.1+cpu", None, True, ["CUDA"]),
        ({"torch": "2.14.1+cu128", "cuda": "12.8"}, "2.14.1+cu130", "13.0", True, ["CUDA"]),
        ({"torch": "2.13.0+cu128", "cuda": "12.8"}, "2.14.1+cpu", None, True, ["torch", "CUDA"]),
        ({"torch": "2.14.1", "cuda": None, "cxx11_abi": False}, "2.14.1", None, True, ["C++ ABI"]),
        ({"torch": "2.14.1", "cuda": None, "cxx11_abi": True}, "2.14.1", None, None, []),
    ],
)
def test_compatibility_problems(build, torch_version, torch_cuda, abi, problems):
    found = _extension.compatibility_problems(build, torch_version, torch_cuda, abi)
    assert [p.split(":")[0] for p in found] == problems, found


# ----------------------------------------------------------------------------------------------
# A build for another torch / CUDA: not loaded, one warning, fallbacks work


def copy_installed_package(dest) -> str:
    """A copy of the installed vqvae_fast (with its kernels subpackage) under ``dest``."""
    package = os.path.dirname(vqvae_fast.__file__)
    target = os.path.join(dest, "vqvae_fast")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(package, target, ignore=ignore)
    if not os.path.isdir(os.path.join(target, "kernels")):  # editable install: kernels/ is mapped
        kernels = importlib.util.find_spec("vqvae_fast.kernels").submodule_search_locations[0]
        shutil.copytree(kernels, os.path.join(target, "kernels"), ignore=ignore)
    return target


MISMATCH_CHECK = """
import os, sys, warnings
import torch

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import vqvae_fast
    from vqvae_fast import _extension, reference
    assert vqvae_fast.__file__.startswith(os.getcwd()), vqvae_fast.__file__
    assert "triton" not in sys.modules and not torch.cuda.is_initialized()

    x = torch.randn(2, 8, 6, 5)
    weight, bias = torch.randn(4, 8, 3, 3), torch.randn(4)
    out = vqvae_fast.padded_conv2d(x, weight, bias, stride=2, padding=(0, 1, 0, 1))
    torch.testing.assert_close(out, reference.padded_conv2d(x, weight, bias, (2, 2), (0, 1, 0, 1)))
    report = vqvae_fast.info()
    # a second op that would want the extension: no second warning
    vqvae_fast.padded_conv2d(x, weight, None, stride=1, padding=(1, 1, 1, 1))
    if RUN_TRITON:
        with vqvae_fast.use_backend("triton"):
            y = vqvae_fast.group_norm_silu(x, 4)
        torch.testing.assert_close(y, reference.group_norm_silu(x, 4), rtol=1e-4, atol=1e-4)

assert "vqvae_fast._C" not in sys.modules, "a mismatched library was imported"
with open("/proc/self/maps") as maps:
    assert "_C.abi3.so" not in maps.read(), "a mismatched library was mapped"
ext = report["extension"]
assert not ext["loaded"] and ext["mismatch"], ext
assert report["ops"]["padded_conv2d"]["cpu"]["backend"] == "reference"
ours = [w for w in caught if "vqvae_fast" in str(w.message)]
assert len(ours) == 1, [str(w.message) for w in ours]
assert issubclass(ours[0].category, _extension.ExtensionMismatchWarning)
print(json.dumps({"warning": str(ours[0].message), "mismatch": ext["mismatch"],
                  "reason": ext["reason"], "wheel": ext["wheel_for_this_torch"]}))
"""


@pytest.mark.parametrize("case", ["torch", "cuda"])
def test_build_for_another_torch_is_not_loaded(tmp_path, case):
    package = copy_installed_package(tmp_path)
    installed_cuda = torch.version.cuda
    if case == "torch":
        record = {"torch": "2.99.0+cu999", "cuda": "99.9"}
    else:  # same torch, another CUDA (or CUDA code for a CPU-only torch)
        record = {"torch": torch.__version__, "cuda": "11.8" if installed_cuda != "11.8" else "12.8"}
    record.update(version=f"{vqvae_fast.__version__}+{_extension.local_version_tag(record['torch'], record['cuda'])}",
                  cuda_archs=["8.0"], cxx11_abi=None, git_commit=None, build_date="2026-01-01T00:00:00Z")
    with open(os.path.join(package, _extension.BUILD_INFO_FILE), "w") as handle:
        json.dump(record, handle)

    code = "import json\nRUN_TRITON = %r\n" % (case == "torch") + MISMATCH_CHECK
    env = {k: v for k, v in os.environ.items() if k != "VQVAE_FAST_BACKEND"}
    env.update(PYTHONPATH=str(tmp_path), TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])

    wheel = _extension.wheel_for_installed_torch()
    assert out["wheel"] == wheel
    for text in (out["warning"], out["reason"]):
        assert f"vqvae_fast=={wheel}" in text and record["version"] in text and torch.__version__ in text
    if case == "torch":
        assert any(p.startswith("torch: built against 2.99.0+cu999") for p in out["mismatch"]), out
    else:
        assert [p.split(":")[0] for p in out["mismatch"]] == ["CUDA"], out
        assert record["cuda"] in out["mismatch"][0]


# ----------------------------------------------------------------------------------------------
# The post-build checks


def fake_wheel(tmp_path, name, files: dict) -> str:
    path = os.path.join(tmp_path, name)
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def good_record(version="0.1.0+cputorch2.13", torch_version="2.13.0+cpu", cuda=None):
    return json.dumps({
        "version": version, "torch": torch_version, "cuda": cuda, "cuda_archs": [], "cxx11_abi": True,
        "git_commit": "abc", "build_date": "2026-01-01T00:00:00Z",
    })


def check_problems(path, **kwargs) -> str:
    with pytest.raises(common.CheckFailed) as err:
        checks.check_wheel(path, **kwargs)
    return str(err.value)


def test_check_rejects_bundled_libraries_and_bad_records(tmp_path):
    name = "vqvae_fast-0.1.0+cputorch2.13-cp310-abi3-linux_x86_64.whl"
    bundled = fake_wheel(tmp_path, name, {
        "vqvae_fast/_build_info.json": good_record(),
        "vqvae_fast/__init__.py": "",
        "vqvae_fast.libs/libtorch_cpu-1234.so": b"\x7fELF",
        "vqvae_fast/libcudart.so.13": b"\x7fELF",
    })
    message = check_problems(bundled)
    assert "libtorch_cpu-1234.so" in message and "libcudart.so.13" in message
    assert "expected only vqvae_fast/_C.abi3.so" in message

    os.remove(bundled)
    no_record = fake_wheel(tmp_path, name, {"vqvae_fast/__init__.py": ""})
    assert "_build_info.json" in check_problems(no_record)

    os.remove(no_record)
    wrong = fake_wheel(tmp_path, name, {
        "vqvae_fast/_build_info.json": good_record(version="0.1.0+cputorch2.13", torch_version="2.14.1+cpu"),
    })
    message = check_problems(wrong, variant="cu130")
    assert "does not describe the build" in message and "asked for cu130" in message

    not_abi3 = fake_wheel(tmp_path, "vqvae_fast-0.1.0-cp311-cp311-linux_x86_64.whl", {
        "vqvae_fast/_build_info.json": good_record(version="0.1.0"),
    })
    assert "expected cp310-abi3" in check_problems(not_abi3)


def test_linkage_check_of_this_build():
    spec = importlib.util.find_spec("vqvae_fast._C")
    if spec is None or spec.origin is None or shutil.which("readelf") is None:
        pytest.skip("needs the built extension and readelf")
    cuda = (_extension.build_info() or {}).get("cuda")
    assert checks.check_linkage(spec.origin, cuda) == []
    # a CPU wheel may not carry device code, nor need the CUDA runtime
    if cuda:
        problems = checks.check_linkage(spec.origin, None)
        assert any("libcudart" in p for p in problems) and any(".nv_fatbin" in p for p in problems)


# ----------------------------------------------------------------------------------------------
# Built wheels (CI: VQVAE_FAST_WHEELHOUSE=wheelhouse after `make wheels`)


def built_wheels() -> list[str]:
    if not WHEELHOUSE:
        pytest.skip("VQVAE_FAST_WHEELHOUSE is not set (.ci/run sets it after building the wheels)")
    wheels = sorted(os.path.join(WHEELHOUSE, f) for f in os.listdir(WHEELHOUSE) if f.endswith(".whl"))
    assert wheels, f"no wheels in {WHEELHOUSE}"
    return wheels


def test_built_wheels_carry_a_correct_build_record():
    labels = []
    for path in built_wheels():
        name = checks.parse_wheel_name(path)
        with zipfile.ZipFile(path) as archive:
            assert "vqvae_fast/_build_info.json" in archive.namelist(), path
            record = json.loads(archive.read("vqvae_fast/_build_info.json"))
            assert "vqvae_fast/_C.abi3.so" in archive.namelist(), path
        assert record["version"] == name["version"]
        label = name["version"].partition("+")[2]
        assert label == _extension.local_version_tag(record["torch"], record["cuda"]), (path, record)
        assert Version(name["version"]).public == vqvae_fast.__version__
        assert (name["python"], name["abi"]) == ("cp310", "abi3")
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", record["git_commit"] or ""), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["build_date"]), record
        if record["cuda"]:
            assert record["cuda_archs"], record
        labels.append(label)
    for expected in EXPECTED_LABELS:
        assert fnmatch.filter(labels, expected), f"no +{expected} wheel in {WHEELHOUSE}: {labels}"


def test_built_wheels_pass_the_post_build_checks():
    for path in built_wheels():
        checks.check_wheel(path)


def test_built_wheels_are_on_their_find_links_pages():
    wheels = built_wheels()
    index = open(os.path.join(WHEELHOUSE, pages.INDEX)).read()
    for path in wheels:
        record = checks.read_build_info(path)
        page = pages.page_name(record["torch"], record["cuda"])
        assert os.path.basename(path) in open(os.path.join(WHEELHOUSE, page)).read(), (path, page)
        assert f">{page}<" in index


INSTALLED_FROM_PAGE = """
import os, sys, torch, vqvae_fast
from vqvae_fast import _extension, reference
assert vqvae_fast.__file__.startswith(sys.argv[1]), vqvae_fast.__file__
report = vqvae_fast.info()
ext = report["extension"]
assert ext["loaded"] and not ext["mismatch"], ext
assert report["build"]["version"] == _extension.wheel_for_installed_torch(), report["build"]
assert ext["cuda_code"] == bool(torch.version.cuda), ext
x, weight = torch.randn(2, 8, 6, 5), torch.randn(4, 8, 3, 3)
out = vqvae_fast.padded_conv2d(x, weight, None, stride=2, padding=(0, 1, 0, 1))
torch.testing.assert_close(out, reference.padded_conv2d(x, weight, None, (2, 2), (0, 1, 0, 1)))
assert report["ops"]["padded_conv2d"]["cpu"]["backend"] == "cpu"
print(report["build"]["version"])
"""


def test_page_of_the_installed_torch_installs_the_wheel_that_loads(tmp_path):
    """`pip install vqvae-fast -f wheelhouse/torch-X.Y+VARIANT.html`, the page this torch names,
    gives the wheel built for it, and its library loads here (pip's --target: no fresh torch)."""
    built_wheels()
    label = _extension.local_version_tag(torch.__version__, torch.version.cuda)
    page = os.path.join(WHEELHOUSE, pages.page_name(torch.__version__, torch.version.cuda))
    if not os.path.exists(page):
        assert not any(fnmatch.fnmatch(label, e) for e in EXPECTED_LABELS), f"{page} is missing"
        pytest.skip(f"no wheel for torch {torch.__version__} in {WHEELHOUSE}")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
                    "--target", str(target), "-f", page, "vqvae-fast"], check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("VQVAE_FAST_BACKEND", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = str(target)
    result = subprocess.run([sys.executable, "-c", INSTALLED_FROM_PAGE, str(target)], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[-1] == f"{vqvae_fast.__version__}+{label}"
