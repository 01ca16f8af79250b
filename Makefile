# voicepool — the two commands: `make dev` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: dev test test-quick test-deps lint bench drills install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Run the whole system on this machine (embedded Redis, SQLite, API, 2 workers).
dev: install
	$(BIN)/voicepool dev

## The whole test suite (lint, unit, integration with real processes).
test: install test-deps lint
	$(BIN)/pytest

## System packages the tests need (promtool), from Debian, when missing.
test-deps:
	ops/scripts/install-test-deps.sh

## The quick subset: everything but the slow end-to-end tests.
test-quick: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Benchmarks; results under ops/bench/results/.
bench: install
	$(BIN)/python ops/bench/dispatch.py

## Fault drills: a table of faults, what users saw, events lost (must be 0), recovery time.
drills: install
	$(BIN)/python ops/drills/drills.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
