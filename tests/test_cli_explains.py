"""The CLI explains itself (issue 30, sections 4 and 5): it says what it is doing (progress
counted in decoding steps, phase lines of the demo, validation lines without bars) and what
things mean (help for every command and option, metric directions, a small-N warning, install
commands that exist), starts without importing torch, and reads images given as paths."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extras import needs_inception
from maskgit.cli import build_parser, main
from maskgit.pipeline import MaskGIT
from tiny_model import write_tiny_model

torch.set_num_threads(1)
SIZE = 16  # the tiny preset
ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
HEAVY = ("torch", "numpy", "PIL", "safetensors", "scipy", "cv2", "matplotlib")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


def write_pairs(root: Path, count: int) -> tuple[Path, Path]:
    """`count` random 16x16 PNGs in root/images and square-hole masks in root/masks."""
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[4:12, 4:12] = 255
    for i in range(count):
        image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    return root / "images", root / "masks"


def python(code: str) -> str:
    """Run `code` in a fresh interpreter on this checkout's package; its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# --------------------------------------------------------------------------- fast start


def test_building_the_parser_imports_no_heavy_module():
    code = (
        "import sys, maskgit.cli\n"
        "maskgit.cli.build_parser().format_help()\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert python(code) == ""


def test_help_imports_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from maskgit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['inpaint', '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)"
    )
    assert python(code) == "False"


def test_package_import_is_light_and_the_public_names_still_load():
    code = (
        "import sys, maskgit\n"
        "light = 'torch' not in sys.modules\n"
        "from maskgit import MaskGIT, DEFAULT_DECODING, DecodingOptions, load_model\n"
        "print(light, MaskGIT.__name__, DEFAULT_DECODING.steps > 0, 'torch' in sys.modules)"
    )
    assert python(code) == "True MaskGIT True True"
    import maskgit

    assert set(maskgit.__all__) == set(maskgit._HOMES) and set(maskgit.__all__) <= set(dir(maskgit))
    assert all(getattr(maskgit, name) is not None for name in maskgit.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        maskgit.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- help texts


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_every_command_has_a_help_line_and_a_description():
    sub = _subparsers(build_parser())
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    missing = [
        name
        for name, p in sub.choices.items()
        if not (helps.get(name) or "").strip() or not (p.description or "").strip()
    ]
    assert missing == []


def test_every_option_has_a_help_text():
    sub = _subparsers(build_parser())
    missing = [
        f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
        for name, p in sub.choices.items()
        for action in p._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert missing == []


# --------------------------------------------------------------------------- install hints


def test_no_message_names_an_install_that_does_not_exist():
    """The distribution is maskgit-toolkit: `pip install 'maskgit[web]'` installs nothing."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((SRC / "maskgit").rglob("*"))
        if path.suffix in (".py", ".html", ".js", ".md", ".txt")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"maskgit\[", line)
    ]
    assert offenders == []


def test_serve_without_fastapi_names_the_real_extra(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "maskgit-toolkit[web]" in err and "pip install -e '.[web]'" in err


# --------------------------------------------------------------------------- paths as images


def test_inpaint_reads_images_and_masks_given_as_paths(model_dir, tmp_path):
    images, masks = write_pairs(tmp_path, 2)
    model = MaskGIT.from_pretrained(model_dir, device="cpu")
    arrays = [np.asarray(Image.open(images / f"img{i}.png")) for i in range(2)]
    hole = np.asarray(Image.open(masks / "img0.png")) > 127
    by_array = model.inpaint(arrays, [hole, hole], steps=2)
    by_path = model.inpaint(
        [str(images / "img0.png"), images / "img1.png"],  # str and os.PathLike
        [str(masks / "img0.png"), masks / "img1.png"],
        steps=2,
    )
    for a, b in zip(by_array.images, by_path.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    one = model.inpaint(str(images / "img0.png"), masks / "img0.png", steps=2)  # single items
    assert np.array_equal(np.asarray(one.images[0]), np.asarray(by_path.images[0]))


def test_a_missing_image_path_is_named(model_dir, tmp_path):
    model = MaskGIT.from_pretrained(model_dir, device="cpu")
    missing = tmp_path / "nowhere" / "cat.png"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        model.inpaint(str(missing), np.ones((SIZE, SIZE), bool))
    images, masks = write_pairs(tmp_path, 1)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "mask.png"))):
        model.inpaint(images / "img0.png", tmp_path / "mask.png")


# --------------------------------------------------------------------------- progress


def test_inpaint_progress_counts_decoding_steps(model_dir, tmp_path, capsys):
    images, masks = write_pairs(tmp_path, 3)
    argv = ["inpaint", "--model", str(model_dir), "--images", str(images), "--masks", str(masks)]
    argv += ["--out", str(tmp_path / "out"), "--steps", "4", "--batch-size", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "8/8" in err and "step" in err  # 2 batches x 4 steps, not "2/2" batches
    assert "0/2" not in err


def test_inpaint_no_progress_draws_no_bar(model_dir, tmp_path, capsys):
    images, masks = write_pairs(tmp_path, 1)
    argv = ["inpaint", "--model", str(model_dir), "--images", str(images), "--masks", str(masks)]
    argv += ["--out", str(tmp_path / "out"), "--steps", "2", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    assert "/2" not in capsys.readouterr().err


def test_demo_says_what_it_is_doing(model_dir, tmp_path, capsys):
    argv = ["demo", "--model", str(model_dir), "--out", str(tmp_path / "demo"), "--steps", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err
    count = len(list((ROOT / "src/maskgit/samples/images").glob("*.png")))
    assert f"loading model {model_dir}" in said
    assert f"inpainting {count} sample emoji, 2 decoding steps" in said
    assert f"{2}/{2}" in captured.err  # the decoding bar, in steps
    assert "writing pictures" in said
    assert said.index("loading model") < said.index("inpainting") < said.index("writing")


def test_no_progress_still_prints_each_epochs_validation(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):  # 8 train (one batch of 8), 2 validation
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(
            data / f"img{i}.png"
        )
    argv = ["train-tokenizer", "--config", "tiny", "--data", str(data)]
    argv += ["--out", str(tmp_path / "run"), "--set", "tokenizer_training.epochs=1"]
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "epoch 1 validation: loss" in captured.out
    assert "epoch 1:" not in captured.err  # no bar


# --------------------------------------------------------------------------- evaluate


@pytest.mark.slow  # Inception on the CPU: ~30 s alone, minutes on a busy machine
@needs_inception
def test_evaluate_says_which_way_is_better_and_warns_at_small_n(model_dir, tmp_path, capsys):
    images, masks = write_pairs(tmp_path, 6)
    argv = ["evaluate", "--model", str(model_dir), "--images", str(images), "--masks"]
    argv += [str(masks), "--out", str(tmp_path / "out"), "--steps", "2", "--device", "cpu"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "lower is better: FID, KID" in captured.out
    assert "higher is better: PSNR (dB), SSIM" in captured.out
    warning = [line for line in captured.err.splitlines() if "maskgit: warning:" in line]
    assert len(warning) == 1 and "N = 6" in warning[0] and "100" in warning[0], captured.err


@pytest.mark.slow  # Inception on the CPU: ~30 s alone, minutes on a busy machine
@needs_inception
def test_fid_warns_at_small_n(tmp_path, capsys):
    images, _ = write_pairs(tmp_path, 4)
    argv = ["fid", str(images), str(images), "--no-cache", "--kid-subset-size", "3"]
    assert main([*argv, "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"FID [\d.]+ \(lower is better\)", captured.out), captured.out
    assert re.search(r"KID [-\d.]+ \+- [\d.]+ \(lower is better\)", captured.out)
    assert "N = 4" in captured.err and "maskgit: warning:" in captured.err


# --------------------------------------------------------------------------- install


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_every_install_step_says_what_it_installs(tmp_path):
    """`make install` keeps pip quiet but prints one `== installing ... ==` line per step."""
    done = subprocess.run(
        ["make", "-n", "install", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    installs = [i for i, line in enumerate(lines) if "pip install" in line]
    assert len(installs) == 4  # pip, torch, the lock, maskgit itself
    for i in installs:
        assert "-q" in lines[i].split() and "== installing" in lines[i - 1], lines[i - 1 : i + 1]
    assert any("torch 2.13.0" in line for line in lines)


def test_a_resize_to_the_models_size_is_said_once(tmp_path):
    import warnings

    from PIL import Image

    from maskgit.data import load_folder

    for name, side in [("a.png", 32), ("b.png", 32), ("c.png", 16)]:
        Image.new("RGB", (side, side), (200, 10, 10)).save(tmp_path / name)
    with pytest.warns(UserWarning, match=r"resized 2 of 3 image\(s\) to the model's 16x16, e"):
        images, names = load_folder(tmp_path, 16, progress=False)
    assert images.shape == (3, 3, 16, 16) and names == ["a.png", "b.png", "c.png"]
    (tmp_path / "a.png").unlink(), (tmp_path / "b.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's size: nothing to say
        load_folder(tmp_path, 16, progress=False)
