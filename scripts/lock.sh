#!/usr/bin/env bash
# Refresh requirements/lock.txt: the exact versions, with hashes, of everything that
# `make demo` and `make test` install, except torch (pinned ==2.13.0 in the Makefile and
# installed first, so that a CPU or a CUDA build can be chosen per machine).
#
#   make lock            # then run `make test` (the whole suite) before committing the lock
#
# The lock is resolved by uv (`uv pip compile --generate-hashes`: seconds, pip-compatible
# output) for CPython 3.11 on Linux, against the dependencies of torch's CPU wheel: uv reads
# them from the wheel file in TORCH_WHEEL (default: the one in /opt/wheels), so no CUDA-only
# package enters the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
UV_VERSION=0.13.9
TORCH_WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0*.whl 2>/dev/null | head -n 1 || true)}
if [ -z "$TORCH_WHEEL" ] || [ ! -f "$TORCH_WHEEL" ]; then
  echo "lock: set TORCH_WHEEL to a torch 2.13.0 CPU wheel file (its dependencies are locked)" >&2
  exit 2
fi
"$PY" -m pip install -q "uv==$UV_VERSION"
override=$(mktemp)
trap 'rm -f "$override"' EXIT
echo "torch @ file://$(realpath "$TORCH_WHEEL")" > "$override"
"$PY" -m uv pip compile pyproject.toml --quiet \
  --extra dev --extra web --extra baselines --extra data \
  --python-version 3.11 --generate-hashes --override "$override" --no-emit-package torch \
  --custom-compile-command "make lock" -o requirements/lock.txt
echo "lock: wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) packages)"
