"""`maskgit evaluate`, `maskgit sweep` and `maskgit fid` end to end on a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extras import needs_inception
from maskgit.cli import main
from maskgit.evaluate import (
    CEILING,
    _sweep_settings,
    inpaint_set,
    load_test_set,
    markdown_table,
    mean_rows,
    plot_sweep,
    reference_fill,
    sweet_spots_from_one_decode,
)
from maskgit.options import DecodingOptions
from maskgit.pipeline import MaskGIT
from tiny_model import write_tiny_model

torch.set_num_threads(1)
SIZE = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    write_tiny_model(root / "model")
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
    filled = reference_fill(CEILING, model, test, blend="none")
    hole = test.masks[:, None].expand_as(filled)
    assert torch.equal(filled[~hole], test.truth[~hole])
    assert torch.equal(filled[hole], model.reconstruct(test.truth)[hole])
    seamless = reference_fill(CEILING, model, test)  # the default, as MaskGIT's results are
    assert torch.equal(seamless[~hole], test.truth[~hole]) and not torch.equal(seamless, filled)


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


def _row(rule, schedule, steps, sweet_spot, seed, fid):
    return {
        "method": "maskgit",
        "rule": rule,
        "schedule": schedule,
        "steps": steps,
        "sweet_spot": sweet_spot,
        "seed": seed,
        "fid": fid,
        "kid_mean": 0.001,
        "psnr": 10.0,
        "ssim": 0.5,
        "l1": 0.1,
        "s_per_image": 0.1 * steps,
    }


def test_table_gives_means_over_seeds_one_row_per_setting():
    rows = [
        _row("paper", "linear", 4, 4, 0, 10.0),
        _row("paper", "linear", 4, 4, 1, 20.0),
        _row("lab", "linear", 4, 4, 0, 30.0),
        {"method": "telea", "fid": 50.0, "kid_mean": 0.0, "psnr": 1, "ssim": 0, "l1": 0},
    ]
    means = mean_rows(rows)
    assert [(r["method"], r.get("rule"), r["fid"], r.get("seeds")) for r in means] == [
        ("maskgit", "paper", 15.0, 2),
        ("maskgit", "lab", 30.0, 1),
        ("telea", None, 50.0, None),
    ]
    table = markdown_table(rows)
    assert table.count("| maskgit |") == 2 and "| 15.00 |" in table and "| 2 |" in table


def test_sweep_plots_fid_per_rule_and_against_the_sweet_spot(tmp_path):
    rows = [
        _row(rule, schedule, t, s, seed, 100.0 - t - s + (rule == "lab") + seed)
        for rule in ("paper", "lab")
        for schedule in ("linear", "cosine")
        for t in (4, 8)
        for s in {t, t - 2}
        for seed in (0, 1)
    ]
    plot_sweep(rows, tmp_path)
    for plot in ("fid_vs_steps.png", "time_vs_steps.png", "fid_vs_sweet_spot.png"):
        picture = np.asarray(Image.open(tmp_path / plot).convert("L"))
        assert picture.shape[0] > 200 and picture.std() > 5
    plot_sweep([r for r in rows if r["steps"] == r["sweet_spot"]], tmp_path / "x")
    assert not (tmp_path / "x" / "fid_vs_sweet_spot.png").exists()


def test_no_paste_scores_the_decoder_output_everywhere(setup):
    model = MaskGIT.from_pretrained(setup["model"], device="cpu")
    test = load_test_set(setup["images"], setup["masks"], None, SIZE)
    options = DecodingOptions(steps=2, blend="none")
    pasted, _ = inpaint_set(model, test, options)
    raw, _ = inpaint_set(model, test, options, paste=False)
    decoded, _, _ = model.decode_batch(test.images, test.masks, options)
    assert torch.equal(raw, decoded)
    keep = ~test.masks[:, None].expand_as(raw)
    assert torch.equal(pasted[keep], test.images[keep])
    assert not torch.equal(raw[keep], test.images[keep])  # the decoder changes known pixels
    hole = ~keep
    assert torch.equal(pasted[hole], raw[hole])


@pytest.mark.parametrize("rule", ["lab", "paper", "halton"])
@pytest.mark.parametrize("paste", [True, False])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sweet_spots_from_one_decode_equal_separate_runs(setup, rule, paste, temperature):
    model = MaskGIT.from_pretrained(setup["model"], device="cpu")
    test = load_test_set(setup["images"], setup["masks"], None, SIZE)
    options = DecodingOptions(rule=rule, schedule="linear", steps=5, temperature=temperature)
    shared = sweet_spots_from_one_decode(model, test, options, [1, 3, 5], batch_size=4, paste=paste)
    for spot, (results, _) in shared.items():
        alone, _ = inpaint_set(model, test, options.replace(sweet_spot=spot), paste=paste)
        assert torch.equal(results, alone), spot
    if temperature > 0:  # sampled anew each step: the spots differ, so the check is real
        assert not torch.equal(shared[1][0], shared[5][0])


def test_sweep_settings_sweet_spots_at_and_no_duplicates():
    settings = _sweep_settings(
        DecodingOptions(), ["lab"], ["linear"], [2, 4, 8], [None, 2, -4, 4], [8], [0]
    )
    runs = [(c.steps, c.steps_to_run) for c in settings]
    # sweet spots only at T=8; S=4 and T-4 are one setting, S=T=2 and 4 are the plain runs
    assert runs == [(2, 2), (4, 4), (8, 8), (8, 2), (8, 4)]


@needs_inception
def test_sweep_rules_relative_sweet_spot_no_paste_and_torch_resize(setup, capsys):
    out = setup["root"] / "sweep-rules"
    argv = eval_argv("sweep", setup, out) + [
        *("--rules", "lab", "halton", "--schedules", "linear", "--steps", "1", "2"),
        *("--sweet-spots=-1", "--no-paste", "--resize", "torch"),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads((out / "sweep.json").read_text())
    settings = [(r["rule"], r["steps"], r["sweet_spot"]) for r in rows]
    # T=1 has no T-1 >= 1: skipped; T=2 runs S=2 and S=1
    assert settings == [("lab", 1, 1), ("lab", 2, 2), ("lab", 2, 1)] + [
        ("halton", 1, 1),
        ("halton", 2, 2),
        ("halton", 2, 1),
    ]
    assert all(r["paste"] is False and r["resize"] == "torch" for r in rows)
    assert (out / "fid_vs_sweet_spot.png").exists()
    assert (out / "table.md").read_text().count("| maskgit |") == 6
