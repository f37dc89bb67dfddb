# Quick start: `make run` (sets up .venv with the MPI stack, then runs a demo), `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
NP ?= 3
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench chunk-sweep lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[mpich,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mpiexec -n $(NP) $(BIN)/python -m mpigather run scripts/demo.py:simulate --range 24 --out demo_out.h5 --overwrite --progress log
	$(BIN)/mpigather status demo_out.h5
	$(BIN)/python scripts/read_demo.py demo_out.h5

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -ra -m "not slow"

bench: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python scripts/bench.py

chunk-sweep: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python scripts/chunk_sweep.py

lint: $(STAMP)
	$(BIN)/ruff check mpigather tests scripts
	$(BIN)/mypy mpigather

clean:
	rm -rf $(VENV) demo_out.h5* build *.egg-info
