# Corral developer commands. Every target creates the virtual environment it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8420
# The dev extras include Playwright (browser tests, screenshots); it drives the system's
# Chromium (/usr/bin/chromium, from scripts/test-services.sh) and never downloads one.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: demo up test lint typecheck unit docs bench screenshots clean help

help:
	@echo "make demo   - start a demo cluster (server + 3 simulated-GPU agents + a workload)"
	@echo "make up     - start a server and one local agent (embedded default)"
	@echo "make test   - lint, type-check and run the whole test suite"
	@echo "make docs   - regenerate docs/cli.md and docs/openapi.json"
	@echo "make bench  - run the benchmarks (docs/performance.md), results in bench/results/"
	@echo "make screenshots - start the demo cluster and save the dashboard's pages to docs/screenshots/"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Corral needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(BIN)/corral demo --port $(PORT)

up: $(STAMP)
	$(BIN)/corral up --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	scripts/test-services.sh
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

docs: $(STAMP)
	$(BIN)/python scripts/gen_docs.py

bench: $(STAMP)
	$(BIN)/python -m bench

screenshots: $(STAMP)
	scripts/test-services.sh
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
