"""Find-links pages next to the wheels: one per (torch, CUDA) pair, and one that lists them.

``torch-2.11+cu130.html`` links the wheels built for torch 2.11.x with CUDA 13.0 code,
``torch-2.13+cpu.html`` those without CUDA code, so that

    pip install vqvae-fast -f wheelhouse/torch-2.11+cu130.html

can only pick a wheel that fits that torch (the layout PyG's wheel pages use). The pair comes from
each wheel's build record (what it was really built against), not from its file name. Links are
relative, with the sha256 pip checks, so the folder works from a ``file://`` path, served over
HTTP, or copied elsewhere. ``index.html`` links the pages, not the wheels: given to pip it offers
nothing, instead of letting pip choose among builds for different torches.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
from urllib.parse import quote

from .checks import parse_wheel_name, read_build_info
from .common import CheckFailed, local_version_tag, log

INDEX = "index.html"
PAGE = re.compile(r"torch-\d+\.\d+\+(cpu|cu\d+)\.html")


def page_of_label(label: str) -> str:
    """``"cu130torch2.11"`` (a wheel's local version label) -> ``"torch-2.11+cu130.html"``."""
    match = re.fullmatch(r"(cpu|cu\d+)torch(\d+\.\d+)", label)
    if not match:
        raise ValueError(f"{label!r} is not a wheel label like cu130torch2.11 or cputorch2.13")
    return f"torch-{match.group(2)}+{match.group(1)}.html"


def page_name(torch_version: str, cuda: str | None) -> str:
    """``("2.11.0+cu130", "13.0")`` -> ``"torch-2.11+cu130.html"``; ``("2.13.0+cpu", None)`` ->
    ``"torch-2.13+cpu.html"``: for a user, ``torch.__version__`` and ``torch.version.cuda`` give the
    page of the wheel that fits their torch."""
    return page_of_label(local_version_tag(torch_version, cuda))


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _document(title: str, body: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title></head>",
        "<body>", f"<h1>{html.escape(title)}</h1>", *body, "</body></html>", "",
    ])


def group_wheels(folder: str) -> dict[str, list[tuple[str, dict]]]:
    """The wheels in ``folder`` by page name, each with its build record (sorted by file name)."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".whl"):
            continue
        path = os.path.join(folder, name)
        try:
            parse_wheel_name(path)
            record = read_build_info(path)
        except CheckFailed as err:
            log(f"no page for {name}: {err}")
            continue
        groups.setdefault(page_name(record["torch"], record.get("cuda")), []).append((name, record))
    return groups


def write_pages(folder: str) -> list[str]:
    """(Re)write the pages for the wheels now in ``folder``; returns the page names, index last.

    A page whose wheels are gone is removed, so that no page points at a missing file.
    """
    groups = group_wheels(folder)
    for stale in os.listdir(folder):
        if PAGE.fullmatch(stale) and stale not in groups:
            os.remove(os.path.join(folder, stale))
    rows = []
    for page, wheels in sorted(groups.items()):
        links = []
        for name, _ in wheels:
            href = f"{quote(name)}#sha256={sha256(os.path.join(folder, name))}"
            links.append(f'<a href="{html.escape(href)}">{html.escape(name)}</a><br>')
        torch_mm = re.search(r"torch-(\d+\.\d+)", page).group(1)
        cuda = wheels[0][1].get("cuda")
        what = f"torch {torch_mm}.x " + (f"built for CUDA {cuda}" if cuda else "(no CUDA code)")
        with open(os.path.join(folder, page), "w") as handle:
            handle.write(_document(f"vqvae_fast wheels for {what}", links))
        rows.append(f'<li><a href="{html.escape(quote(page))}">{html.escape(page)}</a>: {html.escape(what)}, '
                    f"{len(wheels)} wheel{'s' if len(wheels) > 1 else ''}</li>")
    intro = [
        "<p>Pick the page of the torch you run: <code>python -c \"import torch; "
        "print(torch.__version__, torch.version.cuda)\"</code> printing <code>2.11.0+cu130 13.0</code> means "
        "<code>torch-2.11+cu130.html</code>; a CPU-only torch 2.13 means <code>torch-2.13+cpu.html</code>. Then "
        "<code>pip install vqvae-fast -f &lt;page&gt;</code>.</p>",
    ]
    with open(os.path.join(folder, INDEX), "w") as handle:
        handle.write(_document("vqvae_fast wheels", intro + ["<ul>", *rows, "</ul>"]))
    pages = sorted(groups) + [INDEX]
    log(f"find-links pages in {folder}: {', '.join(pages)}")
    return pages
