"""Issue #29 (reliability, round 3): files written and model files read.

Token folders written as one unit (#29.4), model files checked against their header before
anything is built (#29.8) and for dtypes and finite values (#29.15), messages that name the
file (#29.14) and colour profiles kept (#29.6). The table of cases is docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import test_hostile_inputs as hostile
from maskgit.checkpoint import CheckpointError, load_model
from maskgit.data import INDEX_FILE, TOKENS_FILE, load_folder, load_tokens
from test_hostile_inputs import CPU, SIZE, assert_error, cli, write_image, write_mask

files = hostile.files  # the module's fixture: a tiny model, images, masks, tokens

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
NAME_MAX = 255  # bytes in a file name on Linux file systems (ext4, tmpfs, xfs, btrfs)


def tokenize(capsys, files, data, out):
    return cli(
        capsys, "tokenize", "--tokenizer", files["model"], "--data", data, "--out", out, *CPU
    )


def image_folder(folder: Path, names: list[str]) -> Path:
    for seed, name in enumerate(names):
        write_image(folder / name, seed=seed)
    return folder


def rewrite(path: Path, edit_tensors=None, edit_config=None) -> Path:
    """Rewrite a model file in place: its tensors through `edit_tensors(dict)`, its metadata
    config through `edit_config(dict)`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    if edit_tensors is not None:
        edit_tensors(tensors)
    if edit_config is not None:
        config = json.loads(metadata["config"])
        edit_config(config)
        metadata["config"] = json.dumps(config)
    save_file(tensors, str(path), metadata=metadata)
    return path


def model_copy(files, folder: Path) -> Path:
    shutil.copytree(files["model"], folder)
    return folder


# --------------------------------------------------------------------------- 4: token folders


def test_tokenize_skips_a_name_with_a_line_break(files, tmp_path, capsys):
    data = image_folder(tmp_path / "data", ["a.png", "b\nc.png", "d.png"])
    code, out, lines = tokenize(capsys, files, data, tmp_path / "tok")
    assert code == 0, lines
    assert "wrote 2 token grids" in out
    warning = [line for line in lines if "b\\nc.png" in line]
    assert warning and warning[0].startswith("maskgit: warning:"), lines
    tokens, names, _ = load_tokens(tmp_path / "tok")
    assert names == ["a.png", "d.png"] and len(tokens) == 2


def test_tokenize_skips_a_name_that_is_not_utf8(files, tmp_path, capsys):
    data = image_folder(tmp_path / "data", ["a.png", os.fsdecode(b"caf\xe9.png"), "d.png"])
    code, out, lines = tokenize(capsys, files, data, tmp_path / "tok")
    assert code == 0, lines
    assert "wrote 2 token grids" in out
    assert any(line.startswith("maskgit: warning:") and "caf" in line for line in lines), lines
    assert load_tokens(tmp_path / "tok")[1] == ["a.png", "d.png"]


def test_the_token_file_carries_its_names(files, tmp_path, capsys):
    """One file, written atomically: no index.txt that could be stale or missing."""
    out = tmp_path / "tok"
    out.mkdir()
    (out / INDEX_FILE).write_text("old1.png\nold2.png\n")  # an older tokenize's index
    data = image_folder(tmp_path / "data", ["new1.png", "new2.png"])
    assert tokenize(capsys, files, data, out)[0] == 0
    assert not (out / INDEX_FILE).exists()  # the stale index is gone
    assert load_tokens(out)[1] == ["new1.png", "new2.png"]
    (out / INDEX_FILE).write_text("stale.png\nstale2.png\n")  # put back by hand: ignored
    assert load_tokens(out)[1] == ["new1.png", "new2.png"]


def test_an_old_token_folder_with_index_txt_still_loads(tmp_path):
    tokens = torch.randint(0, 16, (3, 4, 4))
    meta = {"codebook_size": "16", "grid": "4"}
    save_file({"tokens": tokens.to(torch.int16)}, str(tmp_path / TOKENS_FILE), metadata=meta)
    (tmp_path / INDEX_FILE).write_text("a.png\nb.png\nc.png\n")
    loaded, names, _ = load_tokens(tmp_path)
    assert names == ["a.png", "b.png", "c.png"] and torch.equal(loaded, tokens)
    (tmp_path / INDEX_FILE).write_text("a.png\nb.png\n")
    with pytest.raises(ValueError, match="2 names for 3 token grids"):
        load_tokens(tmp_path)


# --------------------------------------------------------------------------- 8: model configs


MEASURE = (  # run the CLI, then print the process's peak memory (VmHWM, kB)
    "import sys; from maskgit.cli import main; code = main(sys.argv[1:]); "
    "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]); sys.exit(code)"
)


def _limit_memory() -> None:  # a regression fails fast instead of filling the machine
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def run_measured(*argv) -> tuple[int, str, list[str], int]:
    """`maskgit ARGV` in a subprocess -> (exit code, stdout, stderr lines, VmHWM in MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=_limit_memory,
    )
    hwm = [line for line in proc.stdout.splitlines() if line.startswith("VmHWM")]
    peak = int(hwm[0].split()[1]) // 1024 if hwm else -1
    return proc.returncode, proc.stdout, proc.stderr.strip().splitlines(), peak


@pytest.mark.parametrize("change", [{"dim": 16384}, {"dim": 10**9}, {"depth": 10**7}])
def test_a_config_larger_than_the_tensors_is_refused_before_building(change, files, tmp_path):
    model = model_copy(files, tmp_path / "model")
    rewrite(model / "transformer.safetensors", edit_config=lambda c: c.update(change))
    code, _, lines, peak = run_measured(
        *("inpaint", "--images", files["good"], "--masks", files["masks"]),
        *("--out", tmp_path / "out", "--model", model, "--no-progress", *CPU),
    )
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("maskgit: error: "), lines
    assert str(model / "transformer.safetensors") in lines[0], lines
    if "dim" in change:
        assert str(change["dim"]) in lines[0], lines  # the config's value that does not fit
    assert 0 < peak < 1024, peak  # MB: the model was never built (before: 3.4 GB at 16384)
    assert not (tmp_path / "out").exists()


def test_the_web_server_loads_through_the_same_check(files, tmp_path):
    from maskgit.app import create_app
    from web_server import running_server

    model = model_copy(files, tmp_path / "model")
    rewrite(model / "transformer.safetensors", edit_config=lambda c: c.update(dim=10**9))
    with running_server(create_app(model, device="cpu")) as base:
        for _ in range(300):
            with urllib.request.urlopen(f"{base}/api/health") as answer:
                health = json.load(answer)
            if health["status"] != "loading":
                break
            time.sleep(0.1)
    assert health["status"] == "error", health
    assert "transformer.safetensors" in health["error"] and str(10**9) in health["error"]


# --------------------------------------------------------------------------- 15: weight values


def test_weights_with_nan_are_refused_naming_the_tensor(files, tmp_path, capsys):
    model = model_copy(files, tmp_path / "model")
    path = model / "transformer.safetensors"
    name = sorted(load_file(str(path)))[0]
    rewrite(path, edit_tensors=lambda t: t[name].fill_(float("nan")))
    with pytest.raises(CheckpointError, match="not finite") as info:
        load_model(path)
    assert str(path) in str(info.value) and name in str(info.value)
    result = hostile.inpaint(capsys, files, files["good"], tmp_path / "out", model=model)
    assert_error(result, 2, path, name, "not finite")


def test_float_weights_stored_as_integers_are_refused(files, tmp_path, capsys):
    model = model_copy(files, tmp_path / "model")
    path = model / "tokenizer.safetensors"
    name = next(k for k, v in load_file(str(path)).items() if v.is_floating_point())

    def to_int64(tensors):
        tensors[name] = tensors[name].round().to(torch.int64)

    rewrite(path, edit_tensors=to_int64)
    result = hostile.inpaint(capsys, files, files["good"], tmp_path / "out", model=model)
    assert_error(result, 2, path, name, "int64", "floating")


# --------------------------------------------------------------------------- 14: messages


def test_a_float_tiff_of_0_to_255_names_the_file(files, tmp_path, capsys):
    path = tmp_path / "images" / "a.tif"
    path.parent.mkdir()
    Image.fromarray(np.full((SIZE, SIZE), 200.0, dtype=np.float32), "F").save(path)
    result = hostile.inpaint(capsys, files, path.parent, tmp_path / "out")
    assert_error(result, 2, path, "[0, 1]")


def test_a_float_tiff_in_a_training_folder_is_skipped_and_counted(tmp_path):
    folder = image_folder(tmp_path / "data", ["a.png"])
    Image.fromarray(np.full((SIZE, SIZE), 200.0, dtype=np.float32), "F").save(folder / "b.tif")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) of 2: b.tif"):
        images, names = load_folder(folder, SIZE, progress=False)
    assert names == ["a.png"] and images.shape == (1, 3, SIZE, SIZE)


def test_a_32_bit_integer_tiff_names_the_file_and_what_is_read(files, tmp_path, capsys):
    path = tmp_path / "images" / "a.tif"
    path.parent.mkdir()
    Image.fromarray(np.full((SIZE, SIZE), 100_000, dtype=np.int32), "I").save(path)
    assert Image.open(path).mode == "I"
    result = hostile.inpaint(capsys, files, path.parent, tmp_path / "out")
    assert_error(result, 2, path, "0..65535", "8-bit")


def _small_files() -> None:  # writes past 100 bytes fail (EFBIG), as on a full disk (ENOSPC)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))


def test_a_failed_write_names_the_output_file(files, tmp_path):
    images = image_folder(tmp_path / "images", ["a.png"])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    argv = ["inpaint", "--images", images, "--masks", files["masks"], "--out", out]
    proc = subprocess.run(
        [sys.executable, "-m", "maskgit.cli", *map(str, argv), "--model", files["model"]]
        + ["--no-progress", *CPU],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=_small_files,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, lines
    assert len(lines) == 1 and lines[0].startswith("maskgit: error: "), lines
    assert f"{out / 'a.png'}: File too large" in lines[0], lines
    assert ".tmp" not in lines[0]
    assert list(out.iterdir()) == []  # no temporary file left behind


def test_a_255_byte_file_name_works(files, tmp_path, capsys):
    name = "a" * (NAME_MAX - 4) + ".png"
    images = image_folder(tmp_path / "images", [name])
    mask = files["masks"] / "a.png"
    result = hostile.inpaint(capsys, files, images, tmp_path / "out", masks=mask)
    assert result[0] == 0, result[2]
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]


def test_too_long_output_names_are_refused_before_the_first_output(files, tmp_path, capsys):
    long = "b" * (NAME_MAX - 8)  # b...b.png fits; b...b_compare.png (with --save-steps) not
    images = image_folder(tmp_path / "images", ["a.png", f"{long}.png"])
    masks = tmp_path / "masks"
    for name in ("a.png", f"{long}.png"):
        write_mask(masks / name)
    result = cli(
        capsys,
        *("inpaint", "--images", images, "--masks", masks, "--out", tmp_path / "out"),
        *("--model", files["model"], "--save-steps", "--no-progress", *CPU),
    )
    assert_error(result, 2, f"{long}_tokens.png", "too long")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 6: colour profiles


def wide_gamut_profile() -> bytes:
    """An RGB ICC profile that is not sRGB (sRGB's description changed, enough to tell)."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    data = bytearray(profile.tobytes())
    data[44:48] = b"TEST"  # the device manufacturer field of the ICC header
    return bytes(data)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("command", ["inpaint", "outpaint"])
def test_the_colour_profile_is_kept(command, suffix, files, tmp_path, capsys):
    icc = wide_gamut_profile()
    assert ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip() == "RGB"
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / f"a{suffix}", icc_profile=icc)
    extra = ("--masks", files["masks"]) if command == "inpaint" else ("--pad", "4")
    result = cli(
        capsys,
        *(command, "--images", images, *extra, "--out", tmp_path / "out"),
        *("--model", files["model"], "--no-progress", *CPU),
    )
    assert result[0] == 0, result[2]
    with Image.open(tmp_path / "out" / "a.png") as out:
        assert out.info.get("icc_profile") == icc


def test_a_profile_of_another_colour_space_is_dropped(files, tmp_path, capsys):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (SIZE, SIZE), 128).save(images / "a.png", icc_profile=icc)
    result = hostile.inpaint(capsys, files, images, tmp_path / "out")
    assert result[0] == 0, result[2]
    with Image.open(tmp_path / "out" / "a.png") as out:
        assert "icc_profile" not in out.info
