"""The build matrix: entries, the ``all`` and ``ci`` selectors, which torch versions the package
index offers, and the architecture list per CUDA version.

Entries
-------
``VARIANT[:TORCH[:PYTHON]]``, e.g. ``cuda:2.11.0``, ``cu130``, ``cpu:2.13.0+cpu``:

* ``VARIANT``: ``cuda`` (CUDA code, for whichever CUDA version that torch was built with: it is
  asked of the installed torch), ``cuXYZ`` (the same, but the torch must be built for CUDA X.Y),
  ``cpu`` (no CUDA code, against any build of that torch), or ``auto`` (the installed torch:
  ``cuda`` if it is a CUDA build and nvcc exists, else ``cpu``).
* ``TORCH``: the torch to build against, installed into a cached environment of its own. Left
  out, the torch already installed in ``PYTHON``'s environment.
* ``PYTHON``: the interpreter (default ``--python``). The wheels are ``cp310-abi3``, so another
  Python gives the same file: entries differing only in it are built once.

Selectors
---------
``all``: for each supported torch minor (the oldest from pyproject.toml's ``torch>=``, the newest
:data:`NEWEST_SUPPORTED`) the newest release the index has in a build that is not CPU-only by its
label, as a ``cuda`` entry; plus one ``cpu`` entry, against the newest ``+cpu`` build on the index
(else against the newest release). ``ci``: the same, for the newest and the oldest minor only.
Whether a release really has CUDA code, and which CUDA, is only known once it is installed: a
``cuda`` entry of a selector whose torch turns out CPU-only is skipped (and reported), a named one
fails. No version or CUDA label is kept in a list here: the index and the installed torch say.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .common import ROOT, version_tuple

NEWEST_SUPPORTED = (2, 14)  # the newest torch minor the code is tested against (README: "Supported")
SELECTORS = ("all", "ci")
RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:\+([a-z0-9.]+))?")


def oldest_supported() -> tuple[int, int]:
    """The torch minor of pyproject.toml's ``torch>=X.Y`` dependency."""
    with open(os.path.join(ROOT, "pyproject.toml")) as handle:
        match = re.search(r'"torch>=(\d+\.\d+)', handle.read())
    if not match:
        raise SystemExit("pyproject.toml has no 'torch>=X.Y' dependency to take the oldest supported torch from")
    return version_tuple(match.group(1))


@dataclass
class Entry:
    variant: str  # "cuda", "cuXYZ", "cpu" or "auto"
    torch: str | None = None  # version to install into a cached environment; None: use the installed one
    python: str | None = None  # interpreter; None: --python
    optional: bool = False  # from a selector: skipped, not failed, if its torch has no CUDA code

    def describe(self) -> str:
        return f"{self.variant}:{self.torch or 'installed'}:{self.python or '--python'}"


def cuda_of_variant(variant: str) -> str | None:
    """``cu130`` -> ``"13.0"``; None for ``cpu`` and for ``cuda`` (the torch decides)."""
    if variant in ("cpu", "cuda"):
        return None
    match = re.fullmatch(r"cu(\d+)(\d)", variant)
    if not match:
        raise ValueError(f"variant {variant!r}: expected cuda, cpu, auto or cuXYZ (cu130 = CUDA 13.0)")
    return f"{int(match.group(1))}.{match.group(2)}"


def variant_of_cuda(cuda: str | None) -> str:
    if not cuda:
        return "cpu"
    major, minor = version_tuple(cuda)
    return f"cu{major}{minor}"


def parse_entry(text: str) -> Entry:
    variant, _, rest = text.partition(":")
    torch_version, _, python = rest.partition(":")
    variant = variant.strip().lower()
    if variant in SELECTORS:
        raise ValueError(f"{variant!r} is a selector of several entries and takes no torch version")
    if variant != "auto":
        cuda_of_variant(variant)  # validates
    elif torch_version not in ("", "installed"):
        raise ValueError(f"entry {text!r}: 'auto' takes the installed torch; name cuda, cpu or cuXYZ to install one")
    if torch_version in ("", "installed"):
        torch_version = None
    elif not RELEASE.fullmatch(torch_version):
        raise ValueError(f"entry {text!r}: {torch_version!r} is not a torch release (e.g. 2.14.1 or 2.13.0+cpu)")
    return Entry(variant, torch_version or None, python or None)


def split_release(version: str) -> tuple[tuple[int, int, int], str | None] | None:
    """``"2.13.0+cpu"`` -> ``((2, 13, 0), "cpu")``; None for anything but a final release."""
    match = RELEASE.fullmatch(version)
    if not match:
        return None
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))), match.group(4)


@dataclass
class Discovered:
    cuda: list[str]  # per supported minor, oldest first: the newest release not labelled CPU-only
    cpu: str | None  # the newest "+cpu" build of a supported minor, if the index has one


def discover(listed: list[str], oldest: tuple[int, int], newest: tuple[int, int]) -> Discovered:
    """The candidates of the selectors among the versions the index lists."""
    newest_per_minor: dict[tuple[int, int], tuple[tuple, str]] = {}  # minor -> ((release, plain), version)
    cpu_builds = []
    for version in listed:
        parsed = split_release(version)
        if parsed is None or not oldest <= parsed[0][:2] <= newest:
            continue
        release, local = parsed
        if local == "cpu":
            cpu_builds.append((release, version))
            continue
        minor = release[:2]
        key = (release, local is None)  # of two builds of one release (plain, +cuXYZ): the plain one
        if minor not in newest_per_minor or key > newest_per_minor[minor][0]:
            newest_per_minor[minor] = (key, version)
    cuda = [newest_per_minor[minor][1] for minor in sorted(newest_per_minor)]
    cpu = max(cpu_builds)[1] if cpu_builds else None
    return Discovered(cuda, cpu)


def expand(tokens: list[str], discovered: Discovered | None) -> list[Entry]:
    """Entries and selectors, in order, into entries (newest torch first within a selector)."""
    entries = []
    for token in tokens:
        name = token.strip().lower()
        if name not in SELECTORS:
            entries.append(parse_entry(token))
            continue
        if discovered is None or not discovered.cuda:
            raise SystemExit(f"selector {name!r}: the index offers no supported torch release")
        chosen = discovered.cuda[::-1] if name == "all" else list(dict.fromkeys([discovered.cuda[-1], discovered.cuda[0]]))
        entries += [Entry("cuda", version, optional=True) for version in chosen]
        entries.append(Entry("cpu", discovered.cpu or discovered.cuda[-1]))
    return entries


def torch_requirement(version: str, variant: str, listed: list[str] | None) -> str:
    """The pip requirement that installs exactly the build of ``version`` an entry wants.

    ``torch==2.13.0`` would also match a local ``2.13.0+cpu`` build and, on an index that has
    both, pick it (local labels sort higher); ``===`` matches the version string exactly. A
    ``cpu`` entry prefers the ``+cpu`` build, a ``cuXYZ`` entry the ``+cuXYZ`` one, a ``cuda``
    entry the plain release. Without a listing it falls back to ``==``.
    """
    if listed is None:
        return f"torch=={version}"
    if "+" in version:
        if version not in listed:
            raise SystemExit(f"torch {version} is not on the index (it has {', '.join(listed[:12])}, ...)")
        return f"torch==={version}"
    release = split_release(version)[0]
    builds = {}  # local label (None: plain) -> version string, for the builds of this release
    for listed_version in listed:
        parsed = split_release(listed_version)
        if parsed and parsed[0] == release:
            builds[parsed[1]] = listed_version
    if variant == "cpu":
        order = ["cpu", None]
    elif variant == "cuda":
        order = [None] + sorted(k for k in builds if k and k.startswith("cu"))
    else:
        order = [variant, None]
    for local in order:
        if local in builds:
            return f"torch==={builds[local]}"
    raise SystemExit(f"no {variant} build of torch {version} on the index (it has {sorted(builds.values()) or 'none'})")


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
