#!/usr/bin/env bash
# Refresh requirements/peers.txt: the exact versions, with hashes, of what `make bench-peers`
# installs into its own venv (.venv-peers) for benchmarks/bench_peers.py: everything of
# requirements/lock.txt at the same versions (it is a constraint) plus the `peers` extra
# (diffusers, transformers, muse-maskgit-pytorch) and their dependencies; torch is pinned
# ==2.13.0 in the Makefile and installed first, as for the main lock (scripts/lock.sh).
#
#   make lock-peers
#
# torchvision, which muse-maskgit-pytorch requires, is left out (an override whose marker
# never matches): no torchvision release installs beside torch 2.13.0's CPU wheel, and the
# benchmark builds muse's transformer and VQGanVAE without it (benchmarks/bench_peers.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
UV_VERSION=0.13.9
TORCH_WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0*.whl 2>/dev/null | head -n 1 || true)}
if [ -z "$TORCH_WHEEL" ] || [ ! -f "$TORCH_WHEEL" ]; then
  echo "lock-peers: set TORCH_WHEEL to a torch 2.13.0 CPU wheel file (its dependencies are locked)" >&2
  exit 2
fi
"$PY" -m pip install -q "uv==$UV_VERSION"
override=$(mktemp)
trap 'rm -f "$override"' EXIT
echo "torch @ file://$(realpath "$TORCH_WHEEL")" > "$override"
echo "torchvision ; sys_platform == 'never'" >> "$override"
"$PY" -m uv pip compile pyproject.toml --quiet \
  --extra dev --extra web --extra baselines --extra data --extra peers \
  --constraint requirements/lock.txt \
  --python-version 3.11 --generate-hashes --override "$override" --no-emit-package torch \
  --custom-compile-command "make lock-peers" -o requirements/peers.txt
echo "lock-peers: wrote requirements/peers.txt ($(grep -c '==' requirements/peers.txt) packages)"
