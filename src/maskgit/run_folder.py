"""A training run's folder: one run per folder, one process at a time, one config per run.

- A new run refuses a folder that holds a run (its `latest.state.pt`, `config.yaml`, metrics
  or model files: `run_files`); `--resume` continues it, `--overwrite` deletes those files
  first (`clear_run`), another `--out` leaves it alone.
- A running run holds an advisory lock on `<out>/.lock` (fcntl.flock, `RunLock`) with its pid
  inside; another process refuses the folder naming that pid. The kernel drops the lock when
  the process ends, SIGKILL included, so a stale `.lock` file never blocks a `--resume`.
- `--resume` compares the config with the run's `config.yaml`: only RESUME_SAFE_KEYS may change.

Nothing here writes before the run's checks have passed. Imports config only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import yaml

from maskgit.config import ConfigError, Preset, to_dict

STATE_FILE = "latest.state.pt"
CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"  # held while a run trains; holds "<pid> <host>"
# Keys of the trained stage's `<stage>_training` section that may change on --resume:
# when the run ends (epochs, max_steps; the learning rate's cosine then stretches to the new
# length), how often it saves (save_every), and how a step is computed without changing what
# it means (grad_accum: the same global batch and data order, only the masks drawn from then
# on differ; compile). Any other change (batch size, data split, model, learning-rate schedule,
# seed, losses, masking, the other sections) would reinterpret the saved position or weights.
# decay_start: a wsd schedule's decay is set in its last leg; the steps before it were at the
# held lr whatever its value (train.lr_at), so the saved position keeps its meaning.
RESUME_SAFE_KEYS = ("epochs", "max_steps", "save_every", "grad_accum", "compile", "decay_start")
# What a run of `{stage}` writes into its folder (globs relative to it)
RUN_FILE_PATTERNS = (
    STATE_FILE,
    CONFIG_FILE,
    "metrics.csv",
    "{stage}.safetensors",
    "{stage}-best.safetensors",
    "{stage}-epoch[0-9][0-9][0-9]*.safetensors",
    "samples/recon-epoch[0-9][0-9][0-9]*.png",
)
UNLOCKABLE = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # file systems without flock


class RunFolderError(ValueError):
    """The run folder holds another run: a new run there would replace it."""


class FolderInUseError(RuntimeError):
    """Another process trains into the run folder (its lock is held)."""


def run_files(out: str | Path, stage: str) -> list[Path]:
    """The files of a `stage` run ("tokenizer" or "transformer") in folder `out`."""
    out = Path(out)
    found = {
        path for pattern in RUN_FILE_PATTERNS for path in out.glob(pattern.format(stage=stage))
    }
    return sorted(path for path in found if path.is_file())


def clear_run(out: str | Path, stage: str) -> None:
    """Delete the files of an earlier `stage` run in `out` (for `--overwrite`); other files
    in the folder stay."""
    for path in run_files(out, stage):
        path.unlink()


def check_run_folder(
    out: str | Path,
    stage: str,
    *,
    preset: Preset | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """Refuse a run that would spoil the run in `out` (reads only, writes nothing).

    FolderInUseError: another process holds the folder's lock (checked on the main process
    only; under torchrun the other ranks never lock). RunFolderError: `out` holds a run and
    neither `resume` nor `overwrite` is set. ConfigError: `resume` with a config that differs
    from the run's `config.yaml` in a key not in RESUME_SAFE_KEYS. Returns the allowed changes
    on resume as "key old -> new".
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite: choose one")
    if int(os.environ.get("RANK", "0")) == 0:
        _check_not_locked(out)
    if resume:
        return config_changes(out, stage, preset)
    found = run_files(out, stage)
    if found and not overwrite:
        names = ", ".join(path.relative_to(out).as_posix() for path in found[:4])
        raise RunFolderError(
            f"--out {out} already holds a {stage} run ({names}{', ...' if len(found) > 4 else ''})"
            ": continue it with --resume, train into another --out, or replace it with "
            "--overwrite (deletes that run's files)"
        )
    return []


def config_changes(out: Path, stage: str, preset: Preset | None) -> list[str]:
    """The changes from the run's config.yaml to `preset` that --resume allows ("key old ->
    new"); ConfigError listing every other change. Nothing to compare (no preset, a folder
    without config.yaml): no change."""
    saved_path = out / CONFIG_FILE
    if preset is None or not saved_path.is_file():
        return []
    try:
        saved = yaml.safe_load(saved_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"--resume: {saved_path}: unreadable ({exc})") from exc
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {saved_path}: expected a mapping of sections")
    new = yaml.safe_load(yaml.safe_dump(to_dict(preset)))  # as config.yaml holds it
    section = f"{stage}_training"
    allowed, refused = [], []
    for name, values in new.items():
        old_values = saved.get(name)
        if not isinstance(old_values, dict):
            continue
        for key, value in values.items():
            if key not in old_values or old_values[key] == value:
                continue  # (a key newer than the run's config: nothing to compare with)
            change = f"{name}.{key} {_show(old_values[key])} -> {_show(value)}"
            (allowed if name == section and key in RESUME_SAFE_KEYS else refused).append(change)
    if refused:
        raise ConfigError(
            f"--resume: the run in {out} was trained with another config than this one "
            f"({', '.join(refused)}; see {saved_path}): resuming would reinterpret its saved "
            f"position and weights. Resume with --config {saved_path} (--set may change only "
            f"{section}.{{{','.join(RESUME_SAFE_KEYS)}}}), or start a new run with another --out"
        )
    return allowed


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _holder(fd: int) -> str:
    """Who holds a lock file: "process PID on HOST" from its text."""
    os.lseek(fd, 0, os.SEEK_SET)
    words = os.read(fd, 256).decode(errors="replace").split()
    if not words:
        return "another process"
    return f"process {words[0]}" + (f" on {words[1]}" if len(words) > 1 else "")


def _in_use(out: Path, holder: str) -> str:
    return (
        f"--out {out} is in use by another training run ({holder}, see {out / LOCK_FILE}): "
        "wait for it to end, or train into another --out"
    )


def _check_not_locked(out: Path) -> None:
    """FolderInUseError when a live process holds `out`'s lock (a shared lock is tried and
    dropped at once; a lock file left by a killed process is no lock)."""
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return  # no lock file: no run
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderInUseError(_in_use(out, _holder(fd))) from None
    except OSError as exc:
        if exc.errno not in UNLOCKABLE:
            raise
    finally:
        os.close(fd)


class RunLock:
    """The advisory lock of a run folder, held from `acquire` to `release` (or the process's
    end: the kernel drops it, so a SIGKILL leaves a stale file, never a stale lock)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Create the folder and lock it; FolderInUseError naming the holder's pid when held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise FolderInUseError(_in_use(self.path.parent, holder)) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno not in UNLOCKABLE:
                    raise
                warnings.warn(
                    f"{self.path}: this file system cannot lock ({exc.strerror}); nothing stops "
                    "a second run on this folder",
                    stacklevel=2,
                )
                return
            if self._still_the_file(fd):
                break
            os.close(fd)  # its holder released and deleted it meanwhile: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd

    def _still_the_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        """Delete the lock file, then unlock (a process waiting on the deleted file retries)."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
