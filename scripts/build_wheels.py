#!/usr/bin/env python3
"""Build, check and smoke-test vqvae_fast wheels for a matrix of torch versions, and write the
find-links pages to install them from.

    python scripts/build_wheels.py build all        # every supported torch with a CUDA build, + CPU
    python scripts/build_wheels.py build ci         # the newest and the oldest torch, + CPU (CI)
    python scripts/build_wheels.py build cuda:2.12.1 cpu:2.13.0+cpu
    python scripts/build_wheels.py plan all         # what would be built; builds nothing
    python scripts/build_wheels.py check wheelhouse/*.whl
    python scripts/build_wheels.py smoke wheelhouse/*.whl
    python scripts/build_wheels.py pages wheelhouse

Matrix. ``all`` takes, for each supported torch minor (pyproject.toml's ``torch>=`` to
wheels/matrix.py's NEWEST_SUPPORTED), the newest release the package index lists
(``pip index versions torch``, or ``--torch-versions``), installs it into a cached environment of
its own (``.venv-wheels/py3.11-torch-2.11.0``, reused by later runs) and builds a wheel for
whichever CUDA version that torch reports; a release that turns out CPU-only is skipped. Plus the
CPU wheel, against the newest ``+cpu`` torch on the index. ``ci`` is the same for the newest and
oldest minor. Entries can also be named: ``VARIANT[:TORCH[:PYTHON]]`` with VARIANT ``cuda``,
``cuXYZ``, ``cpu`` or ``auto`` (wheels/matrix.py).

Version scheme. ``0.1.0+cu130torch2.11``: CUDA 13.0 code, built against torch 2.11.x;
``0.1.0+cputorch2.13``: no CUDA code. setup.py derives the label from the torch it compiles
against (``VQVAE_FAST_LOCAL_VERSION=auto``). The extension uses the limited Python API: one
``cp310-abi3`` wheel per (CUDA, torch) pair serves every CPython >= 3.10.

Each wheel passes the post-build checks (wheels/checks.py: build record, no bundled libraries,
linkage, device code per architecture by cuobjdump, glibc within a manylinux tag) and a smoke
test (wheels/smoke.py): installed from its find-links page into a fresh environment over the
torch it was built against, it must import, report and compute each op like the reference, and a
wheel built for another torch must fall back there with the mismatch warning. Then the wheels go
to ``--out`` with one page per (torch, CUDA) pair, ``torch-2.11+cu130.html``, and ``index.html``
(wheels/pages.py): ``pip install vqvae-fast -f wheelhouse/torch-2.11+cu130.html``.

Architectures per CUDA version: 8.0, 8.6, 8.9, 9.0, plus 10.0 and 12.0 from CUDA 12.8, PTX for the
newest (``TORCH_CUDA_ARCH_LIST`` or ``--arch-list`` override). ``MAX_JOBS``: parallel compile jobs
(default: the CPU count).

Published matrix (manylinux_2_28): build each CUDA version in PyTorch's manylinux_2_28 builder
image for it (``pytorch/manylinux2_28-builder:cuda13.0``, ...) with this script and
``--plat-name manylinux_2_28_x86_64 --torch-index-url 'https://download.pytorch.org/whl/{variant}'``
(see the README); never ``auditwheel repair``: it would copy libtorch into the wheel.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wheels.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
