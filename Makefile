# Every target bootstraps .venv by itself, so a fresh clone needs nothing but python3 >= 3.10.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

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

# Processes, RPC, pools and remote hosts, each side by side with its peers in one run (about 5
# minutes; bench/remote.py runs against the test suite's sshd).
bench: $(STAMP)
	$(PY) bench/setup.py
	$(PY) bench/rpc_setup.py
	$(PY) bench/run.py
	$(PY) -m bench.fork_cost
	$(PY) bench/rpc.py
	$(PY) bench/pool.py
	$(PY) bench/remote.py

# Minutes of sustained load (processes, RPC calls, pool calls with workers killed), with fds,
# threads, zombies and RSS before and after; not part of `make test`.
soak: $(STAMP)
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
