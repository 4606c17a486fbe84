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
# What each target installs comes from the lock files in requirements/ (written by `make lock`), exact versions
# with their hashes: serve.txt (the package and its `local` extra: what `make run` needs), test.txt (serve + `dev`),
# bench.txt (test + `bench`). pip.conf's find-links supply the torch==2.13.0 CPU build these machines keep on disk.
PIP := $(BIN)/pip --quiet --quiet --disable-pip-version-check
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench
LITELLM_VENV ?= bench/.venv-litellm
# `make test` runs the suite on TEST_WORKERS processes (pytest-xdist), each test module whole on one of them
# (--dist loadscope: a module's gateways and servers start once), handed out in collection order, where
# tests/conftest.py puts the slowest modules first (--no-loadscope-reorder: xdist would otherwise hand out the
# modules with the most tests first, and a slow module of a few tests last); TEST_WORKERS=0 runs it in this process.
# The 25 slowest steps are printed at the end (--durations=25). See docs/testing.md.
TEST_WORKERS ?= 4
PYTEST_PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)
# One OpenMP thread per torch in a worker: four workers' spinning thread pools on two cores starve each other.
PYTEST_ENV = $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1})
# (Defined before any rule names them: make expands a rule's prerequisites as it reads the rule.)
LITELLM_SDK := $(LITELLM_VENV)/.installed-sdk
LITELLM_PROXY := $(LITELLM_VENV)/.installed-proxy
# More options for `make bench` / `make bench-quick` (python -m bench.proxy --help), e.g. BENCH_ARGS=--compare-dispatch.
BENCH_ARGS ?=

.PHONY: install run test lint lock emulators soak bench bench-quick bench-servers bench-portkey bench-local bench-speed bench-gpu clean

# One lock file into the virtualenv, then the project itself (no dependency resolution at all).
define install_lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --require-hashes --no-deps -r $(1)
	$(PIP) install --no-deps --no-build-isolation -e .
endef

$(SERVE_STAMP): requirements/serve.txt pyproject.toml
	$(call install_lock,requirements/serve.txt)
	touch $@

$(STAMP): requirements/test.txt pyproject.toml
	$(call install_lock,requirements/test.txt)
	@# The console's browser tests drive Debian's Chromium (no `playwright install` download).
	test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || (apt-get update -qq && apt-get install -y -qq chromium) || true
	@test -x /usr/bin/chromium || echo "note: /usr/bin/chromium is missing (apt-get install chromium): tests/console will fail"
	@# The soak's load balancer and Prometheus (promtool tests the alert rules; the console's chart tests scrape with it): Debian's packages.
	command -v haproxy >/dev/null && command -v prometheus >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy prometheus) || true
	@command -v promtool >/dev/null || echo "note: haproxy/prometheus are missing (apt-get install haproxy prometheus): tests/soak and tests/deploy/test_alert_rules.py will fail"
	touch $@ $(SERVE_STAMP)

# The JS clients of the suite (the official openai SDK, the Vercel AI SDK), at the versions the lock file pins.
JS_SDK := tests/js/node_modules/.package-lock.json
$(JS_SDK): tests/js/package.json tests/js/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix tests/js

# Portkey's open-source gateway, an OpenAI-compatible server the suite puts behind a `kind: openai` provider
# (tests/integration/test_portkey_upstream.py), at the version its lock file pins.
PORTKEY_TESTS := tests/portkey/node_modules/.package-lock.json
$(PORTKEY_TESTS): tests/portkey/package.json tests/portkey/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix tests/portkey

# Re-resolve every lock file to the newest versions pyproject.toml allows, and print what changed.
# Run it on purpose (a dependency to move, a new one declared), then `make test`, and commit requirements/ with it.
# KEEP=1: only what a change to pyproject.toml needs (a dependency added or removed); the rest stays as locked.
lock:
	$(PYTHON) requirements/lock.py $(if $(KEEP),--keep)

install: $(STAMP) $(JS_SDK) $(PORTKEY_TESTS) $(LITELLM_SDK)

run: $(SERVE_STAMP)
	$(EMULATOR_PORTS) $(BIN)/image-gateway serve $(if $(CONFIG),--config $(CONFIG)) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

test: $(STAMP) $(JS_SDK) $(PORTKEY_TESTS) $(LITELLM_SDK)
	$(PYTEST_ENV) $(BIN)/python -m pytest -q $(PYTEST_PARALLEL) --durations=25

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy schemas adapters gateway local_backend bench soak

# The provider emulators on 127.0.0.1:9101..9105 (EMULATOR_PORT moves them; the fifth is OpenAI's API), for the README's examples.
emulators: $(SERVE_STAMP)
	$(BIN)/python -m tests.emulators all --base-port $(EMULATOR_PORT)

# The production topology on one machine (HAProxy, three replicas, Redis with AOF, SeaweedFS, two workers,
# the emulators, Prometheus) under mixed traffic and scheduled faults, for DURATION seconds; prints one summary
# and writes it to var/soak/<time>/summary.md (docs/operations.md, "Soak").
DURATION ?= 600
soak: $(STAMP)
	command -v haproxy >/dev/null && command -v prometheus >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy prometheus)
	$(BIN)/python -m soak --duration $(DURATION)

# LiteLLM lives in a virtualenv of its own (it pins versions of its own): its SDK for the suite
# (requirements/litellm.txt), its proxy on top for `make bench` (requirements/litellm-proxy.txt).
$(LITELLM_SDK): requirements/litellm.txt
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip --quiet --quiet --disable-pip-version-check install --require-hashes --no-deps -r $<
	touch $@

$(LITELLM_PROXY): requirements/litellm-proxy.txt $(LITELLM_SDK)
	$(LITELLM_VENV)/bin/pip --quiet --quiet --disable-pip-version-check install --require-hashes --no-deps -r $<
	touch $@

$(BENCH_STAMP): requirements/bench.txt pyproject.toml
	$(call install_lock,requirements/bench.txt)
	touch $@ $(STAMP) $(SERVE_STAMP)

# The gateway against a bare emulator and LiteLLM's proxy; writes docs/benchmarks.md.
bench: $(BENCH_STAMP) $(LITELLM_PROXY)
	$(BIN)/python -m bench.proxy --litellm-python $(LITELLM_VENV)/bin/python --py-spy $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP) $(LITELLM_PROXY)
	$(BIN)/python -m bench.proxy --quick --litellm-python $(LITELLM_VENV)/bin/python $(BENCH_ARGS)

# uvicorn (uvloop+httptools, asyncio+h11), Granian, and two processes, serving the same gateway.
bench-servers: $(BENCH_STAMP)
	$(BIN)/python -m bench.servers

# Portkey's open-source gateway (Node.js, from npm into bench/.portkey) against the same emulator.
PORTKEY_VERSION ?= 1.15.2
bench/.portkey/node_modules/@portkey-ai/gateway/package.json:
	npm install --silent --no-audit --no-fund --prefix bench/.portkey @portkey-ai/gateway@$(PORTKEY_VERSION)

bench-portkey: $(BENCH_STAMP) bench/.portkey/node_modules/@portkey-ai/gateway/package.json
	$(BIN)/python -m bench.portkey

# The local diffusers backend: images/s at concurrency 1, 4, 16 against a bare pipeline loop.
bench-local: $(SERVE_STAMP)
	$(BIN)/python -m bench.local

# What each speed option of a local model buys, and the pixel budget per batch (bench/speed.py; ARGS=--path ...).
bench-speed: $(SERVE_STAMP)
	$(BIN)/python -m bench.speed $(ARGS)

# FLUX.1-schnell and SDXL of real size on one GPU, in 8 minutes (bench/gpu.py; DEVELOPERS.md says how to ask for
# a GPU). OUT=folder for the table and the figures; ARGS="--device cpu --tiny" tries it on the CPU. No install
# here: a lent GPU machine has its own torch, and bench/gpu.sh installs the wheels carried in .whl.
OUT ?=
BENCH_GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
bench-gpu:
	@test -n "$(OUT)" || { echo "usage: make bench-gpu OUT=folder [ARGS=...]"; exit 2; }
	BENCH_GPU_PYTHON=$(BENCH_GPU_PYTHON) sh bench/gpu.sh $(OUT) $(ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
