"""Interrupted training loses nothing: `maskgit train --checkpoint-steps 1` is stopped by Ctrl-C
(SIGINT) and killed (SIGKILL) at seeded random points, one kill timed while `latest.state.pt`
is being written; after each stop `latest.state.pt` and every `*.safetensors` of the run load,
and `--resume` until done ends exactly where an uninterrupted run ends (same step, same
weights).

The Ctrl-C run is a real `python -m maskgit.cli` process. The SIGKILL runs are forks of this
process calling `maskgit.cli.main(argv)` (the same code, minus 5-30 s of `import torch` per
process on a busy 2-core machine, which would also blur the random kill times).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskgit.checkpoint import load_model, load_state
from maskgit.cli import main
from maskgit.data import save_tokens, split_indices
from maskgit.train import STATE_FILE

torch.set_num_threads(1)

EPOCHS = 3
DEADLINE_S = 150.0  # the whole test
TMP_PREFIX = f".{STATE_FILE}."  # atomic_write's temporary file: .latest.state.pt.<random>.tmp


class Deadline:
    def __init__(self, seconds: float):
        self.start = time.monotonic()
        self.end = self.start + seconds

    def say(self, what: str) -> None:
        print(f"{time.monotonic() - self.start:6.1f} s  {what}", flush=True)

    def left(self) -> float:
        left = self.end - time.monotonic()
        assert left > 0, f"the test ran over its {DEADLINE_S:.0f} s budget"
        return left


def make_tokens(folder: Path) -> Path:
    """64 random 4x4 token grids over a codebook of 16 (the tiny preset)."""
    tokens = torch.randint(0, 16, (64, 4, 4), generator=torch.Generator().manual_seed(0))
    save_tokens(
        folder, tokens, [f"img{i}.png" for i in range(64)], {"codebook_size": 16, "grid": 4}
    )
    return folder


def train_argv(tokens: Path, run: Path, resume: bool = False, every_step: bool = True) -> list[str]:
    argv = ["train", "--config", "tiny", "--tokens", str(tokens), "--out", str(run)]
    argv += ["--checkpoint-steps", "1"] if every_step else []
    argv += ["--no-progress", "--device", "cpu", "--set", f"transformer_training.epochs={EPOCHS}"]
    return argv + (["--resume"] if resume else [])


def fork_cli(argv: list[str], log: Path) -> int:
    """Run `maskgit ARGV` in a forked child (output appended to `log`); returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child: exits with main()'s code, never returns into pytest
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            signal.signal(signal.SIGINT, signal.default_int_handler)
            code = main(argv)
        finally:
            try:
                sys.stdout.flush()
            finally:
                os._exit(code)
    return pid


def poll(pid: int) -> int | None:
    """The exit code of child `pid` (-N when killed by signal N), or None while it runs."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def wait(pid: int, deadline: Deadline) -> int:
    while (code := poll(pid)) is None:
        if deadline.end < time.monotonic():
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child {pid} ran over the test's budget")
        time.sleep(0.01)
    return code


def version(path: Path) -> tuple[int, int] | None:
    """Changes whenever `path` is replaced (atomic_write renames a new file onto it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def writing_state(run: Path) -> bool:
    """Whether a temporary `latest.state.pt` is on disk right now (a save in progress)."""
    with os.scandir(run) as entries:
        return any(e.name.startswith(TMP_PREFIX) and e.name.endswith(".tmp") for e in entries)


def check_loadable(run: Path, total: int, previous_step: int) -> int:
    """`latest` and every model file load; the step never goes back. -> the step."""
    state = load_state(run / STATE_FILE)
    step = state["position"]["step"]
    assert previous_step <= step <= total, (previous_step, step, total)
    for path in sorted(run.glob("*.safetensors")):
        load_model(path, "transformer")
    assert load_model(run / "transformer.safetensors", "transformer") is not None
    return step


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
def test_kill_ctrl_c_and_resume_lose_nothing(tmp_path):
    deadline = Deadline(DEADLINE_S)
    rng = random.Random(0)
    tokens = make_tokens(tmp_path / "tokens")
    log = tmp_path / "children.log"

    # the uninterrupted reference run (same code path, in a fork)
    reference = tmp_path / "reference"
    started = time.monotonic()
    argv = train_argv(tokens, reference, every_step=False)
    assert wait(fork_cli(argv, log), deadline) == 0, log.read_text()
    ref_state = load_state(reference / STATE_FILE)
    total = ref_state["position"]["step"]
    train_items = len(split_indices([f"img{i}.png" for i in range(64)], 0.2)[0])
    assert total == EPOCHS * (train_items // 8)  # the tiny preset: batches of 8, 20 % held out
    step_time = (time.monotonic() - started) / total
    deadline.say(f"reference run: {total} steps, {step_time * 1000:.0f} ms a step")

    # 1. Ctrl-C in a real `maskgit` process, once training is under way
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "maskgit.cli"]
    with subprocess.Popen(
        cli + train_argv(tokens, run), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            while not (run / STATE_FILE).exists() and proc.poll() is None:
                deadline.left()
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 2) * step_time)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=deadline.left())
        finally:
            proc.kill()
    out, err = out.decode(), err.decode()
    assert proc.returncode == 130, (out, err)
    assert "maskgit: interrupted" in err and "Traceback" not in err, err
    saved = re.search(r"interrupted: saved (\S+) at step (\d+); continue with --resume", out)
    assert saved, out
    step = check_loadable(run, total, 0)
    assert step == int(saved.group(2)) and step < total
    deadline.say(f"Ctrl-C: exit 130 at step {step}")

    # 2. SIGKILL at random points, and timed on a temporary `latest` (a save in progress)
    resume = train_argv(tokens, run, resume=True)
    caught_mid_write = 0
    for mode in ["random", "write", "random", "write", "random", "write"]:
        if step >= total - 3:
            break
        before = version(run / STATE_FILE)
        pid = fork_cli(resume, log)
        code = None
        while version(run / STATE_FILE) == before and (code := poll(pid)) is None:
            deadline.left()  # until this run has saved once: it is training now
            time.sleep(0.001)
        if code is None and mode == "random":
            time.sleep(rng.uniform(0, 3) * step_time)
        while code is None and mode == "write" and not writing_state(run):
            deadline.left()
            code = poll(pid)
            time.sleep(0.0002)
        if code is None:
            os.kill(pid, signal.SIGKILL)
            code = wait(pid, deadline)
        assert code in (-signal.SIGKILL, 0), log.read_text()
        if mode == "write" and any(run.glob(f"{TMP_PREFIX}*.tmp")):
            caught_mid_write += 1  # the kill left the temporary file: it hit a save
        step = check_loadable(run, total, step)
        deadline.say(f"SIGKILL ({mode}): exit {code} at step {step}")
    print(f"SIGKILL landed during a write of {STATE_FILE} {caught_mid_write} time(s)")

    # 3. resume until done
    for _ in range(3):
        code = wait(fork_cli(resume, log), deadline)
        assert code == 0, log.read_text()
        if load_state(run / STATE_FILE)["position"]["step"] == total:
            break

    final = load_state(run / STATE_FILE)
    assert final["position"]["step"] == total
    assert final["position"] == ref_state["position"]
    assert max_diff(final["modules"]["transformer"], ref_state["modules"]["transformer"]) <= 1e-6
    model, ref_model = (load_model(r / "transformer.safetensors") for r in (run, reference))
    assert max_diff(model.state_dict(), ref_model.state_dict()) <= 1e-6
    ref_files = {p.name for p in reference.iterdir()}
    assert {p.name for p in run.iterdir()} == ref_files  # no stale temporary file left
