# Two commands on a fresh machine:
#   make demo   - set up .venv and run `maskgit demo` on the embedded default model (offline)
#   make test   - set up .venv (+ Chromium, FID weights when reachable), lint, run all tests
# Both install the exact versions of requirements/lock.txt (hash-checked); `make lock`
# refreshes it (then run `make test` before committing it).
#   make bench-peers - maskgit against diffusers' aMUSEd and muse-maskgit-pytorch
#                      (benchmarks/bench_peers.py) in its own venv, .venv-peers, installed
#                      from requirements/peers.txt (`make lock-peers` refreshes it); `make
#                      install` and `make test` never install the peers. BENCH_ARGS=...
#                      passes options, e.g. make bench-peers BENCH_ARGS="--rounds 5"
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3

.PHONY: install demo test lint browser inception lock lock-peers bench-peers versions clean

$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "requirements/lock.txt is for Python >= 3.11; use python3.11 -m venv $(VENV)")'
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/maskgit demo

browser:
	bash scripts/ensure_chromium.sh

inception: install
	PYTHON=$(abspath $(PY)) bash scripts/get_inception.sh

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

test: install browser inception lint
	$(PY) -m pytest

lock:
	test -x $(PY) || python3 -m venv $(VENV)
	PYTHON=$(abspath $(PY)) bash scripts/lock.sh

PEERS_VENV ?= .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_STAMP := $(PEERS_VENV)/.installed
BENCH_ARGS ?=

$(PEERS_STAMP): pyproject.toml requirements/peers.txt
	test -x $(PEERS_PY) || python3 -m venv $(PEERS_VENV)
	$(PEERS_PY) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "requirements/peers.txt is for Python >= 3.11; use python3.11 -m venv $(PEERS_VENV)")'
	$(PEERS_PY) -m pip install -q pip==$(PIP_VERSION)
	$(PEERS_PY) -m pip install -q torch==2.13.0
	$(PEERS_PY) -m pip install -q --require-hashes --no-deps -r requirements/peers.txt
	$(PEERS_PY) -m pip install -q --no-deps -e .
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	$(PEERS_PY) benchmarks/bench_peers.py $(BENCH_ARGS)

lock-peers:
	test -x $(PY) || python3 -m venv $(VENV)
	PYTHON=$(abspath $(PY)) bash scripts/lock_peers.sh

versions: install
	$(PY) -m pip list --format=freeze

clean:
	rm -rf $(VENV) $(PEERS_VENV) maskgit-demo test-artifacts
