#!/usr/bin/env bash
# The test suite against the oldest torch and triton the package supports (by default torch
# 2.11.0 and triton 3.6.0, what the GPU machines run), in a virtual environment of its own and
# on a copy of the working tree, so that the main environment's in-place build is untouched.
#
#   scripts/test_compat.sh [pytest arguments]      (make test-compat ARGS="...")
#
# Knobs: COMPAT_TORCH, COMPAT_TRITON, COMPAT_VENV (default .venv-compat), PYTHON.
# Triton 3.6's interpreter turns one-element arrays into Python ints, which numpy >= 2.4 refuses:
# the environment pins numpy below that. It needs the package index (torch 2.11 is not on disk).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH=${COMPAT_TORCH:-2.11.0}
TRITON=${COMPAT_TRITON:-3.6.0}
VENV=${COMPAT_VENV:-$ROOT/.venv-compat}
PY=$VENV/bin/python

stamp="torch==$TORCH triton==$TRITON"
if [ ! -x "$PY" ] || [ "$(cat "$VENV/.compat" 2>/dev/null)" != "$stamp" ]; then
    "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install -q "torch==$TORCH" "triton==$TRITON" "numpy<2.4" "setuptools>=70" wheel \
        -r "$ROOT/requirements-dev.txt"
    "$PY" -m pip install -q --no-deps "taming-transformers-rom1504==0.0.6"
    "$PY" -m pip install -q --no-deps "icetk==0.0.7"
    echo "$stamp" > "$VENV/.compat"
fi

# tracked and untracked-but-not-ignored files: the working tree as it is, without its builds
COPY=$(mktemp -d "${TMPDIR:-/tmp}/vqvae-fast-compat-XXXXXX")
trap 'rm -rf "$COPY"' EXIT
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar --ignore-failed-read -cf -) | tar -xf - -C "$COPY"
cd "$COPY"
"$PY" -m pip install -q -e . --no-build-isolation --no-deps
"$PY" -m vqvae_fast info | head -n 6
"$PY" -m pytest tests -q -p no:cacheprovider "$@"
