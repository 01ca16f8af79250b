# voicepool — the two commands: `make dev` and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: dev test test-quick test-deps lint bench drills soak install install-dev lock clean frontend frontend-test frontend-if-npm frontend-types

# The web app (frontend/): npm ci when node_modules is missing or older than the
# lock file, and a build when frontend/dist is missing or older than the sources.
NPM ?= npm
WEB := frontend
WEB_DEPS := $(WEB)/node_modules/.installed-stamp
WEB_DIST := $(WEB)/dist/index.html
WEB_SRC := $(WEB)/index.html $(WEB)/vite.config.ts $(WEB)/tsconfig.json $(WEB)/package.json \
	$(shell find $(WEB)/src $(WEB)/public -type f 2>/dev/null)

# Installs come from the lock files (requirements/, hashed), then voicepool itself without
# dependencies: `make dev` what running needs (requirements/dev.txt), everything else the
# test and lint tools too (requirements/test.txt).
DEV_STAMP := $(VENV)/.installed-dev

define install_locked
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(1)
	$(BIN)/pip install --quiet --no-deps -e .
endef

$(STAMP): pyproject.toml requirements/test.txt
	$(call install_locked,requirements/test.txt)
	touch $(STAMP) $(DEV_STAMP)

$(DEV_STAMP): pyproject.toml requirements/dev.txt
	$(call install_locked,requirements/dev.txt)
	touch $(DEV_STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

## Remake the lock files (requirements/*.txt) from pyproject.toml, with uv (from PyPI).
UV_VERSION := 0.13.8
LOCK_SETS := worker server dev
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra test --universal --python-version 3.11 \
		--generate-hashes --quiet -o requirements/test.txt
	for set in $(LOCK_SETS); do \
		$(BIN)/uv pip compile pyproject.toml --extra $$set --universal --python-version 3.11 \
			--generate-hashes --quiet -c requirements/test.txt -o requirements/$$set.txt || exit 1; \
	done

$(WEB_DEPS): $(WEB)/package.json $(WEB)/package-lock.json
	@command -v $(NPM) >/dev/null 2>&1 || { echo "the web app needs Node.js (>= 22.14; 20.19 works with a warning) with npm" >&2; exit 1; }
	$(NPM) --prefix $(WEB) ci --no-audit --no-fund
	touch $@

$(WEB_DIST): $(WEB_DEPS) $(WEB_SRC)
	$(NPM) --prefix $(WEB) run build
	touch $@

## Build the web app into frontend/dist (served at / by the API).
frontend: $(WEB_DIST)

## The web app's API types (frontend/src/lib/api.gen.ts), made from the API's OpenAPI
## schema: run after changing a request or response shape (a test fails until you do).
frontend-types: install $(WEB_DEPS)
	$(BIN)/voicepool openapi > $(WEB)/openapi.json.tmp
	cd $(WEB) && node_modules/.bin/openapi-typescript openapi.json.tmp -o src/lib/api.gen.ts
	rm -f $(WEB)/openapi.json.tmp

## The web app's unit tests (Vitest).
frontend-test: $(WEB_DEPS)
	$(NPM) --prefix $(WEB) test

# For `make dev`: without Node the API still runs (with a web app built before, or none).
frontend-if-npm:
	@if command -v $(NPM) >/dev/null 2>&1; then $(MAKE) --no-print-directory frontend; \
	else echo "npm not found: not building the web app (install Node.js >= 20.19 for it)" >&2; fi

## Run the whole system on this machine (embedded Redis, SQLite, API, 2 workers);
## `make dev PORT=9000 WORKERS=3` changes the API port and the number of workers.
dev: install-dev frontend-if-npm
	$(BIN)/voicepool dev $(if $(PORT),--port $(PORT)) $(if $(WORKERS),--workers $(WORKERS))

## The whole test suite (lint, web app unit tests, unit, integration with real processes,
## the web app in headless Chromium). Two pytest processes, each taking whole files: most
## tests wait on real processes and timeouts rather than compute, so on 2 cores the suite
## took 10.4 minutes instead of 17.5. The slowest tests are listed at the end: the budget
## is ~15 minutes on 2 cores.
test: install test-deps lint frontend-test frontend
	$(BIN)/pytest -n 2 --dist loadfile --durations=20

## System packages the tests need (promtool, chromium), from Debian, when missing.
test-deps:
	ops/scripts/install-test-deps.sh

## The quick subset: everything but the slow end-to-end tests.
test-quick: install
	$(BIN)/pytest -n 2 --dist loadfile -m "not slow"

## Style and types: ruff, then mypy (strict on api, worker, shared and voicepool; see pyproject).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Benchmarks (about 45 minutes); results under ops/bench/results/ (Markdown and JSON).
## The API benchmark's load tool is Debian's wrk, the anchor's profiler py-spy; both are
## installed here when missing. The anchor
## (voicepool vs. Pipecat's own runner) also measures voicepool at BENCH_BEFORE, a before/after.
BENCH_BEFORE ?= f7ef3fa
bench: install
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	@test -x $(BIN)/py-spy || $(BIN)/pip install -q py-spy==0.4.3  # the anchor's profile of a burst
	$(BIN)/python ops/bench/anchor.py --before $(BENCH_BEFORE)
	$(BIN)/python ops/bench/start_trace.py --before $(BENCH_BEFORE)
	$(BIN)/python ops/bench/start_trace.py --burst 100 --before $(BENCH_BEFORE)
	$(BIN)/python ops/bench/take_at_claim.py
	$(BIN)/python ops/bench/dispatch.py
	$(BIN)/python ops/bench/events.py
	$(BIN)/python ops/bench/assistant_latency.py
	$(BIN)/python ops/bench/assistant_start.py
	$(BIN)/python ops/bench/model_socket.py
	$(BIN)/python ops/bench/http_parser.py
	$(BIN)/python ops/bench/vad_batch.py
	$(BIN)/python ops/bench/reaper_sweep.py
	$(BIN)/python ops/bench/density.py
	$(BIN)/python ops/bench/density_webrtc.py
	$(BIN)/python ops/bench/api_throughput.py

## Fault drills: a table of faults, what users saw, events lost (must be 0), recovery time;
## written to ops/drills/results/drills.md (about 10 minutes). The request-rate flood uses wrk.
## Then the continuity drill: calls that survive a client blip, a model drop, a worker kill
## and a drain, and the audio gap their callers heard (ops/drills/results/continuity.md).
drills: install
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python ops/drills/drills.py --json ops/drills/results/drills.json \
		--markdown ops/drills/results/drills.md
	$(BIN)/python ops/drills/continuity.py --json ops/drills/results/continuity.json \
		--markdown ops/drills/results/continuity.md

## Soak (30 minutes): session churn at 70 % of capacity; RSS slope, tasks, descriptors, keys.
soak: install
	$(BIN)/python ops/drills/soak.py --minutes 30

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info

## Autoscaling under a burst (about 3 minutes): the production ScaledObject's formula
## (ops/scale/keda_loop.py, with a real Prometheus) starting and draining real workers;
## results in ops/bench/results/autoscale.md. Debian's prometheus and kubectl when missing.
.PHONY: autoscale
autoscale: install
	@command -v prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq prometheus >/dev/null; }
	@command -v kubectl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null; }
	$(BIN)/python ops/bench/autoscale.py
