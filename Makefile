# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv if needed, install lrkit, run the LR finder on the built-in example
#   make test   - create/reuse .venv, install lrkit with the dev extras, run the whole test suite
#
# PyTorch: on a machine with no torch, a plain `pip install torch` may pull a multi-GB CUDA
# build. By default these targets pin torch==2.13.0 through a pip constraints file
# (.ci/constraints-cpu.txt): the CPU wheel where the package index serves it (our CI), but on the
# public PyPI index it may resolve to a CUDA build. To use your own torch: `make test PIP_CONSTRAINT=`.

PYTHON ?= python3
VENV ?= .venv
PIP_CONSTRAINT ?= $(CURDIR)/.ci/constraints-cpu.txt
export PIP_CONSTRAINT
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
# property tests replay fixed, derandomised examples (tests/conftest.py), so `make test` gives the
# same answer on every machine; `make test HYPOTHESIS_PROFILE=dev` explores new examples instead
HYPOTHESIS_PROFILE ?= ci
export HYPOTHESIS_PROFILE

.PHONY: demo test bench install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[cli,plot,torch,examples]'
	touch $@

$(VENV)/.installed-dev: $(PY) pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/lrkit demo --out demo-out

test: $(VENV)/.installed-dev
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-out .pytest_cache
