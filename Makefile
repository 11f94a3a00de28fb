# Every target bootstraps .venv by itself, so a fresh clone needs nothing but python3 >= 3.10.
PYTHON ?= python3
# bash, so that `make bench` keeps a bench's failure through `| tee` (set -o pipefail)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench plots soak docs dist clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The docs' and the bench's tools (pyproject extras `docs`, `bench`), on top of `dev`.
DOCS_STAMP := $(VENV)/.docs-installed
BENCH_STAMP := $(VENV)/.bench-installed

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,docs]'
	touch $(DOCS_STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(PY) -m ruff check src tests bench examples
	$(PY) -m ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest -q

test: lint typecheck unit

# Processes, RPC, pools and remote hosts, each side by side with its peers in one run (several
# minutes; bench/remote.py runs against the test suite's sshd), then the charts of docs/plots/
# from the results in bench/results/.
bench: $(BENCH_STAMP)
	$(PY) bench/setup.py
	$(PY) bench/rpc_setup.py
	$(PY) bench/run.py
	$(PY) -m bench.fork_cost
	mkdir -p bench/results
	set -o pipefail; $(PY) bench/rpc.py | tee bench/results/rpc.txt
	set -o pipefail; $(PY) bench/pool.py | tee bench/results/pool.txt
	$(PY) bench/remote.py
	$(PY) bench/memory.py
	$(PY) bench/joblib_bench.py
	$(PY) bench/plots.py

# The charts again from the last results (bench/results/), into docs/plots/.
plots: $(BENCH_STAMP)
	$(PY) bench/plots.py

# The documentation site, into site/ (warnings are errors, internal links and anchors checked).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --clean

# The wheel and sdist into dist/, checked by twine (tests/test_packaging.py does the same).
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation -o dist
	$(PY) -m twine check --strict dist/*

# Minutes of sustained load (processes, RPC calls, pool calls with workers killed), with fds,
# threads, zombies and RSS before and after; not part of `make test`.
soak: $(STAMP)
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache site dist
