# Two entry points for a fresh machine: `make demo` (set up + train the default LPA model) and
# `make test` (set up + run the test suite). Both create .venv and install the CPU build of torch
# first, so pip never pulls CUDA wheels. Elsewhere, pick your torch build with e.g.
#   make demo TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test fuzz bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH)
	touch $@

# the demo needs lpa and torch only; the tests install every optional extra (transformers, trackers, MiniLM)
$(VENV)/.installed-lean: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed-lean
	$(BIN)/lpa train --force

test: setup
	$(BIN)/python -m pytest

fuzz: setup
	$(BIN)/python -m pytest -m fuzz

bench: setup
	$(BIN)/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) runs
