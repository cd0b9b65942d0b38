"""Atomic file writes: a reader never sees half a file. Imports nothing of the package."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def _new_temp(path: Path) -> Path:
    """Create an empty `.NAME.<random>.tmp` beside `path` with the usual permissions.

    (tempfile.mkstemp would make it 0600, and os.replace keeps that mode: every saved model,
    state and PNG would be unreadable to other users; 0666 here is reduced by the umask.)
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync, then rename onto `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        mode = tmp.stat().st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)  # a writer may have replaced the file (safetensors makes it 0600)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
