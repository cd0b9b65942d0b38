"""Issue #17 (reliability, round 2): no input overwritten, bounded memory, odd options.

The web cases are in tests/test_web_guards.py; the table of cases is docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

import test_hostile_inputs as hostile
from test_hostile_inputs import CPU, assert_error, cli, train, write_image, write_mask

files = hostile.files  # the module's fixture: a tiny model, images, masks, tokens

torch.set_num_threads(1)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def inpaint_args(files, images, masks, out, *extra):
    return (
        "inpaint",
        "--images",
        images,
        "--masks",
        masks,
        "--out",
        out,
        "--model",
        files["model"],
        "--no-progress",
        *extra,
        *CPU,
    )


# --------------------------------------------------------------------------- 1: no overwrite


def test_inpaint_refuses_to_write_over_its_image_file(files, tmp_path, capsys):
    photo = write_image(tmp_path / "dir" / "photo.png")
    mask = write_mask(tmp_path / "m.png")
    before = digest(photo)
    result = cli(capsys, *inpaint_args(files, photo, mask, tmp_path / "dir"))
    assert_error(result, 2, "photo.png", "overwrite")
    assert digest(photo) == before


@pytest.mark.parametrize("form", ["plain", "dotdot", "symlink"])
def test_inpaint_refuses_gt_folder_as_out(form, files, tmp_path, capsys):
    images = write_image(tmp_path / "images" / "a.png").parent
    masks = write_mask(tmp_path / "masks" / "a.png").parent
    gt = write_image(tmp_path / "gt" / "a.png", seed=3).parent
    out = {
        "plain": gt,
        "dotdot": tmp_path / "images" / ".." / "gt",
        "symlink": tmp_path / "link",
    }[form]
    if form == "symlink":
        os.symlink(gt, out)
    before = digest(gt / "a.png")
    result = cli(capsys, *inpaint_args(files, images, masks, out, "--gt", gt))
    assert_error(result, 2, "overwrite")
    assert digest(gt / "a.png") == before


def test_inpaint_refuses_an_output_file_linked_to_an_input(files, tmp_path, capsys):
    images = write_image(tmp_path / "images" / "a.png").parent
    mask = write_mask(tmp_path / "m.png")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(mask, out / "a.png")  # writing out/a.png would go through to the mask
    before = digest(mask)
    assert_error(cli(capsys, *inpaint_args(files, images, mask, out)), 2, "overwrite")
    assert digest(mask) == before


def test_outpaint_refuses_to_write_over_its_image(files, tmp_path, capsys):
    photo = write_image(tmp_path / "dir" / "photo.png")
    before = digest(photo)
    args = ["outpaint", "--images", photo, "--out", tmp_path / "dir", "--model", files["model"]]
    assert_error(cli(capsys, *args, "--no-progress", *CPU), 2, "overwrite")
    assert digest(photo) == before


def test_generate_refuses_the_model_folder(files, capsys):
    before = digest(files["model"] / "transformer.safetensors")
    args = ["generate", "--n", "1", "--out", files["model"], "--model", files["model"]]
    assert_error(cli(capsys, *args, "--no-progress", *CPU), 2, "--model")
    assert digest(files["model"] / "transformer.safetensors") == before


@pytest.mark.parametrize("command", ["evaluate", "sweep"])
def test_evaluate_and_sweep_refuse_an_input_folder(command, files, tmp_path, capsys):
    images = write_image(tmp_path / "images" / "a.png").parent
    masks = write_mask(tmp_path / "masks" / "a.png").parent
    args = [command, "--images", images, "--masks", masks, "--model", files["model"]]
    assert_error(cli(capsys, *args, "--out", masks, *CPU), 2, "overwrite")
    # the results folder of an earlier run given as the images: maskgit/a.png is read
    out = tmp_path / "out"
    write_image(out / "maskgit" / "a.png")
    if command == "evaluate":
        args = [command, "--images", out / "maskgit", "--masks", masks, "--model", files["model"]]
        assert_error(cli(capsys, *args, "--out", out, *CPU), 2, "overwrite")


def test_tokenize_and_train_refuse_their_data_folder(files, tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(3):
        write_image(data / f"img{i}.png", seed=i)
    args = ["tokenize", "--tokenizer", files["model"], "--data", data, "--out", data, *CPU]
    assert_error(cli(capsys, *args), 2, "overwrite")
    assert sorted(p.name for p in data.iterdir()) == ["img0.png", "img1.png", "img2.png"]
    args = ["train-tokenizer", "--config", "tiny", "--data", data, "--out", data / "..", *CPU]
    assert_error(cli(capsys, *args[:-2], "--out", data, *CPU), 2, "overwrite")
    tokens = files["tokens"]
    before = digest(tokens / "tokens.safetensors")
    assert_error(train(capsys, files, tokens), 2, "overwrite")
    assert digest(tokens / "tokens.safetensors") == before


# --------------------------------------------------------------------------- 2: train folders


def other_tokenizer(path: Path) -> Path:
    """A tiny tokenizer with other weights than the model fixture's."""
    from maskgit.checkpoint import save_model
    from maskgit.config import get_preset
    from maskgit.tokenizer.model import VQGAN

    torch.manual_seed(123)
    save_model(VQGAN(get_preset("tiny").tokenizer), path)
    return path


def test_train_with_too_few_items_writes_nothing(files, tmp_path, capsys):
    tokens = hostile.token_folder(tmp_path / "tokens", count=4)
    tokenizer = files["model"] / "tokenizer.safetensors"
    result = train(capsys, files, tmp_path / "run", "--tokenizer", tokenizer, tokens=tokens)
    assert_error(result, 1, "fewer than batch_size=8")
    hostile.assert_nothing_written(tmp_path / "run")


def test_train_tokenizer_with_too_few_images_writes_nothing(files, tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(3):
        write_image(data / f"img{i}.png", seed=i)
    args = ["train-tokenizer", "--config", "tiny", "--data", data, "--out", tmp_path / "run"]
    assert_error(cli(capsys, *args, "--no-progress", *CPU), 1, "fewer than batch_size")
    hostile.assert_nothing_written(tmp_path / "run")


def test_refused_resume_keeps_the_runs_tokenizer_and_halves_must_match(files, tmp_path, capsys):
    from maskgit.checkpoint import CheckpointError
    from maskgit.pipeline import MaskGIT

    run = tmp_path / "run"
    tokenizer = files["model"] / "tokenizer.safetensors"
    steps = ("--set", "transformer_training.max_steps=1")
    code, _, lines = train(capsys, files, run, "--tokenizer", tokenizer, *steps)
    assert code == 0, lines
    assert MaskGIT.from_pretrained(run, device="cpu") is not None
    before = digest(run / "tokenizer.safetensors")
    other = other_tokenizer(tmp_path / "other.safetensors")
    # a state that does not fit (another preset): refused, and the tokenizer is not replaced
    result = train(
        capsys, files, run, "--resume", "--tokenizer", other, "--set", "transformer.dim=64"
    )
    assert_error(result, 2)
    assert digest(run / "tokenizer.safetensors") == before
    # resuming with another tokenizer than the run's: refused, nothing replaced
    result = train(capsys, files, run, "--resume", "--tokenizer", other, *steps)
    assert_error(result, 2, "another tokenizer")
    assert digest(run / "tokenizer.safetensors") == before
    # a folder whose tokenizer was swapped afterwards: refused on load, naming both files
    (run / "tokenizer.safetensors").write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match="tokenizer.safetensors") as caught:
        MaskGIT.from_pretrained(run, device="cpu")
    assert "transformer.safetensors" in str(caught.value)
    code, _, lines = cli(
        capsys, "generate", "--n", "1", "--out", tmp_path / "g", "--model", run, *CPU
    )
    assert code == 2 and "another tokenizer" in lines[-1], lines


# --------------------------------------------------------------------------- 3: --feather


def test_feather_larger_than_the_image_is_refused(files, tmp_path, capsys):
    images = write_image(tmp_path / "images" / "a.png").parent
    mask = write_mask(tmp_path / "m.png")
    for feather in (17, 1_000_000):  # the tiny model is 16x16
        out = tmp_path / f"out{feather}"
        result = cli(capsys, *inpaint_args(files, images, mask, out, "--feather", feather))
        assert_error(result, 2, f"feather={feather}", "larger than the image")
        hostile.assert_nothing_written(out)
    result = cli(capsys, *inpaint_args(files, images, mask, tmp_path / "ok", "--feather", 16))
    assert result[0] == 0, result


# Peak RSS of this process's own memory map (VmHWM; getrusage's ru_maxrss would also carry the
# parent's RSS at fork time, recorded by Linux at exec).
PEAK_RSS_SCRIPT = """
import sys, torch
from maskgit.pipeline import paste_known
torch.set_num_threads(1)
size = feather = int(sys.argv[1])
original = torch.zeros(1, 3, size, size, dtype=torch.uint8)
decoded = torch.full_like(original, 255)
mask = torch.zeros(1, size, size, dtype=torch.bool)
mask[:, 16:-16, 16:-16] = True
def peak():
    return int([x for x in open("/proc/self/status") if x.startswith("VmHWM:")][0].split()[1])
before = peak()
out = paste_known(original, decoded, mask, feather)
after = peak()
assert 0 < out[0, 0, size // 2, size // 2] < 255 and out[0, 0, 0, 0] == 0
print((after - before) // 1024)  # MiB
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_feather_memory_does_not_grow_with_the_width():
    """Peak RSS of blending a 256x256 image with the widest feather allowed (256 px): the
    ramp used to keep two float copies of the mask per pixel of feather (~130 MB here)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    grown = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, "256"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    ).stdout.split()[-1]
    assert int(grown) < 30, f"peak RSS grew by {grown} MiB"


# --------------------------------------------------------------------------- 12: small


def test_train_no_progress_draws_no_bars(files, tmp_path, capsys):
    from maskgit.cli import main

    tokenizer = files["model"] / "tokenizer.safetensors"
    args = ["train", "--config", "tiny", "--data", files["many"], "--tokenizer", tokenizer]
    args += ["--out", tmp_path / "run", "--set", "transformer_training.max_steps=1"]
    assert main([str(a) for a in (*args, "--no-progress", *CPU)]) == 0
    err = capsys.readouterr().err
    assert "|" not in err and "reading" not in err and "tokenising" not in err, err


@pytest.mark.parametrize("value", [-0.0, -1e-9, -0.0004])
def test_fid_never_prints_minus_zero(value, tmp_path, capsys, monkeypatch):
    import maskgit.fid
    from maskgit.cli import main

    scores = {"fid": value, "kid_mean": -1e-9, "kid_std": 0.0, "n_real": 2, "n_fake": 2}
    monkeypatch.setattr(maskgit.fid, "compute_fid", lambda *a, **k: scores)
    assert main(["fid", str(tmp_path), str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "FID 0.000" in out and "-0.0" not in out, out
