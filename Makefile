# Development tasks. `make test` and `make demo` create .venv on first use and reinstall it
# whenever pyproject.toml changes. Override the interpreter with `make PYTHON=python3.12 ...`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: venv test test-ray test-dask test-under-load coverage lint soak bench demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test,dev,bench,ray,dask]'
	touch $@

test: venv
	$(BIN)/python -m pytest

# The contract tests on the Ray backend and its own tests, against a real local Ray started once
# for the session (seconds to start, a gigabyte of memory): in a pytest process of their own.
test-ray: venv
	$(BIN)/python -m pytest -m ray

# The contract tests on the Dask backend and its own tests, against a real LocalCluster started
# once for the session: in a pytest process of their own.
test-dask: venv
	$(BIN)/python -m pytest -m dask

# The tests marked `timing` (in `make test` too) on a machine made busy beside them: two CPU hogs
# and a loop starting processes (tests/load.py), so that a timing assumption that holds only on a
# quiet machine fails here. The load ends with the tests (or after 20 minutes, whatever happens).
# The Ray (Dask) runs of those tests stay in make test-ray (test-dask): an engine of its own
# beside the hogs would make this step measure the engine's start-up under load, not anypool's
# timing.
test-under-load: venv
	$(BIN)/python tests/load.py --seconds 1200 -- $(BIN)/python -m pytest -m "timing and not ray and not dask"

# The test suite under coverage.py, worker processes included, then the Ray backend's own tests
# (its contract runs stay in make test-ray: each pool starts Ray workers of its own, minutes in
# all) and the Dask backend's tests; fails below the figure in pyproject.toml
# ([tool.coverage.report] fail_under). About twice as long as make test.
coverage: venv
	rm -f .coverage .coverage.*
	$(BIN)/python -m coverage run -m pytest -q
	$(BIN)/python -m coverage run -m pytest -q -m ray tests/test_ray.py
	$(BIN)/python -m coverage run -m pytest -q -m dask
	$(BIN)/python -m coverage combine -q
	$(BIN)/python -m coverage report

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict src

# The soak and fuzz tests at full size: 1 000 000 calls through one pool on each backend, and
# many more random cancellation scenarios (about 15 minutes).
soak: venv
	ANYPOOL_SOAK_CALLS=1000000 ANYPOOL_FUZZ_ITERATIONS=200 ANYPOOL_FUZZ_EXAMPLES=100 \
		$(BIN)/python -m pytest -m soak -p no:randomly -q

# anypool against its peers, every scenario (about 17 minutes); writes docs/benchmarks.md and
# its plots. `make bench BENCH_OPTIONS=--quick` checks that it runs, in under a minute.
# Where Ray is installed, the full run ends with the Ray section (about 5 minutes more): anypool
# on Ray against Ray's own API, each starting a local Ray of its own. `make bench
# BENCH_OPTIONS='--only ray'` runs that section alone and rewrites that section of the page only;
# --quick leaves it out unless --only names it (`make test-ray` runs it quick).
# pip compiles the bytecode of a wheel it installs, as it did the peers'; the editable source
# tree here has none where PYTHONDONTWRITEBYTECODE is set, and each process (forkserver and
# spawned workers included) would compile anypool again on import: compile it first.
bench: venv
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m benchmarks $(BENCH_OPTIONS)

demo: venv
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage .coverage.*
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
