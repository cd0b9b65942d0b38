"""`maskgit evaluate`, `maskgit sweep` and `maskgit fid` end to end on a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit.checkpoint import save_model
from maskgit.cli import main
from maskgit.config import get_preset
from maskgit.evaluate import CEILING, load_test_set, reference_fill
from maskgit.fid import InceptionWeightsError, find_inception_weights
from maskgit.pipeline import MaskGIT
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer

torch.set_num_threads(1)
SIZE = 16


def _inception_available() -> bool:
    try:
        find_inception_weights(None)
        return True
    except InceptionWeightsError:
        return False


needs_inception = pytest.mark.skipif(
    not _inception_available(), reason="Inception weights not found: run scripts/get_inception.sh"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    preset = get_preset("tiny")
    torch.manual_seed(0)
    save_model(VQGAN(preset.tokenizer), root / "model" / "tokenizer.safetensors")
    save_model(
        BidirectionalTransformer(preset.transformer), root / "model" / "transformer.safetensors"
    )
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir()
    for i in range(6):
        image = np.full((SIZE, SIZE, 3), 255, np.uint8)
        image[4:12, 3 + i % 3 : 11 + i % 3] = rng.integers(0, 255, 3)
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[6:10, 2:14] = 255
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return {
        "root": root,
        "model": root / "model",
        "images": root / "images",
        "masks": root / "masks",
    }


def eval_argv(command: str, setup: dict[str, Path], out: Path) -> list[str]:
    """`maskgit COMMAND` on the tiny model and the six test images, writing to `out`."""
    return [
        command,
        *("--model", str(setup["model"]), "--images", str(setup["images"])),
        *("--masks", str(setup["masks"]), "--out", str(out), "--device", "cpu"),
    ]


def test_tokenizer_ceiling_decodes_the_true_tokens_into_the_hole(setup):
    model = MaskGIT.from_pretrained(setup["model"], device="cpu")
    test = load_test_set(setup["images"], setup["masks"], None, SIZE)
    filled = reference_fill(CEILING, model, test)
    hole = test.masks[:, None].expand_as(filled)
    assert torch.equal(filled[~hole], test.truth[~hole])
    assert torch.equal(filled[hole], model.reconstruct(test.truth)[hole])


def test_evaluate_unknown_baseline_fails_before_inpainting(setup, tmp_path, capsys):
    argv = eval_argv("evaluate", setup, tmp_path / "o") + ["--baselines", "magic"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--baselines magic" in err and "tokenizer-ceiling" in err
    assert not (tmp_path / "o").exists()


@needs_inception
def test_sweep_writes_csv_plots_and_table(setup, capsys):
    out = setup["root"] / "sweep"
    code = main(
        eval_argv("sweep", setup, out)
        + ["--schedules", "linear", "cosine", "--steps", "1", "2", "--baselines", "white", "telea"]
    )
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert len(rows) == 2 * 2 + 2
    assert {r["schedule"] for r in rows if r["method"] == "maskgit"} == {"linear", "cosine"}
    assert {r["prefill"] for r in rows if r["method"] == "maskgit"} == {"telea"}  # the default
    assert all(np.isfinite(float(r["fid"])) and float(r["fid"]) >= 0 for r in rows)
    for plot in ("fid_vs_steps.png", "time_vs_steps.png"):
        picture = np.asarray(Image.open(out / plot).convert("L"))
        assert picture.shape[0] > 200 and picture.std() > 5  # a drawn plot, not blank
    table = (out / "table.md").read_text()
    assert table.count("| maskgit |") == 4 and "| telea |" in table


@needs_inception
def test_evaluate_writes_results_and_images(setup, capsys):
    out = setup["root"] / "evaluate"
    code = main(
        eval_argv("evaluate", setup, out)
        + ["--steps", "2", "--baselines", "white", "tokenizer-ceiling", "--prefill", "white"]
    )
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["maskgit", "white", "tokenizer-ceiling"]
    assert rows[0]["prefill"] == "white" and rows[0]["steps"] == 2  # the settings are recorded
    assert rows[0]["n"] == 6 and {"fid", "kid_mean", "psnr", "ssim", "l1"} <= set(rows[0])
    assert len(list((out / "maskgit").glob("*.png"))) == 6


@needs_inception
def test_fid_command_prints_fid_kid_and_n(setup, capsys):
    code = main(
        [
            "fid",
            str(setup["images"]),
            str(setup["images"]),
            "--kid-subset-size",
            "3",
            "--no-cache",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "FID" in out and "KID" in out and "N real 6" in out and "N fake 6" in out
    fid_value = float(out.split()[1])
    assert abs(fid_value) < 1e-3  # a folder against itself


def test_evaluate_missing_masks_is_a_one_line_error(setup, tmp_path, capsys):
    (tmp_path / "masks").mkdir()
    Image.new("L", (SIZE, SIZE)).save(tmp_path / "masks" / "other.png")
    code = main(
        [
            "evaluate",
            "--model",
            str(setup["model"]),
            "--images",
            str(setup["images"]),
            "--masks",
            str(tmp_path / "masks"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no mask for 6 image(s)" in err
