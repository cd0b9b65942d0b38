"""Issue #29 (reliability, round 3), training runs: no run folder overwritten by a new run, one
run per folder at a time (a lock), SIGTERM saves like Ctrl-C, `--resume` refuses a changed
config, a full disk names the file, and unreadable images in a training folder are skipped.

Real processes where a user meets them: the lock and SIGTERM tests run `python -m maskgit.cli`
subprocesses, the full-disk tests write to a real tmpfs (as root) or under a real file-size
limit (any user). The table of cases is docs/reliability.md ("Round 3: training runs").
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import test_hostile_inputs as hostile
from maskgit.checkpoint import load_state, save_model, save_state
from maskgit.cli import main
from maskgit.config import ConfigError, get_preset
from maskgit.data import load_folder, split_indices
from maskgit.run_folder import LOCK_FILE, RESUME_SAFE_KEYS
from maskgit.train import STATE_FILE, train_transformer
from test_hostile_inputs import CPU, assert_error, cli, train
from test_interrupt import (
    EPOCHS,
    Deadline,
    check_loadable,
    fork_cli,
    make_tokens,
    random_point,
    train_argv,
)

files = hostile.files  # the module's fixture: a tiny model, images, masks, tokens

torch.set_num_threads(1)

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) -> its sha256."""
    return {
        p.relative_to(folder).as_posix(): digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_stage(capsys, files, stage: str, out: Path, *extra):
    """`maskgit train` (transformer) or `maskgit train-tokenizer` on the tiny preset."""
    if stage == "transformer":
        return train(capsys, files, out, *extra)
    args = ["train-tokenizer", "--config", "tiny", "--data", files["many"], "--out", out]
    return cli(capsys, *args, "--no-progress", *extra, *CPU)


def step_of(run: Path) -> int:
    return load_state(run / STATE_FILE)["position"]["step"]


def cli_subprocess(argv: list[str], **kwargs) -> subprocess.Popen:
    """A real `python -m maskgit.cli ARGV` process (output piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "maskgit.cli", *map(str, argv)],
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def wait_for(path: Path, proc: subprocess.Popen, deadline: Deadline) -> None:
    """Wait until `path` exists (the process is training), failing if the process ended."""
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {path}: {out!r} {err!r}")
        deadline.left()
        time.sleep(0.05)


# --------------------------------------------------------------------------- 1: no overwrite


@pytest.mark.parametrize("stage", ["transformer", "tokenizer"])
def test_a_new_run_into_a_run_folder_is_refused(stage, files, tmp_path, capsys):
    steps = ("--set", f"{stage}_training.max_steps=1")
    run = tmp_path / "run"
    code, _, lines = run_stage(capsys, files, stage, run, *steps)
    assert code == 0, lines
    # an earlier, longer run's epoch file and a user's own file beside the run
    shutil.copy(run / f"{stage}.safetensors", run / f"{stage}-epoch009.safetensors")
    (run / "notes.txt").write_text("mine\n")
    before = snapshot(run)
    assert {STATE_FILE, "config.yaml", f"{stage}.safetensors"} <= set(before)

    # without --resume: refused, naming the folder and the ways out; nothing touched
    line = assert_error(run_stage(capsys, files, stage, run, *steps), 2, run, "--resume")
    assert "--out" in line and "--overwrite" in line, line
    assert snapshot(run) == before

    # --overwrite: a new run; the earlier run's files are gone, the user's file is kept
    code, _, lines = run_stage(capsys, files, stage, run, "--overwrite", *steps)
    assert code == 0, lines
    after = snapshot(run)
    assert (
        f"{stage}-epoch009.safetensors" not in after and after["notes.txt"] == before["notes.txt"]
    )
    assert step_of(run) == 1
    if stage == "transformer":  # one run's rows only: step 1 is logged once, not twice
        rows = (run / "metrics.csv").read_text().splitlines()
        assert (
            rows[0].startswith("step,") and sum(r.startswith("1,0,train,loss,") for r in rows) == 1
        )

    # --resume still continues the run; --resume with --overwrite is a usage error
    code, _, lines = run_stage(
        capsys, files, stage, run, "--resume", "--set", f"{stage}_training.max_steps=2"
    )
    assert code == 0, lines
    assert step_of(run) == 2
    with pytest.raises(SystemExit) as caught:
        main(
            [
                "train",
                "--tokens",
                str(files["tokens"]),
                "--out",
                str(run),
                "--resume",
                "--overwrite",
            ]
        )
    assert caught.value.code == 2

    # an empty folder, or one holding no run (only other files), is a fresh start
    for name, content in (("empty", None), ("other", "notes")):
        folder = tmp_path / name
        folder.mkdir()
        if content:
            (folder / "notes.txt").write_text(content)
        code, _, lines = run_stage(capsys, files, stage, folder, *steps)
        assert code == 0, lines
        assert not (folder / LOCK_FILE).exists()  # the lock goes with the run


# --------------------------------------------------------------------------- 2: one run per folder


def test_a_second_run_on_the_same_folder_fails_naming_the_holder(files, tmp_path, capsys):
    deadline = Deadline(240)
    run = tmp_path / "run"
    long = ("--set", "transformer_training.epochs=100000")
    argv = ["train", "--config", "tiny", "--tokens", files["tokens"], "--out", run]
    holder = cli_subprocess([*argv, "--no-progress", "--checkpoint-steps", "1", *long, *CPU])
    try:
        wait_for(run / STATE_FILE, holder, deadline)  # training, holding the folder
        one_step = ("--set", "transformer_training.max_steps=1")
        for extra in [("--resume",), ("--overwrite",), ()]:  # any second run on the folder
            result = train(capsys, files, run, *long, *one_step, *extra)
            line = assert_error(result, 1, run, f"process {holder.pid}")
            assert "in use" in line, line
            assert (run / STATE_FILE).is_file()  # --overwrite deleted nothing either
        deadline.say("second runs refused while the first trains")
        assert holder.poll() is None  # the holder never noticed
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=deadline.left())
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL left the lock file (naming the dead process) but not the lock: --resume runs
    assert (run / LOCK_FILE).read_text().split()[0] == str(holder.pid)
    step = check_loadable(run, 10**9, 0)
    result = train(
        capsys, files, run, "--resume", *long, "--set", f"transformer_training.max_steps={step + 1}"
    )
    assert result[0] == 0, result
    assert step_of(run) == step + 1
    assert not (run / LOCK_FILE).exists()
    deadline.say("resumed after SIGKILL")


# --------------------------------------------------------------------------- 5: SIGTERM


def test_sigterm_saves_like_ctrl_c(tmp_path):
    deadline = Deadline(150)
    tokens = make_tokens(tmp_path / "tokens")
    run = tmp_path / "run"
    latest = run / STATE_FILE
    with cli_subprocess(train_argv(tokens, run)) as proc:
        try:
            rng = random.Random(1)
            assert random_point(latest, None, lambda: proc.poll() is not None, rng, deadline)
            proc.send_signal(signal.SIGTERM)  # what `timeout`, `docker stop`, schedulers send
            out, err = proc.communicate(timeout=deadline.left())
        finally:
            proc.kill()
    out, err = out.decode(), err.decode()
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "maskgit: interrupted" in err and "Traceback" not in err, err
    saved = re.search(r"interrupted: saved (\S+) at step (\d+); continue with --resume", out)
    assert saved and Path(saved.group(1)) == latest, out
    total = EPOCHS * (len(split_indices([f"img{i}.png" for i in range(64)], 0.2)[0]) // 8)
    step = check_loadable(run, total, 0)
    assert step == int(saved.group(2)) and step < total
    assert not (run / LOCK_FILE).exists()
    deadline.say(f"SIGTERM: exit 130 at step {step}")
    assert main(train_argv(tokens, run, resume=True)) == 0
    assert step_of(run) == total


# --------------------------------------------------------------------------- 7: changed config


def test_resume_refuses_a_changed_config_and_allows_the_safe_keys(files, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, lines = train(capsys, files, run, "--set", "transformer_training.max_steps=1")
    assert code == 0, lines  # stopped mid-epoch (6 batches of 8 an epoch)
    before = snapshot(run)

    result = train(capsys, files, run, "--resume", "--set", "transformer_training.batch_size=16")
    line = assert_error(result, 2, run / "config.yaml", "transformer_training.batch_size 8 -> 16")
    assert "max_steps 1 -> 0" not in line, line  # not repeated, but allowed: not listed
    assert "--config" in line and "epochs" in line, line  # how to resume, what may change
    assert snapshot(run) == before  # config.yaml and the state untouched

    result = train(
        capsys,
        files,
        run,
        "--resume",
        "--set",
        "transformer_training.max_steps=1",
        "--set",
        "transformer.dim=64",
        "--set",
        "transformer_training.seed=7",
        "--set",
        "transformer_training.lr=0.5",
    )
    line = assert_error(result, 2, "transformer.dim 32 -> 64", "transformer_training.seed 0 -> 7")
    assert "transformer_training.lr 0.001 -> 0.5" in line, line
    assert snapshot(run) == before

    # the Python API refuses too
    preset = get_preset("tiny")
    preset.transformer_training.batch_size = 16
    tokens = torch.randint(0, 16, (64, 4, 4), generator=torch.Generator().manual_seed(0))
    names = [f"img{i}.png" for i in range(64)]
    with pytest.raises(ConfigError, match="batch_size 8 -> 16"):
        train_transformer(preset, tokens, names, run, resume=True, device="cpu", progress=False)
    assert snapshot(run) == before

    # what is safe may change: more epochs, a longer max_steps, the checkpoint frequency
    assert {"epochs", "max_steps", "save_every"} <= set(RESUME_SAFE_KEYS)
    safe = ("transformer_training.epochs=3", "transformer_training.max_steps=2")
    safe += ("transformer_training.save_every=2",)
    code, out, lines = train(
        capsys, files, run, "--resume", *(a for s in safe for a in ("--set", s))
    )
    assert code == 0, lines
    assert "transformer_training.epochs 2 -> 3" in out, out  # said, with what it changes
    assert step_of(run) == 2
    saved = yaml.safe_load((run / "config.yaml").read_text())["transformer_training"]
    assert (saved["epochs"], saved["max_steps"], saved["save_every"]) == (3, 2, 2)
    # the message's way: --config the run's own config.yaml
    code, _, lines = cli(
        capsys,
        "train",
        "--config",
        run / "config.yaml",
        "--tokens",
        files["tokens"],
        "--out",
        run,
        "--resume",
        "--no-progress",
        *CPU,
    )
    assert code == 0, lines


# --------------------------------------------------------------------------- 14a: disk full


def _tmpfs(folder: Path, size: str) -> bool:
    """Mount a tmpfs of `size` on `folder` (root only); False when that is not possible."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)])
    return done.returncode == 0


def _fill(folder: Path, leave: int) -> None:
    """Write a filler file until only about `leave` bytes are free on folder's file system."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    (folder / "filler").write_bytes(b"\0" * max(free - leave, 0))


def _with_file_size_limit(limit: int, argv: list[str], log: Path) -> int:
    """Run `maskgit ARGV` in a forked child whose files may not grow over `limit` bytes
    (RLIMIT_FSIZE: a write past it fails with EFBIG, as a full disk fails with ENOSPC)."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    _, status = os.waitpid(fork_cli(argv, log, limit_file_size), 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("fault", ["tmpfs-full", "file-size-limit"])
def test_a_full_disk_names_the_file_and_keeps_the_checkpoint(fault, files, tmp_path, capsys):
    disk = tmp_path / "disk"
    if fault == "tmpfs-full" and not _tmpfs(disk, "4m"):
        pytest.skip("mounting a tmpfs needs root")
    disk.mkdir(exist_ok=True)
    try:
        run = disk / "run"
        code, _, lines = train(capsys, files, run, "--set", "transformer_training.max_steps=1")
        assert code == 0, lines
        before = snapshot(run)
        state_size = (run / STATE_FILE).stat().st_size  # ~280 kB, the model file ~80 kB
        resume = ("--resume", "--set", "transformer_training.max_steps=2")
        if fault == "tmpfs-full":
            _fill(disk, leave=state_size // 2)
            code, _, lines = train(capsys, files, run, *resume)
            reason = os.strerror(errno.ENOSPC)  # No space left on device
        else:
            log = tmp_path / "child.log"
            argv = ["train", "--config", "tiny", "--tokens", str(files["tokens"]), "--out"]
            argv += [str(run), "--no-progress", *CPU, *resume]
            code = _with_file_size_limit(state_size // 2, argv, log)
            lines = [line for line in log.read_text().splitlines() if line.startswith("maskgit")]
            reason = os.strerror(errno.EFBIG)  # File too large
        assert code == 1, lines
        assert len(lines) == 1 and lines[0].startswith("maskgit: error: "), lines
        line = lines[0]
        assert f"{run / STATE_FILE}: " in line and reason in line, line
        assert "enforce fail" not in line and ".tmp" not in line, line
        after = snapshot(run)  # the previous checkpoint intact, no temporary file left
        assert after[STATE_FILE] == before[STATE_FILE] and step_of(run) == 1
        assert after["transformer.safetensors"] == before["transformer.safetensors"]
        assert not [name for name in after if name.endswith(".tmp")], after
    finally:
        if fault == "tmpfs-full":
            subprocess.run(["umount", str(disk)], check=True)


def test_model_and_state_writers_name_the_file_on_a_failed_write(tmp_path):
    """save_state (torch hides the OSError) and save_model (safetensors wraps it) raise an
    OSError naming the file being written, not torch's `unexpected pos` nor a temp name."""
    from maskgit.transformer import BidirectionalTransformer

    model = BidirectionalTransformer(get_preset("tiny").transformer)
    state = {"weights": model.state_dict()}
    for name, write in [
        ("latest.state.pt", lambda path: save_state(state, path)),
        ("transformer.safetensors", lambda path: save_model(model, path)),
    ]:
        path = tmp_path / name
        pid = os.fork()
        if pid == 0:  # the child: write under a 10 kB file-size limit, exit with what it got
            code = 9
            try:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, resource.RLIM_INFINITY))
                write(path)
                code = 0
            except OSError as exc:
                ok = exc.errno == errno.EFBIG and exc.filename == str(path)
                code = 3 if ok and ".tmp" not in str(exc) else 4
            except BaseException:
                code = 5
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3, name
        assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_ctrl_c_during_save_state_is_still_a_keyboard_interrupt(tmp_path):
    """save_state writes through a Python file object (to keep the OSError of a full disk),
    so a Ctrl-C can land inside torch.save: it must stay a KeyboardInterrupt (the training
    loop saves on it), not become torch's `unexpected pos` RuntimeError."""
    path = tmp_path / STATE_FILE
    save_state({"step": 1}, path)
    before = digest(path)
    state = {"big": torch.zeros(64 * 2**20 // 4)}  # 64 MB: many writes, tens of milliseconds

    def interrupt_once_writing() -> None:  # once torch.save has written its first bytes
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(tmp.stat().st_size for tmp in tmp_path.glob(f".{STATE_FILE}.*.tmp")):
                break
            time.sleep(0.0002)
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    thread = threading.Thread(target=interrupt_once_writing)
    try:
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            save_state(state, path)
            time.sleep(5)  # (the signal came after the save: it lands here)
    finally:
        thread.join()
        signal.signal(signal.SIGINT, previous)
    assert digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


# --------------------------------------------------------------------------- 14b: bad images


def _broken_images(folder: Path, good: Path) -> list[str]:
    """Unreadable files of every kind in `folder`; returns their names, sorted."""
    png = good.read_bytes()
    (folder / "a-zero.png").write_bytes(b"")
    (folder / "b-truncated.png").write_bytes(png[: len(png) // 2])
    corrupt = bytearray(png)
    corrupt[len(png) // 2 : len(png) // 2 + 40] = bytes(40)  # zeroed compressed pixel data
    (folder / "c-corrupt.png").write_bytes(bytes(corrupt))
    rng = np.random.default_rng(0)
    # read by PIL, refused by the reader (before: a ValueError that stopped the whole run)
    Image.fromarray((rng.random((16, 16)) * 255).astype(np.float32), "F").save(
        folder / "d-float.tif"
    )
    Image.fromarray(rng.integers(70_000, 10**6, (16, 16)).astype(np.int32), "I").save(
        folder / "e-int32.tif"
    )
    return ["a-zero.png", "b-truncated.png", "c-corrupt.png", "d-float.tif", "e-int32.tif"]


def test_unreadable_images_in_a_training_folder_are_skipped_and_named(files, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(files["many"], data)
    bad = _broken_images(data, files["good"] / "a.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, names = load_folder(data, 16, progress=False)
    assert sorted(names) == sorted(p.name for p in files["many"].iterdir())
    assert images.shape == (12, 3, 16, 16)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert f"skipped {len(bad)} unreadable image(s) of {len(bad) + 12}: " in message, message
    assert all(name in message for name in bad[:3]) and "2 more" in message, message

    # the run goes on with the readable images and says what it skipped, in one line
    out = tmp_path / "run"
    code, _, lines = cli(
        capsys,
        "train-tokenizer",
        "--config",
        "tiny",
        "--data",
        data,
        "--out",
        out,
        "--no-progress",
        "--set",
        "tokenizer_training.max_steps=1",
        *CPU,
    )
    assert code == 0, lines
    warned = [line for line in lines if line.startswith("maskgit: warning:")]
    assert len(warned) == 1 and bad[0] in warned[0] and str(data) in warned[0], lines
    assert step_of(out) == 1

    # none readable: one error naming the first file and why
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    for name in bad:
        shutil.copy(data / name, only_bad / name)
    with pytest.raises(ValueError, match=f"none of the {len(bad)} image files could be read"):
        load_folder(only_bad, 16, progress=False)
