# Two commands do everything on a fresh machine (see README):
#   make quickstart   # install, then run the CPU quickstart sweep and its ablation report
#   make test         # install, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build from local disk; on a GPU machine install your own torch first and run `make install TORCH=`.
TORCH ?= torch==2.13.0
# The shared benchmark files when they are there (bicc-lab refuses a BICC_LAB_DATA_DIR that
# is not a directory; an empty one is unset).
export BICC_LAB_DATA_DIR ?= $(wildcard $(abspath ../shared/data))

.PHONY: install test test-fast quickstart lint docs bench mutation clean

# uv (one wheel from PyPI) resolves and installs the ~150 packages in seconds where pip takes
# minutes; without it (no index for it, USE_UV=0) pip installs the same pins and extras.
# torch always goes through pip: the CPU wheel lies on local disk, where only pip looks.
USE_UV ?= 1

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	@if [ "$(USE_UV)" = 1 ]; then $(BIN)/pip install -q uv || echo "make: uv could not be installed; pip installs everything"; fi
	@if [ ! -x $(BIN)/uv ]; then $(BIN)/pip install --upgrade pip; fi

install: $(BIN)/python
	@if [ -n "$(TORCH)" ]; then $(BIN)/pip install "$(TORCH)"; fi
	@if [ "$(USE_UV)" = 1 ] && [ -x $(BIN)/uv ]; then \
		$(BIN)/uv pip install --python $(BIN)/python -e '.[dev,released]'; \
	else \
		$(BIN)/pip install -e '.[dev,released]'; \
	fi

# Two workers, one test file at a time each (module fixtures build once); the longest files
# go first (tests/conftest.py). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

quickstart: install
	$(BIN)/bicc-lab sweep run sweeps/quickstart.yaml
	$(BIN)/bicc-lab report sweeps/quickstart.yaml

lint:
	$(BIN)/ruff check bicc_lab tests

# README.md's "Command reference" from every command's --help (tests/test_command_reference.py
# fails when the two differ).
docs:
	$(BIN)/python -m bicc_lab.cli.reference

bench: install
	$(BIN)/python benchmarks/cli_startup.py

# Mutation testing on a seeded sample of mutants per target (benchmarks/mutation.md); about
# 40 minutes on two cores. MUTANTS=N sets the sample size of each target.
MUTANTS ?= 40
mutation: install
	$(BIN)/pip install -e '.[mutation]'
	for target in algorithms stats trainer; do PYTHON=$(BIN)/python benchmarks/mutation/run.sh $$target $(MUTANTS) || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mutation
