"""Hostile inputs through the command line: every bad file, config or path ends in ONE line
`maskgit: error: ...` on stderr naming the file or option (no traceback), exit code 2 for
usage errors and 1 for runtime failures, and no half-written output. The table of cases is
docs/reliability.md; keep the two in step.
"""

from __future__ import annotations

import ast
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maskgit
from maskgit.checkpoint import CheckpointError, load_model, load_state, save_model, save_state
from maskgit.cli import main
from maskgit.config import get_preset
from maskgit.data import DataError, load_image, save_tokens
from maskgit.fileio import atomic_write
from maskgit.reader import MAX_IMAGE_PIXELS
from maskgit.transformer import BidirectionalTransformer
from tiny_model import write_tiny_model

torch.set_num_threads(1)

SIZE = 16  # the tiny preset's image size
CPU = ("--device", "cpu")


# --------------------------------------------------------------------------- helpers


def cli(capsys, *argv) -> tuple[int, str, list[str]]:
    """Run `maskgit ARGV` in-process -> (exit code, stdout, stderr lines).

    Stderr lines are what a terminal shows: a progress bar erased with carriage returns is
    no line; warnings (which pytest would swallow) count as `maskgit: warning:` lines.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [line.rsplit("\r", 1)[-1].strip() for line in captured.err.split("\n")]
    lines = [line for line in lines if line]
    lines += [f"maskgit: warning: {w.message}" for w in caught]
    return code, captured.out, lines


def assert_error(result, code: int, *names) -> str:
    """Exit `code`, exactly one stderr line `maskgit: error: ...` containing every name."""
    got, _, lines = result
    assert got == code, lines
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("maskgit: error: ") and "Traceback" not in line, line
    for name in names:
        assert str(name) in line, (name, line)
    return line


def assert_nothing_written(path: Path) -> None:
    """`path` does not exist, or holds no file at all (not even a temporary one)."""
    if path.exists():
        assert [p for p in path.rglob("*") if p.is_file()] == []


def write_image(path: Path, size: int = SIZE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_mask(path: Path, size: int = SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    Image.fromarray(mask).save(path)
    return path


def token_folder(folder: Path, count: int = 16, codebook: int = 16) -> Path:
    tokens = torch.randint(0, codebook, (count, 4, 4), generator=torch.Generator().manual_seed(0))
    names = [f"img{i}.png" for i in range(count)]
    save_tokens(folder, tokens, names, {"codebook_size": codebook, "grid": 4})
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Inputs shared by the tests (read only): a model, images, masks, tokens, a plain file."""
    root = tmp_path_factory.mktemp("hostile")
    good = write_image(root / "good" / "a.png")
    for i in range(12):  # enough for a tokenizer batch of 8 after the validation split
        write_image(root / "many" / f"img{i}.png", seed=i)
    write_mask(root / "masks" / "a.png")
    (root / "afile").write_text("a regular file, not a folder\n")
    bomb = root / "bomb" / "a.png"
    bomb.parent.mkdir()
    Image.new("1", (10_000, 10_000)).save(bomb)  # 100 MP, ~12 kB on disk
    return {
        "root": root,
        "model": write_tiny_model(root / "model"),
        "good": good.parent,
        "many": root / "many",
        "masks": root / "masks",
        "tokens": token_folder(root / "tokens", count=64),
        "afile": root / "afile",
        "bomb": bomb,
    }


def inpaint(capsys, files, images, out, masks=None, model=None):
    return cli(
        capsys,
        "inpaint",
        "--images",
        images,
        "--masks",
        masks or files["masks"],
        "--out",
        out,
        "--model",
        model or files["model"],
        "--no-progress",
        *CPU,
    )


def train(capsys, files, out, *extra, tokens=None):
    args = ["train", "--config", "tiny", "--tokens", tokens or files["tokens"], "--out", out]
    return cli(capsys, *args, "--no-progress", *extra, *CPU)


# --------------------------------------------------------------------------- image files


def _bad_image(kind: str, folder: Path, files) -> Path:
    path = folder / "a.png"
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes((files["good"] / "a.png").read_bytes()[:100])
    elif kind == "text":
        path.write_text("this is not a PNG\n")
    return path


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("zero-byte", "empty file (0 bytes)"),
        ("truncated", "not a readable image"),
        ("text", "not a readable image"),
    ],
)
def test_broken_image_files(kind, says, files, tmp_path, capsys):
    bad = _bad_image(kind, tmp_path / "images", files)
    assert_error(inpaint(capsys, files, bad.parent, tmp_path / "out"), 2, bad, says)
    assert_nothing_written(tmp_path / "out")
    # a folder of nothing but broken images: one error naming the folder and the first file
    result = cli(
        capsys,
        *("train-tokenizer", "--config", "tiny", "--data", bad.parent, "--out", tmp_path / "run"),
        *("--no-progress", *CPU),
    )
    assert_error(result, 2, bad.parent, bad, "could be read")
    assert_nothing_written(tmp_path / "run")
    result = cli(
        capsys,
        "tokenize",
        "--tokenizer",
        files["model"],
        "--data",
        bad.parent,
        "--out",
        tmp_path / "tok",
        *CPU,
    )
    assert_error(result, 2, bad, says)
    assert_nothing_written(tmp_path / "tok")


def test_decompression_bomb_rejected(files, tmp_path, capsys):
    bomb = files["bomb"]
    assert bomb.stat().st_size < 100_000  # cheap on disk, 100 MP when decoded
    with pytest.raises(DataError, match="pixel limit") as info:
        load_image(bomb)
    assert str(bomb) in str(info.value) and "10000x10000" in str(info.value)
    line = assert_error(inpaint(capsys, files, bomb.parent, tmp_path / "out"), 2, bomb)
    assert f"{MAX_IMAGE_PIXELS:,}-pixel limit" in line  # and no PIL warning line before it
    assert_nothing_written(tmp_path / "out")


def test_decompression_bomb_over_pils_own_limit(tmp_path, capsys):
    """Over 179 MP PIL refuses to open the file itself: still one line naming the file."""
    bomb = tmp_path / "a.png"
    Image.new("1", (1, 1)).save(bomb)
    data = bytearray(bomb.read_bytes())  # rewrite the header: 15000 x 15000 (225 MP)
    data[16:24] = struct.pack(">II", 15_000, 15_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    bomb.write_bytes(bytes(data))
    with pytest.raises(DataError, match="decompression-bomb guard") as info:
        load_image(bomb)
    assert str(bomb) in str(info.value)


def test_one_pixel_image_comes_back_at_its_size(files, tmp_path, capsys):
    """Decision: any size is accepted and comes back at its own size (the model fills it
    enlarged to its resolution); its mask must have the same size as the image."""
    image = write_image(tmp_path / "images" / "a.png", size=1)
    mask = write_mask(tmp_path / "masks1" / "a.png", size=1)
    code, out, lines = inpaint(capsys, files, image.parent, tmp_path / "out", masks=mask.parent)
    assert code == 0, lines
    assert not lines, lines
    with Image.open(tmp_path / "out" / "a.png") as result:
        assert result.size == (1, 1) and result.mode == "RGB"
    # with the usual 16x16 mask: sizes differ -> an error naming both
    result = inpaint(capsys, files, image.parent, tmp_path / "out2")
    assert_error(result, 2, image, files["masks"] / "a.png", "1x1", "16x16")
    assert_nothing_written(tmp_path / "out2")


def test_mask_of_another_size(files, tmp_path, capsys):
    mask = write_mask(tmp_path / "masks" / "a.png", size=32)
    result = inpaint(capsys, files, files["good"], tmp_path / "out", masks=mask.parent)
    assert_error(result, 2, files["good"] / "a.png", mask, "16x16", "32x32")
    assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("field", ["codebook_size", "num_tokens"])
def test_model_folder_of_two_presets(field, files, tmp_path, capsys):
    """A transformer built for another codebook / grid than its tokenizer."""
    other = get_preset("tiny").transformer
    setattr(other, field, 32 if field == "codebook_size" else 64)
    folder = write_tiny_model(tmp_path / "mixed", transformer_cfg=other)
    result = inpaint(capsys, files, files["good"], tmp_path / "out", model=folder)
    assert_error(result, 2, folder, "tokenizer")
    assert_nothing_written(tmp_path / "out")


def test_tokenizer_file_as_transformer(files, tmp_path, capsys):
    tokenizer_file = files["model"] / "tokenizer.safetensors"
    with pytest.raises(CheckpointError, match="holds a tokenizer, expected a transformer"):
        load_model(tokenizer_file, "transformer")
    folder = tmp_path / "swapped"
    folder.mkdir()
    (folder / "tokenizer.safetensors").write_bytes(tokenizer_file.read_bytes())
    (folder / "transformer.safetensors").write_bytes(tokenizer_file.read_bytes())
    result = inpaint(capsys, files, files["good"], tmp_path / "out", model=folder)
    assert_error(result, 2, folder / "transformer.safetensors", "holds a tokenizer")
    result = cli(
        capsys,
        "tokenize",
        "--tokenizer",
        files["model"] / "transformer.safetensors",
        "--data",
        files["good"],
        "--out",
        tmp_path / "tok",
        *CPU,
    )
    assert_error(result, 2, "transformer.safetensors", "expected a tokenizer")
    assert_nothing_written(tmp_path / "tok")


def test_truncated_safetensors(files, tmp_path, capsys):
    folder = tmp_path / "cut"
    folder.mkdir()
    for name in ("tokenizer.safetensors", "transformer.safetensors"):
        (folder / name).write_bytes((files["model"] / name).read_bytes())
    data = (folder / "transformer.safetensors").read_bytes()
    (folder / "transformer.safetensors").write_bytes(data[: len(data) // 2])
    result = inpaint(capsys, files, files["good"], tmp_path / "out", model=folder)
    assert_error(result, 2, folder / "transformer.safetensors", "safetensors")
    assert_nothing_written(tmp_path / "out")
    result = cli(
        capsys,
        "tokenize",
        "--tokenizer",
        folder / "transformer.safetensors",
        "--data",
        files["good"],
        "--out",
        tmp_path / "tok",
        *CPU,
    )
    assert_error(result, 2, folder / "transformer.safetensors")
    tokens = tmp_path / "tokens"
    token_folder(tokens)
    data = (tokens / "tokens.safetensors").read_bytes()
    (tokens / "tokens.safetensors").write_bytes(data[: len(data) // 2])
    assert_error(train(capsys, files, tmp_path / "run", tokens=tokens), 2, "tokens.safetensors")
    assert_nothing_written(tmp_path / "run")


@pytest.fixture
def trained_run(files, tmp_path, capsys) -> Path:
    """A tiny transformer run after one optimiser step."""
    run = tmp_path / "run"
    code, _, lines = train(capsys, files, run, "--set", "transformer_training.max_steps=1")
    assert code == 0, lines
    return run


def test_resume_with_another_preset(files, trained_run, capsys):
    state = trained_run / "latest.state.pt"
    before = state.read_bytes()
    result = train(capsys, files, trained_run, "--resume", "--set", "transformer.dim=64")
    assert_error(result, 2, trained_run / "config.yaml", "transformer.dim 32 -> 64")  # (#29.7)
    assert state.read_bytes() == before  # nothing overwritten
    (trained_run / "config.yaml").unlink()  # no record of the run's config: the state says it
    result = train(capsys, files, trained_run, "--resume", "--set", "transformer.dim=64")
    assert_error(result, 2, state, "does not fit this run")
    assert state.read_bytes() == before


def test_resume_from_truncated_state(files, trained_run, capsys):
    state = trained_run / "latest.state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    assert_error(train(capsys, files, trained_run, "--resume"), 2, state, "unreadable")


def test_tokens_of_another_tokenizer(files, tmp_path, capsys):
    tokens = token_folder(tmp_path / "tokens", codebook=32)
    result = train(capsys, files, tmp_path / "run", tokens=tokens)
    assert_error(result, 2, tokens, "codebook 32")
    assert_nothing_written(tmp_path / "run")


# --------------------------------------------------------------------------- untrusted pickles


class _Bomb:
    """Unpickling this runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickle_bomb_state_never_runs(files, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    run = tmp_path / "run"
    run.mkdir()
    bomb = run / "latest.state.pt"
    torch.save({"position": {"step": 1}, "payload": _Bomb(f"touch '{marker}'")}, bomb)
    with pytest.raises(CheckpointError) as info:
        load_state(bomb)
    assert str(bomb) in str(info.value)
    assert not marker.exists()
    assert_error(train(capsys, files, run, "--resume"), 2, bomb)
    assert not marker.exists()
    # the control: the file really is a bomb for an unsafe loader
    torch.load(bomb, weights_only=False)
    assert marker.exists()


def test_src_never_unpickles_untrusted_data():
    """Every torch.load passes weights_only=True, np.load never allows pickles, and no module
    imports pickle (or its relatives)."""
    loads = 0
    for file in sorted(Path(maskgit.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                banned = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve"}
                assert not banned & {m.split(".")[0] for m in modules}, f"{file}:{node.lineno}"
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load") or name == "load" and "weights_only" in keywords:
                loads += 1
                value = keywords.get("weights_only")
                assert value is not None and ast.literal_eval(value) is True, (
                    f"{file}:{node.lineno}"
                )
            if name in ("np.load", "numpy.load") and "allow_pickle" in keywords:
                assert ast.literal_eval(keywords["allow_pickle"]) is False, f"{file}:{node.lineno}"
    assert loads >= 1  # checkpoint.load_state


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("preset: tiny\ntransformer:\n  bogus_key: 1\n", "'bogus_key'"),
        ("preset: tiny\ntransformer_training:\n  epochs: many\n", "expected an integer"),
        ("preset: tiny\ntransformer: [1, 2\n", "not valid YAML (line 3"),
        ("preset: tiny\nnot_a_section: {}\n", "unknown section"),
        ("preset: nope\n", "preset 'nope'"),
    ],
    ids=["unknown-key", "wrong-type", "broken-yaml", "unknown-section", "unknown-preset"],
)
def test_bad_yaml_config(text, says, files, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    result = cli(
        capsys,
        "train",
        "--config",
        config,
        "--tokens",
        files["tokens"],
        "--out",
        tmp_path / "run",
        "--no-progress",
        *CPU,
    )
    assert_error(result, 2, config, says)
    assert_nothing_written(tmp_path / "run")
    assert_error(cli(capsys, "info", "--preset", config), 2, config, says)


def test_binary_file_as_config(files, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    assert_error(cli(capsys, "info", "--preset", config), 2, config, "not valid YAML")


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("transformer_training.epochs=x", "transformer_training.epochs"),
        ("transformer_training.nope=1", "'nope'"),
        ("transformer_training.betas=[0.9", "--set"),
        ("epochs=3", "--set"),
        ("transformer.dim=33", "heads"),
        ("transformer_training.mask_schedule=bogus", "transformer_training.mask_schedule"),
    ],
    ids=["wrong-type", "unknown-key", "broken-yaml", "no-section", "invalid-combo", "schedule"],
)
def test_bad_set_override(override, says, files, tmp_path, capsys):
    result = train(capsys, files, tmp_path / "run", "--set", override)
    assert_error(result, 2, says)
    assert_nothing_written(tmp_path / "run")


# --------------------------------------------------------------------------- paths


def test_paths_that_do_not_exist(files, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "missing"
    out = tmp_path / "out"
    assert_error(inpaint(capsys, files, missing, out), 2, missing)
    assert_error(inpaint(capsys, files, files["good"], out, masks=missing), 2, missing)
    assert_error(inpaint(capsys, files, files["good"], out, model=missing), 2, missing)
    assert_error(train(capsys, files, out, tokens=missing), 2, missing)
    assert_error(train(capsys, files, out, "--resume"), 2, "--resume", "latest.state.pt")
    result = cli(
        capsys,
        "train-tokenizer",
        "--config",
        "tiny",
        "--data",
        missing,
        "--out",
        out,
        "--no-progress",
        *CPU,
    )
    assert_error(result, 2, missing)
    tokenize = ("tokenize", "--out", out, *CPU)
    assert_error(
        cli(capsys, *tokenize, "--tokenizer", files["model"], "--data", missing), 2, missing
    )
    assert_error(
        cli(capsys, *tokenize, "--tokenizer", missing, "--data", files["good"]), 2, missing
    )
    config = tmp_path / "nope.yaml"
    assert_error(
        cli(capsys, "train", "--config", config, "--tokens", files["tokens"], "--out", out, *CPU),
        2,
        config,
    )
    assert_error(cli(capsys, "info", "--preset", "nope"), 2, "'nope'", "tiny")
    # fid: the missing folder is named even when the Inception weights are missing too
    monkeypatch.setenv("MASKGIT_INCEPTION", str(tmp_path / "no-weights.pt"))
    assert_error(cli(capsys, "fid", missing, files["good"], *CPU), 2, missing)
    assert_error(cli(capsys, "fid", files["good"], missing, *CPU), 2, missing)
    assert_nothing_written(out)


def test_output_under_a_regular_file(files, tmp_path, capsys):
    """--out below a regular file cannot be written, even by root: exit 1 naming the path,
    nothing written anywhere."""
    out = files["afile"] / "sub"
    assert_error(inpaint(capsys, files, files["good"], out), 1, out, "Not a directory")
    generate = ("generate", "--n", "1", "--out", out, "--model", files["model"], "--no-progress")
    assert_error(cli(capsys, *generate, *CPU), 1, out, "Not a directory")
    assert_error(train(capsys, files, out), 1, out, "Not a directory")
    result = cli(
        capsys,
        "train-tokenizer",
        "--config",
        "tiny",
        "--data",
        files["many"],
        "--out",
        out,
        "--no-progress",
        *CPU,
    )
    assert_error(result, 1, out, "Not a directory")
    result = cli(
        capsys,
        "tokenize",
        "--tokenizer",
        files["model"],
        "--data",
        files["good"],
        "--out",
        out,
        *CPU,
    )
    assert_error(result, 1, out, "Not a directory")
    # --out naming an existing regular file is a usage error, found before any work
    result = inpaint(capsys, files, files["good"], files["afile"])
    assert_error(result, 2, files["afile"], "not a folder")
    assert files["afile"].read_text() == "a regular file, not a folder\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through 0o555; see the test above")
def test_output_folder_without_write_permission(files, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        out = locked / "out"
        assert_error(inpaint(capsys, files, files["good"], out), 1, out, "Permission denied")
        assert_error(train(capsys, files, out), 1, out, "Permission denied")
    finally:
        locked.chmod(0o755)
    assert_nothing_written(locked)


# --------------------------------------------------------------------------- runtime failures


def test_too_few_training_items_is_a_runtime_error(files, tmp_path, capsys):
    tokens = token_folder(tmp_path / "tokens", count=4)
    result = train(capsys, files, tmp_path / "run", tokens=tokens)
    assert_error(result, 1, "fewer than batch_size=8")
    assert_nothing_written(tmp_path / "run")


def test_debug_shows_the_traceback(files, tmp_path, capsys):
    with pytest.raises(DataError):
        main(
            [
                "inpaint",
                "--images",
                str(tmp_path / "missing"),
                "--masks",
                str(files["masks"]),
                "--out",
                str(tmp_path / "out"),
                "--model",
                str(files["model"]),
                "--debug",
            ]
        )


# --------------------------------------------------------------------------- atomic writes


def test_atomic_files_get_the_usual_permissions(tmp_path):
    """Saved files are readable like any file the user creates (not mkstemp's 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "model.safetensors"
    save_model(BidirectionalTransformer(get_preset("tiny").transformer), path)
    save_state({"step": torch.tensor(1)}, tmp_path / "latest.state.pt")
    atomic_write(tmp_path / "x.txt", lambda tmp: tmp.write_text("x"))
    for name in ("model.safetensors", "latest.state.pt", "x.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest.state.pt",
        "model.safetensors",
        "x.txt",
    ]
