"""Atomic file writes (a reader never sees half a file) and the guard that no run writes over
its inputs. Imports nothing of the package."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

TEMP_STEM_CHARS = 32  # a temporary name keeps at most this much of the final name


def _new_temp(path: Path) -> Path:
    """Create an empty `.NAME.<random>.tmp` beside `path` with the usual permissions; NAME is
    cut to its first TEMP_STEM_CHARS characters, so that any legal file name works.

    (tempfile.mkstemp would make it 0600, and os.replace keeps that mode: every saved model,
    state and PNG would be unreadable to other users; 0666 here is reduced by the umask.)
    An error names `path`, not the temporary name.
    """
    while True:
        tmp = path.parent / f".{path.name[:TEMP_STEM_CHARS]}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        return tmp


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync, then rename onto `path`: readers never see half a file.

    An OSError (a full disk, a file too large, no permission) names `path`, not the
    temporary file, and leaves no temporary file behind.
    """
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
    except OSError as exc:
        if exc.filename is not None and os.fspath(exc.filename) != os.fspath(tmp):
            raise  # about another file (one the writer read)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of `folder` (or its nearest existing
    parent) allows."""
    for place in (folder, *folder.parents):
        if place.is_dir():
            try:
                return os.pathconf(place, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def check_name_lengths(out: str | Path, written: Iterable[str | Path]) -> None:
    """Refuse (ValueError) a file of `written` (relative to `out`) whose name is longer than
    the file system allows, before anything is written."""
    out = Path(out)
    limit = _name_max(out)
    for name in written:
        for part in Path(name).parts:
            size = len(os.fsencode(part))
            if size > limit:
                raise ValueError(
                    f"{out / name}: file name too long ({size} bytes; the file system allows "
                    f"{limit}); shorten the input's name"
                )


def _same_path(a: Path, b: Path) -> bool:
    """The same file or folder, whatever the form of the paths (symlinks, `..`, hard links)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_no_overwrite(
    out: str | Path,
    written: Iterable[str | Path],
    inputs: Iterable[tuple[str, str | Path | None]],
) -> None:
    """Refuse (ValueError) a run that would write over something it reads.

    `out` is the output folder, `written` the paths (relative to `out`) the run will write,
    `inputs` (label, path) pairs of every file or folder it reads (None skipped). Refused:
    `out` being an input folder, and any written file being an input file, whatever the
    form of the paths (file, folder, symlink, `..`, hard link); also a written name longer
    than the file system allows (`check_name_lengths`). Nothing is written here.
    """
    out = Path(out)
    written = list(written)
    check_name_lengths(out, written)
    given = [(label, Path(path)) for label, path in inputs if path is not None]
    for label, path in given:
        if path.is_dir() and _same_path(out, path):
            raise ValueError(
                f"--out {out} is the {label} folder {path}: outputs would overwrite inputs; "
                "choose another folder"
            )
    files: dict[tuple[int, int], tuple[str, Path]] = {}  # (device, inode) -> input
    for label, path in given:
        if path.is_file():
            info = path.stat()  # follows symlinks: the file actually read
            files.setdefault((info.st_dev, info.st_ino), (label, path))
    if not files:
        return
    for name in written:
        target = out / name
        try:
            info = target.stat()  # through a symlink too: where the write would land
        except OSError:
            continue  # not there yet: writing it overwrites nothing
        if (info.st_dev, info.st_ino) in files:
            label, path = files[(info.st_dev, info.st_ino)]
            raise ValueError(
                f"--out {out}: {target} would overwrite the {label} {path}; choose another folder"
            )
