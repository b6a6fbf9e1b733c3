# Development tasks. `make test` creates .venv on first use and reinstalls it whenever
# pyproject.toml changes; `make demo` does the same with a light .venv-demo of its own.
# Override the interpreter with `make PYTHON=python3.12 ...`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: venv test test-ray test-dask test-under-load test-pythons coverage lint soak bench demo docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test,dev,bench,ray,dask,docs]'
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

# The test suite under coverage.py, every Python process it starts included (workers, the fork
# server, Dask's workers; see [tool.coverage.run] in pyproject.toml), then the Ray backend's own tests
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

# The examples are type-checked as users' code: with the library's own types, under --strict.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict src examples

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
# --quick leaves it out unless --only names it (`make test-ray` runs it quick). The Dask section
# follows the same way where Dask is installed (about 8 minutes more; `--only dask`; `make
# test-dask` runs it quick).
# pip compiles the bytecode of a wheel it installs, as it did the peers'; the editable source
# tree here has none where PYTHONDONTWRITEBYTECODE is set, and each process (forkserver and
# spawned workers included) would compile anypool again on import: compile it first.
bench: venv
	$(BIN)/python -m compileall -q src
	$(BIN)/python -m benchmarks $(BENCH_OPTIONS)

# The demo in a venv of its own with only what it imports (anypool, and trio for its second
# half), so that `make demo` on a fresh machine takes seconds, not the full .venv's minutes.
DEMO_VENV := .venv-demo

$(DEMO_VENV)/.installed: pyproject.toml
	test -x $(DEMO_VENV)/bin/python || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -e . 'trio>=0.27'
	touch $@

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python examples/demo.py

# The documentation site, into site/ (open site/index.html): the pages of docs/ and an API
# reference from the docstrings (mkdocs.yml). --strict: a warning (a broken link or anchor, a
# docstring that does not parse) fails the build.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# The contract tests on the local backend (the modules marked usefixtures("contract_backend"),
# less the `timing` tests) on each other Python anypool supports, each in a .venv-3.X of its own
# with the test extra only; `make test` runs the whole suite on $(PYTHON) (python3: 3.11).
# `make test-python-3.13` runs one of them.
OTHER_PYTHONS := 3.10 3.12 3.13
CONTRACT_TESTS = $(shell grep -l 'usefixtures("contract_backend")' tests/test_*.py)
# python3.X that runs: the one on PATH, else pyenv's build (where PATH has pyenv's shim for it
# but pyenv's global version is another).
find_python = $(firstword $(foreach p,python$(1) $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/$(1).*/bin/python$(1)),$(shell $(p) -c '' 2>/dev/null && echo $(p))))

test-pythons: $(addprefix test-python-,$(OTHER_PYTHONS))

# (Kept between runs, not deleted as the intermediate files of a pattern rule.)
.PRECIOUS: .venv-%/.installed

test-python-%: .venv-%/.installed
	.venv-$*/bin/python -m pytest -q -m "not ray and not dask and not timing" $(CONTRACT_TESTS)

.venv-%/.installed: pyproject.toml
	test -x .venv-$*/bin/python || $(or $(call find_python,$*),$(error python$* not found)) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --upgrade pip
	.venv-$*/bin/python -m pip install -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) $(DEMO_VENV) .venv-3.* site build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage .coverage.*
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
