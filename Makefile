# Task runner. CI calls `.ci/run`, which runs the same commands as `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint format typecheck bench demo clean

$(PY):
	python3 -m venv $(VENV)

install: $(PY)
	$(VENV)/bin/pip install -q -e '.[test]'

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check mercato tests bench
	$(VENV)/bin/ruff format --check mercato tests bench

format: install
	$(VENV)/bin/ruff format mercato tests bench
	$(VENV)/bin/ruff check --fix mercato tests bench

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/collector_throughput.py

demo: install
	$(VENV)/bin/mercato demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis mercato-demo
