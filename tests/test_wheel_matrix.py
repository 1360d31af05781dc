"""The wheel matrix (scripts/wheels/): which torch builds the selectors take from what the index
lists, the exact pip requirement of each, the cached environments, and the find-links pages, down
to pip picking the right wheel from a page for the torch that is installed.

Fast and offline: listings are given as data, wheels are small fakes with valid metadata; the
real wheels are read by tests/test_wheels.py once `.ci/run` has built them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
import torch

import vqvae_fast
from vqvae_fast import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from wheels import build, envs, matrix, pages, smoke  # noqa: E402

# What `pip index versions torch` printed on a machine with PyPI and a local CPU-only 2.13.0.
LISTED = ["2.15.0", "2.14.1", "2.14.0", "2.13.0+cpu", "2.13.0", "2.12.1", "2.12.0", "2.11.0", "2.10.0",
          "2.9.1", "1.13.1"]


# ----------------------------------------------------------------------------------------------
# Discovery, selectors, requirements


def test_parse_index_versions():
    text = "WARNING: whatever\ntorch (2.15.0)\nAvailable versions: 2.15.0, 2.13.0+cpu, 2.11.0\n  INSTALLED: 2.14.1\n"
    assert envs.parse_index_versions(text) == ["2.15.0", "2.13.0+cpu", "2.11.0"]
    with pytest.raises(ValueError):
        envs.parse_index_versions("ERROR: No matching distribution found for torch")


def test_discover_takes_the_newest_release_per_supported_minor():
    found = matrix.discover(LISTED, (2, 11), (2, 14))
    assert found.cuda == ["2.11.0", "2.12.1", "2.13.0", "2.14.1"]  # 2.15 and 2.10 are out of range
    assert found.cpu == "2.13.0+cpu"
    # an index of local-labelled builds (download.pytorch.org/whl/cu128); pre-releases never count
    found = matrix.discover(["2.14.1+cu128", "2.14.0+cu128", "2.13.0+cu128", "2.14.2rc1", "2.12.0+cpu"], (2, 11), (2, 14))
    assert found.cuda == ["2.13.0+cu128", "2.14.1+cu128"] and found.cpu == "2.12.0+cpu"
    # of a plain release and a labelled build of it, the plain one (what pip picks by itself)
    assert matrix.discover(["2.14.1+cu126", "2.14.1"], (2, 11), (2, 14)).cuda == ["2.14.1"]
    assert matrix.discover(["2.13.0+cpu"], (2, 11), (2, 14)).cuda == []


def test_selectors_expand_to_entries():
    found = matrix.discover(LISTED, (2, 11), (2, 14))
    entries = matrix.expand(["all"], found)
    assert [(e.variant, e.torch, e.optional) for e in entries] == [
        ("cuda", "2.14.1", True), ("cuda", "2.13.0", True), ("cuda", "2.12.1", True), ("cuda", "2.11.0", True),
        ("cpu", "2.13.0+cpu", False),
    ]
    ci = matrix.expand(["ci", "cu130"], found)
    assert [(e.variant, e.torch) for e in ci] == [("cuda", "2.14.1"), ("cuda", "2.11.0"), ("cpu", "2.13.0+cpu"),
                                                  ("cu130", None)]
    # no CPU-only torch on the index: the CPU wheel is built against the newest release
    only_cuda = matrix.discover(["2.14.1", "2.11.0"], (2, 11), (2, 14))
    assert matrix.expand(["ci"], only_cuda)[-1] == matrix.Entry("cpu", "2.14.1")
    assert [e.torch for e in matrix.expand(["ci"], matrix.discover(["2.12.0"], (2, 11), (2, 14)))] == ["2.12.0", "2.12.0"]
    with pytest.raises(SystemExit):
        matrix.expand(["all"], matrix.discover(["2.9.1"], (2, 11), (2, 14)))
    with pytest.raises(ValueError):
        matrix.parse_entry("all:2.14.1")


def test_supported_range_agrees_with_pyproject_and_readme():
    oldest = matrix.oldest_supported()
    assert re.search(rf'"torch>={oldest[0]}\.{oldest[1]}"', open(os.path.join(ROOT, "pyproject.toml")).read())
    readme = open(os.path.join(ROOT, "README.md")).read()
    newest = matrix.NEWEST_SUPPORTED
    assert f"Supported: torch {oldest[0]}.{oldest[1]} to {newest[0]}.{newest[1]}" in readme


@pytest.mark.parametrize(
    "version, variant, listed, requirement",
    [
        # == would match the local 2.13.0+cpu too, and pip would prefer it
        ("2.13.0", "cuda", LISTED, "torch===2.13.0"),
        ("2.13.0", "cpu", LISTED, "torch===2.13.0+cpu"),
        ("2.14.1", "cpu", LISTED, "torch===2.14.1"),  # a CPU wheel from a CUDA torch
        ("2.13.0+cpu", "cpu", LISTED, "torch===2.13.0+cpu"),
        ("2.14.1", "cu128", ["2.14.1+cu128", "2.14.1"], "torch===2.14.1+cu128"),
        ("2.14.1", "cu130", LISTED, "torch===2.14.1"),  # the plain release; its CUDA is checked once installed
        ("2.14.1", "cuda", ["2.14.1+cu126"], "torch===2.14.1+cu126"),
        ("2.14.1", "cuda", None, "torch==2.14.1"),  # no listing: what pip picks
    ],
)
def test_torch_requirement(version, variant, listed, requirement):
    assert matrix.torch_requirement(version, variant, listed) == requirement


def test_torch_requirement_refuses_what_the_index_lacks():
    with pytest.raises(SystemExit, match="no cuda build of torch 2.13.0"):
        matrix.torch_requirement("2.13.0", "cuda", ["2.13.0+cpu"])
    with pytest.raises(SystemExit, match="not on the index"):
        matrix.torch_requirement("2.12.1+cpu", "cpu", LISTED)


def test_variant_comes_from_the_installed_torch():
    cuda_torch = {"torch": "2.11.0+cu130", "cuda": "13.0"}
    cpu_torch = {"torch": "2.13.0+cpu", "cuda": None}
    assert build.resolve_variant(matrix.Entry("cuda", "2.11.0"), cuda_torch, True) == "cu130"
    assert build.resolve_variant(matrix.Entry("cu130", "2.11.0"), cuda_torch, True) == "cu130"
    assert build.resolve_variant(matrix.Entry("cpu", "2.11.0"), cuda_torch, True) == "cpu"
    assert build.resolve_variant(matrix.Entry("auto"), cuda_torch, False) == "cpu"  # no nvcc
    assert build.resolve_variant(matrix.Entry("auto"), cuda_torch, True) == "cu130"
    with pytest.raises(build.NoCudaBuild):
        build.resolve_variant(matrix.Entry("cuda", "2.13.0"), cpu_torch, True)
    with pytest.raises(SystemExit, match="needs a torch built for CUDA 12.8"):
        build.resolve_variant(matrix.Entry("cu128", "2.11.0"), cuda_torch, True)


def test_cache_key_names_python_torch_and_index():
    assert envs.cache_key("3.11.7", "torch===2.11.0", None) == "py3.11-torch-2.11.0"
    assert envs.cache_key("3.10.1", "torch===2.13.0+cpu", None) == "py3.10-torch-2.13.0+cpu"
    other = envs.cache_key("3.11.7", "torch===2.11.0", "https://example.org/simple")
    assert other.startswith("py3.11-torch-2.11.0-") and other != envs.cache_key("3.11.7", "torch===2.11.0", None)


def test_overlay_environment_sees_the_torch_environment(tmp_path):
    """A smoke environment is fresh, yet sees the cached torch environment's packages (and runs
    their .pth files) behind its own."""
    site = tmp_path / "torch-env-site"
    extra = tmp_path / "added-by-pth"
    site.mkdir(), extra.mkdir()
    (site / "marker_from_torch_env.py").write_text("VALUE = 1\n")
    (extra / "marker_from_pth.py").write_text("VALUE = 2\n")
    (site / "extra.pth").write_text(f"{extra}\n")
    python = envs.overlay_venv(sys.executable, {"purelib": str(site)}, str(tmp_path / "overlay"))
    code = "import sys, marker_from_torch_env as a, marker_from_pth as b; print(a.VALUE + b.VALUE, sys.prefix)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out == ["3", str(tmp_path / "overlay")]


# ----------------------------------------------------------------------------------------------
# Find-links pages


def fake_wheel(folder, torch_version: str, cuda: str | None, base: str = "0.1.0") -> str:
    """A small but valid wheel (pip can read its metadata) with a build record."""
    version = f"{base}+{_extension.local_version_tag(torch_version, cuda)}"
    name = f"vqvae_fast-{version}-cp310-abi3-linux_x86_64.whl"
    info = f"vqvae_fast-{version}.dist-info"
    record = {"version": version, "torch": torch_version, "cuda": cuda, "cuda_archs": ["8.0"] if cuda else [],
              "cxx11_abi": True, "git_commit": None, "build_date": "2026-01-01T00:00:00Z"}
    with zipfile.ZipFile(os.path.join(folder, name), "w") as archive:
        archive.writestr("vqvae_fast/_build_info.json", json.dumps(record))
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: vqvae_fast\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: cp310-abi3-linux_x86_64\n")
        archive.writestr(f"{info}/RECORD", "")
    return name


@pytest.mark.parametrize(
    "torch_version, cuda, page",
    [("2.11.0+cu130", "13.0", "torch-2.11+cu130.html"), ("2.13.0+cpu", None, "torch-2.13+cpu.html"),
     ("2.14.1", "12.8", "torch-2.14+cu128.html"), ("2.12.0a0+git12ab", "12.6", "torch-2.12+cu126.html")],
)
def test_page_name(torch_version, cuda, page):
    assert pages.page_name(torch_version, cuda) == page
    assert pages.page_of_label(_extension.local_version_tag(torch_version, cuda)) == page
    with pytest.raises(ValueError):
        pages.page_of_label("torch2.11")


def test_pages_link_each_wheel_from_its_pair(tmp_path):
    names = {pair: fake_wheel(tmp_path, *pair) for pair in
             [("2.11.0+cu130", "13.0"), ("2.14.1+cu130", "13.0"), ("2.13.0+cpu", None)]}
    older = fake_wheel(tmp_path, "2.11.0+cu130", "13.0", base="0.0.9")
    (tmp_path / "vqvae_fast-0.1.0-cp310-abi3-linux_x86_64.whl").write_bytes(b"not a zip")  # skipped, not fatal
    (tmp_path / "torch-2.9+cu118.html").write_text("stale")
    written = pages.write_pages(str(tmp_path))
    assert written == ["torch-2.11+cu130.html", "torch-2.13+cpu.html", "torch-2.14+cu130.html", "index.html"]
    assert not (tmp_path / "torch-2.9+cu118.html").exists()
    page = (tmp_path / "torch-2.11+cu130.html").read_text()
    links = re.findall(r'href="([^"]+)"', page)
    assert len(links) == 2 and all("%2B" in link and "/" not in link.split("#")[0] for link in links)
    for name in (names[("2.11.0+cu130", "13.0")], older):
        assert f">{name}<" in page
    assert "torch-2.14" not in page and "cputorch" not in page
    index = (tmp_path / "index.html").read_text()
    assert re.findall(r'href="([^"]+)"', index) == ["torch-2.11%2Bcu130.html", "torch-2.13%2Bcpu.html",
                                                     "torch-2.14%2Bcu130.html"]


def pip_download(page: str, dest) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-index", "--disable-pip-version-check",
         "--find-links", page, "-d", str(dest), "vqvae-fast"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PIP_FIND_LINKS": ""},
    )


def test_pip_picks_the_wheel_for_the_installed_torch_from_its_page(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    installed = (torch.__version__, torch.version.cuda)
    others = [("2.11.0+cu130", "13.0"), ("2.13.0+cpu", None), ("2.12.1", "12.6"), ("2.99.0+cu130", "13.0")]
    for pair in [installed] + [p for p in others if pages.page_name(*p) != pages.page_name(*installed)]:
        fake_wheel(house, *pair)
    fake_wheel(house, "2.99.0+cu999", "99.9", base="9.9.9")  # the newest version of all: on no page of ours
    pages.write_pages(str(house))
    page = house / pages.page_name(*installed)
    result = pip_download(str(page), tmp_path / "got")  # a path, as `-f wheelhouse/torch-X+Y.html`
    assert result.returncode == 0, result.stdout + result.stderr
    label = _extension.local_version_tag(*installed)
    assert os.listdir(tmp_path / "got") == [f"vqvae_fast-{vqvae_fast.__version__}+{label}-cp310-abi3-linux_x86_64.whl"]
    # the index page links pages, never wheels: pip finds nothing there rather than a wrong build
    result = pip_download(f"file://{house}/index.html", tmp_path / "none")
    assert result.returncode != 0 and "No matching distribution" in result.stderr


def test_mismatch_wheel_is_for_another_torch(tmp_path):
    names = [fake_wheel(tmp_path, *pair) for pair in
             [("2.13.0+cu130", "13.0"), ("2.13.0+cpu", None), ("2.14.1", "13.0"), ("2.11.0", "13.0")]]
    paths = [str(tmp_path / n) for n in names]
    # the CPU 2.13 wheel would load on a CUDA torch 2.13: the next one built for another torch
    assert smoke.other_wheel(paths[0], paths) == paths[2]
    assert smoke.other_wheel(paths[3], paths) == paths[0]
    assert smoke.other_wheel(paths[0], paths[:2]) is None
