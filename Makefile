# flowdec: fresh-machine entry points. `make demo` installs and round-trips a clip with the built-in model;
# `make test` installs and runs the test suite. Both create ./.venv and install torch first, pinned by TORCH,
# as pip resolves it (the CPU build where pip is set up for it, as on the project's CI machines); on a machine
# where pip would pull the multi-GB CUDA build, `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: install install-test install-lint lint test test-fast demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.installed-lint: $(VENV)/.installed-test
	$(PY) -m pip install -q "ruff>=0.15" "mypy>=1.10"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

install-lint: $(VENV)/.installed-lint

## ruff and mypy (rules and settings in pyproject.toml), with torch installed so mypy sees its types.
lint: $(VENV)/.installed-lint
	$(PY) -m ruff check src tests scripts benchmarks
	$(PY) -m mypy

## Everything, including the full-size network and long-file tests (about 2-3 min on 2 cores); what CI runs.
test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

## Without the slow-marked tests.
test-fast: install-test
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PY) -m flowdec_cli.demo

bench: install
	$(PY) benchmarks/codec.py
	$(PY) benchmarks/postfilter.py
	$(PY) benchmarks/memory.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
