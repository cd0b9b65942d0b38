#!/usr/bin/env bash
# Refresh a lock file: the exact versions, with hashes, of what a venv of this project
# installs, except torch (pinned ==2.13.0 in the Makefile and installed first, so that a
# CPU or a CUDA build can be chosen per machine).
#
#   make lock         # requirements/lock.txt: what `make demo` and `make test` install
#   make lock-peers   # requirements/peers.txt: what `make bench-peers` installs into
#                     # .venv-peers: lock.txt at the same versions (a constraint) plus the
#                     # `peers` extra (diffusers, transformers, muse-maskgit-pytorch)
# Then run `make test` (the whole suite) before committing a lock.
#
# Locks are resolved by uv (`uv pip compile --generate-hashes`: seconds, pip-compatible
# output) for CPython 3.11 on Linux, against the dependencies of torch's CPU wheel: uv reads
# them from the wheel file in TORCH_WHEEL (default: the one in /opt/wheels), so no CUDA-only
# package enters a lock. For the peers, torchvision (which muse-maskgit-pytorch requires) is
# left out by an override whose marker never matches: no torchvision release installs beside
# torch 2.13.0's CPU wheel, and the benchmark builds muse's models without it.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-main}
PY=${PYTHON:-.venv/bin/python}
UV_VERSION=0.13.9
extras=(--extra dev --extra web --extra baselines --extra data)
case "$which" in
  main) name=lock; out=requirements/lock.txt; more=() ;;
  peers) name=lock-peers; out=requirements/peers.txt
    more=(--extra peers --constraint requirements/lock.txt) ;;
  *) echo "lock: unknown lock '$which' (expected main or peers)" >&2; exit 2 ;;
esac
TORCH_WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0*.whl 2>/dev/null | head -n 1 || true)}
if [ -z "$TORCH_WHEEL" ] || [ ! -f "$TORCH_WHEEL" ]; then
  echo "$name: set TORCH_WHEEL to a torch 2.13.0 CPU wheel file (its dependencies are locked)" >&2
  exit 2
fi
"$PY" -m pip install -q "uv==$UV_VERSION"
override=$(mktemp)
trap 'rm -f "$override"' EXIT
echo "torch @ file://$(realpath "$TORCH_WHEEL")" > "$override"
if [ "$which" = peers ]; then echo "torchvision ; sys_platform == 'never'" >> "$override"; fi
"$PY" -m uv pip compile pyproject.toml --quiet "${extras[@]}" "${more[@]}" \
  --python-version 3.11 --generate-hashes --override "$override" --no-emit-package torch \
  --custom-compile-command "make $name" -o "$out"
echo "$name: wrote $out ($(grep -c '==' "$out") packages)"
