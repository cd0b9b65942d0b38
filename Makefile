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

# $(call venv_from_lock,VENV,LOCK): create VENV if needed and install LOCK into it, exactly.
# pip runs quiet (-q); each step says in one line what it installs.
define venv_from_lock
	test -x $(1)/bin/python || python3 -m venv $(1)
	$(1)/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11) and "$(2) is for Python >= 3.11; use python3.11 -m venv $(1)")'
	@echo "== installing pip $(PIP_VERSION) into $(1) =="
	$(1)/bin/python -m pip install -q pip==$(PIP_VERSION)
	@echo "== installing torch 2.13.0 (the longest step: a ~200 MB CPU wheel, a CUDA build is several GB) =="
	$(1)/bin/python -m pip install -q torch==2.13.0
	@echo "== installing the $$(grep -c '==' $(2)) packages of $(2), hash-checked =="
	$(1)/bin/python -m pip install -q --require-hashes --no-deps -r $(2)
	@echo "== installing maskgit itself (editable) =="
	$(1)/bin/python -m pip install -q --no-deps -e .
endef

$(STAMP): pyproject.toml requirements/lock.txt
	$(call venv_from_lock,$(VENV),requirements/lock.txt)
	@echo "== checking the installed versions agree (pip check) =="
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/maskgit demo

browser:
	bash scripts/ensure_chromium.sh

inception: install
	@echo "== the FID Inception weights (~81 MB, fetched once into ~/.cache/maskgit) =="
	PYTHON=$(abspath $(PY)) bash scripts/get_inception.sh

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

test: install browser inception lint
	@echo "== running the tests (pytest) =="
	$(PY) -m pytest

lock:
	test -x $(PY) || python3 -m venv $(VENV)
	PYTHON=$(abspath $(PY)) bash scripts/lock.sh

PEERS_VENV ?= .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_STAMP := $(PEERS_VENV)/.installed
BENCH_ARGS ?=

# no `pip check` here: muse-maskgit-pytorch requires torchvision, left out on purpose
$(PEERS_STAMP): pyproject.toml requirements/peers.txt
	$(call venv_from_lock,$(PEERS_VENV),requirements/peers.txt)
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	$(PEERS_PY) benchmarks/bench_peers.py $(BENCH_ARGS)

lock-peers:
	test -x $(PY) || python3 -m venv $(VENV)
	PYTHON=$(abspath $(PY)) bash scripts/lock.sh peers

versions: install
	$(PY) -m pip list --format=freeze

clean:
	rm -rf $(VENV) $(PEERS_VENV) maskgit-demo test-artifacts
