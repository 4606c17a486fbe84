# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Where `make run` listens: HOST and PORT when given (PORT=9000 make run), else the config's server.host/port.
HOST ?=
PORT ?=
CONFIG ?=
# `make emulators` listens on EMULATOR_PORT..EMULATOR_PORT+3 (Melious, Nebul, Pomelo, NebulaBlock);
# examples/emulators.yaml reads MELIOUS_PORT..NEBULABLOCK_PORT, which `make run` sets from EMULATOR_PORT,
# so `EMULATOR_PORT=9201 make emulators` and `EMULATOR_PORT=9201 CONFIG=examples/emulators.yaml make run`
# go together. They are set for `make run` alone: exported, they would reach every recipe (the test suite too).
EMULATOR_PORT ?= 9101
EMULATOR_PORTS = MELIOUS_PORT=$(EMULATOR_PORT) NEBUL_PORT=$$(($(EMULATOR_PORT) + 1)) \
	POMELO_PORT=$$(($(EMULATOR_PORT) + 2)) NEBULABLOCK_PORT=$$(($(EMULATOR_PORT) + 3))
STAMP := $(VENV)/.installed
# Optional: an index for hosts where plain torch==2.13.0 would resolve to a CUDA build.
TORCH_INDEX ?=
LITELLM_VENV ?= bench/.venv-litellm

.PHONY: install run test lint emulators bench bench-quick bench-servers bench-portkey bench-local clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,local]' $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	@# The console's browser tests drive Debian's Chromium (no `playwright install` download).
	test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || (apt-get update -qq && apt-get install -y -qq chromium) || true
	@test -x /usr/bin/chromium || echo "note: /usr/bin/chromium is missing (apt-get install chromium): tests/console will fail"
	touch $(STAMP)

# The official openai JS SDK for tests/integration/test_streams.py, at the version the lock file pins.
JS_SDK := tests/js/node_modules/.package-lock.json
$(JS_SDK): tests/js/package.json tests/js/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix tests/js

install: $(STAMP) $(JS_SDK)

run: $(STAMP)
	$(EMULATOR_PORTS) $(BIN)/image-gateway serve $(if $(CONFIG),--config $(CONFIG)) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: $(STAMP) $(JS_SDK)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas adapters gateway local_backend bench

# All four provider emulators on 127.0.0.1:9101..9104 (EMULATOR_PORT moves them), for the README's examples.
emulators: $(STAMP)
	$(BIN)/python -m tests.emulators all --base-port $(EMULATOR_PORT)

# LiteLLM's proxy lives in its own virtualenv: it pins versions of its own.
$(LITELLM_VENV)/bin/python:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install --quiet --upgrade pip
	$(LITELLM_VENV)/bin/pip install --quiet 'litellm[proxy]'

$(VENV)/.bench-installed: $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

# The gateway against a bare emulator and LiteLLM's proxy; writes docs/benchmarks.md.
bench: $(VENV)/.bench-installed $(LITELLM_VENV)/bin/python
	$(BIN)/python -m bench.proxy --litellm-python $(LITELLM_VENV)/bin/python --py-spy

bench-quick: $(VENV)/.bench-installed $(LITELLM_VENV)/bin/python
	$(BIN)/python -m bench.proxy --quick --litellm-python $(LITELLM_VENV)/bin/python

# uvicorn (uvloop+httptools, asyncio+h11), Granian, and two processes, serving the same gateway.
bench-servers: $(VENV)/.bench-installed
	$(BIN)/python -m bench.servers

# Portkey's open-source gateway (Node.js, from npm into bench/.portkey) against the same emulator.
PORTKEY_VERSION ?= 1.15.2
bench/.portkey/node_modules/@portkey-ai/gateway/package.json:
	npm install --silent --no-audit --no-fund --prefix bench/.portkey @portkey-ai/gateway@$(PORTKEY_VERSION)

bench-portkey: $(VENV)/.bench-installed bench/.portkey/node_modules/@portkey-ai/gateway/package.json
	$(BIN)/python -m bench.portkey

# The local diffusers backend: images/s at concurrency 1, 4, 16 against a bare pipeline loop.
bench-local: $(STAMP)
	$(BIN)/python -m bench.local

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
