# Two commands on a fresh machine:
#   make demo   - set up .venv and run `maskgit demo` on the embedded default model (offline)
#   make test   - set up .venv (+ Chromium, FID weights when reachable), lint, run all tests
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint browser inception clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,web,baselines]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/maskgit demo

browser:
	bash scripts/ensure_chromium.sh

inception: install
	PYTHON=$(abspath $(PY)) bash scripts/get_inception.sh

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: install browser inception lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) maskgit-demo test-artifacts
