# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
HOST ?= 127.0.0.1
CONFIG ?=
STAMP := $(VENV)/.installed

.PHONY: install run test lint emulators clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/image-gateway serve $(if $(CONFIG),--config $(CONFIG)) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas adapters gateway

# All four provider emulators on 127.0.0.1:9101..9104, for the README's examples.
emulators: $(STAMP)
	$(BIN)/python -m tests.emulators all --base-port 9101

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
