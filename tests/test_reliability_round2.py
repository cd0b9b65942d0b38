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
