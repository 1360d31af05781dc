# Two entry points, each doing its own set-up: `make bench` (the main job) and `make test`.
# `make wheels` builds, checks and smoke-tests the wheels CI builds (WHEELS=ci: the newest and the
# oldest supported torch with CUDA, and the CPU wheel); `make wheels WHEELS=all` every supported torch
# the package index has; or name entries, WHEELS="cuda:2.12.1 cpu:2.13.0+cpu" (scripts/build_wheels.py).
# Each torch gets a cached environment in .venv-wheels/ (~5 GB for a CUDA torch); `make clean-wheels`
# removes them and the wheelhouse.
# Set-up is idempotent: a virtual environment in $(VENV) with torch $(TORCH_VERSION) and the
# project installed in editable mode (compiling vqvae_fast._C), redone only when inputs change.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
PY := $(VENV)/bin/python
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h)

WHEELS ?= ci

.PHONY: setup bench test test-compat info wheels clean clean-wheels

setup: $(VENV)/.built

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps "taming-transformers-rom1504==0.0.6"
	$(PY) -m pip install -q --no-deps "icetk==0.0.7"
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(EXT_SOURCES)
	$(PY) -m pip install -q -e . --no-build-isolation --no-deps
	touch $@

bench: setup
	$(PY) -m vqvae_fast bench $(ARGS)

test: setup
	$(PY) -m pytest tests $(ARGS)

# the suite against the oldest supported torch / triton, in .venv-compat (scripts/test_compat.sh)
test-compat:
	scripts/test_compat.sh $(ARGS)

info: setup
	$(PY) -m vqvae_fast info

wheels: setup
	$(PY) scripts/build_wheels.py build $(WHEELS) --python $(PY) --out wheelhouse --venv-cache .venv-wheels $(ARGS)

clean-wheels:
	rm -rf wheelhouse .venv-wheels

clean:
	rm -rf build *.egg-info vqvae_fast/_C*.so vqvae_fast/_build_info.json wheelhouse $(VENV)/.built
