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

import csv
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
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


def fork_cli(argv: list[str], log: Path, child_setup: Callable[[], None] | None = None) -> int:
    """Run `maskgit ARGV` in a forked child (output appended to `log`; `child_setup` runs in
    the child first); returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child: exits with main()'s code, never returns into pytest
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if child_setup is not None:
                child_setup()
            code = main(argv)
        finally:
            try:
                sys.stdout.flush()
            finally:
                os._exit(code)
    return pid


class Child:
    """A forked `maskgit` run."""

    def __init__(self, argv: list[str], log: Path):
        self.pid = fork_cli(argv, log)
        self.code: int | None = None  # -N when killed by signal N

    def done(self) -> bool:
        if self.code is None:
            finished, status = os.waitpid(self.pid, os.WNOHANG)
            if finished:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code is not None

    def kill(self) -> None:
        if not self.done():
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, deadline: Deadline) -> int:
        while not self.done():
            if deadline.end < time.monotonic():
                self.kill()
                pytest.fail(f"child {self.pid} ran over the test's budget")
            time.sleep(0.01)
        return self.code


def version(path: Path) -> tuple[int, int] | None:
    """Changes whenever `path` is replaced (atomic_write renames a new file onto it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def next_save(path: Path, before, done, deadline: Deadline):
    """Wait until `path` differs from version `before` -> (time, version); None if the
    process ended first."""
    while (now := version(path)) == before:
        if done():
            return None
        deadline.left()
        time.sleep(0.001)
    return time.monotonic(), now


def random_point(path: Path, before, done, rng: random.Random, deadline: Deadline) -> bool:
    """Wait for two saves of `latest` (the run is training), then a random fraction of the
    time between them: a random point of a training step. False if the process ended."""
    first = next_save(path, before, done, deadline)
    second = first and next_save(path, first[1], done, deadline)
    if not second:
        return False
    time.sleep(rng.uniform(0.0, 1.0) * (second[0] - first[0]))
    return not done()


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


def metric_keys(run: Path) -> list[tuple[str, ...]]:
    """(step, epoch, split, metric) of every metrics.csv row, in file order."""
    with open(run / "metrics.csv", newline="") as handle:
        return [tuple(row[:4]) for row in csv.reader(handle)]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
def test_kill_ctrl_c_and_resume_lose_nothing(tmp_path):
    deadline = Deadline(DEADLINE_S)
    rng = random.Random(0)
    tokens = make_tokens(tmp_path / "tokens")
    log = tmp_path / "children.log"
    children: list[Child] = []
    try:
        _interrupt_and_resume(tmp_path, tokens, log, children, rng, deadline)
    finally:
        for child in children:  # never leave a run behind, whatever failed
            child.kill()
            if child.code is None:
                os.waitpid(child.pid, 0)


def _interrupt_and_resume(tmp_path, tokens, log, children, rng, deadline):
    # the uninterrupted reference run (same code path, in a fork)
    reference = tmp_path / "reference"
    children.append(Child(train_argv(tokens, reference, every_step=False), log))
    assert children[-1].wait(deadline) == 0, log.read_text()
    ref_state = load_state(reference / STATE_FILE)
    total = ref_state["position"]["step"]
    train_items = len(split_indices([f"img{i}.png" for i in range(64)], 0.2)[0])
    assert total == EPOCHS * (train_items // 8)  # the tiny preset: batches of 8, 20 % held out
    deadline.say(f"reference run: {total} steps")

    # 1. Ctrl-C in a real `maskgit` process, at a random point of a training step
    run = tmp_path / "run"
    latest = run / STATE_FILE
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "maskgit.cli", *train_argv(tokens, run)]
    # A shell that starts CI in the background makes its children ignore SIGINT, which
    # Python then leaves ignored: restore the default so Ctrl-C reaches the training loop.
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    with subprocess.Popen(
        cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=restore_sigint
    ) as proc:
        try:
            assert random_point(latest, None, lambda: proc.poll() is not None, rng, deadline)
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

    # 2. SIGKILL at random points of a step, and as soon as a temporary `latest` appears
    resume = train_argv(tokens, run, resume=True)
    caught_mid_write = 0
    for mode in ["random", "write", "random", "write", "random", "write"]:
        if step >= total - 4:
            break
        before = version(latest)
        child = Child(resume, log)
        children.append(child)
        if mode == "random":
            random_point(latest, before, child.done, rng, deadline)
        elif next_save(latest, before, child.done, deadline):
            while not writing_state(run) and not child.done():
                deadline.left()
                time.sleep(0.0002)
        child.kill()
        code = child.wait(deadline)
        assert code in (-signal.SIGKILL, 0), log.read_text()
        if mode == "write" and any(run.glob(f"{TMP_PREFIX}*.tmp")):
            caught_mid_write += 1  # the kill left the temporary file behind: it hit a save
        step = check_loadable(run, total, step)
        deadline.say(f"SIGKILL ({mode}): exit {code} at step {step}")
    deadline.say(f"{caught_mid_write} SIGKILL(s) landed during a write of {STATE_FILE}")

    # 3. resume until done
    for _ in range(3):
        children.append(Child(resume, log))
        assert children[-1].wait(deadline) == 0, log.read_text()
        if load_state(latest)["position"]["step"] == total:
            break
    deadline.say("resumed to the end")

    final = load_state(latest)
    assert final["position"]["step"] == total
    assert final["position"] == ref_state["position"]
    assert max_diff(final["modules"]["transformer"], ref_state["modules"]["transformer"]) <= 1e-6
    model, ref_model = (load_model(r / "transformer.safetensors") for r in (run, reference))
    assert max_diff(model.state_dict(), ref_model.state_dict()) <= 1e-6
    # metrics.csv: each logged row once, as in the uninterrupted run (redone steps replace theirs)
    assert metric_keys(run) == metric_keys(reference)
    ref_files = {p.name for p in reference.iterdir()}
    assert {p.name for p in run.iterdir()} == ref_files  # no stale temporary file left
