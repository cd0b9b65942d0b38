"""Training: exact resume (epoch boundary, mid-epoch, mid-step, after a crash), the adaptive
GAN weight, the run folder's files, non-finite losses, and bad inputs through the CLI.

Tiny preset, ~40 random coloured-shape images of 16x16 (31 train / 9 val by the hash split,
3 optimiser steps per epoch). The torchrun test is in test_ddp.py. The tokenizer's sample grid
is copied to test-artifacts/train/ (the path is printed): look at it.
"""

from __future__ import annotations

import csv
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from maskgit.checkpoint import load_model, load_state
from maskgit.cli import main
from maskgit.config import get_preset, load_config, to_dict
from maskgit.data import load_folder, save_tokens, split_indices, to_model_range, to_uint8
from maskgit.tokenizer.losses import adaptive_gan_weight, generator_loss, hinge_d_loss
from maskgit.tokenizer.model import VQGAN
from maskgit.train import (
    STATE_FILE,
    StepOutput,
    TokenizerTask,
    TrainingError,
    TransformerTask,
    train_tokenizer,
    train_transformer,
)

torch.set_num_threads(1)

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "train"
N_IMAGES = 40
SIZE = 16
NAMES = [f"shape{i:03d}.png" for i in range(N_IMAGES)]
STEPS_PER_EPOCH = len(split_indices(NAMES, 0.2)[0]) // 8  # tiny: batch 8, val_fraction 0.2


def shapes(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """n images (n, size, size, 3) uint8: a coloured background with a disc and a square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = rng.integers(0, 256, 3)
        for kind in ("disc", "square"):
            cx, cy = rng.uniform(2, size - 2, 2)
            r = rng.uniform(size / 8, size / 3)
            if kind == "disc":
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            else:
                inside = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
            images[i][inside] = rng.integers(0, 256, 3)
    return images


def write_pngs(folder: Path, images: np.ndarray, prefix: str = "shape") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}{i:03d}.png" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    return paths


IMAGES = torch.from_numpy(shapes(N_IMAGES)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 16, 16)
TOKENS = torch.randint(0, 16, (N_IMAGES, 4, 4), generator=torch.Generator().manual_seed(0))


def tokenizer_preset():
    """Tiny, with the GAN on from the first step (so every logged row has g_loss)."""
    preset = get_preset("tiny")
    preset.tokenizer_training.disc_start = 0
    return preset


def transformer_preset():
    """Tiny, with dropout, EMA and region masks: resume must restore the RNGs and the EMA."""
    preset = get_preset("tiny")
    preset.transformer.dropout = 0.1
    preset.transformer.attn_dropout = 0.1
    preset.transformer_training.ema_decay = 0.9
    preset.transformer_training.region_mask_fraction = 0.5
    return preset


KINDS = {
    "tokenizer": (tokenizer_preset, TokenizerTask),
    "transformer": (transformer_preset, TransformerTask),
}


def run(kind: str, out: Path, resume: bool = False, checkpoint_steps: int = 0):
    preset = KINDS[kind][0]()
    train = train_tokenizer if kind == "tokenizer" else train_transformer
    data = IMAGES if kind == "tokenizer" else TOKENS
    return train(
        preset,
        data,
        NAMES,
        out,
        resume=resume,
        device="cpu",
        progress=False,
        checkpoint_steps=checkpoint_steps,
    )


def fail_at(monkeypatch, task_cls, at_step: int, exc: BaseException) -> None:
    """Make task_cls.step raise `exc` at optimiser step `at_step`, after its forward pass
    (so the dropout RNG has moved on: the worst moment for a Ctrl-C)."""
    original = task_cls.step

    def step(self, batch, step, rng, offset, global_batch):
        out = original(self, batch, step, rng, offset, global_batch)
        if step == at_step:
            raise exc
        return out

    monkeypatch.setattr(task_cls, "step", step)


def max_diff(a, b) -> float:
    """Largest absolute difference between two nested structures of tensors/numbers."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max([max_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max([max_diff(x, y) for x, y in zip(a, b, strict=True)] or [0.0])
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype
        if not a.is_floating_point():
            return float((a != b).any())
        return float((a - b).abs().max()) if a.numel() else 0.0
    assert a == b
    return 0.0


def assert_same_run(a: Path, b: Path, name: str) -> None:
    """Same weights, EMA, optimiser state, RNG and position; same exported model."""
    sa, sb = load_state(a / STATE_FILE), load_state(b / STATE_FILE)
    assert sa["position"] == sb["position"]
    assert max_diff(sa["modules"], sb["modules"]) <= 1e-6
    assert max_diff(sa["ema"], sb["ema"]) <= 1e-6
    assert max_diff(sa["optimizer"], sb["optimizer"]) <= 1e-6
    assert torch.equal(sa["rng"], sb["rng"])
    ma, mb = load_model(a / f"{name}.safetensors"), load_model(b / f"{name}.safetensors")
    assert max_diff(ma.state_dict(), mb.state_dict()) <= 1e-6


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, Path]:
    """Both stages trained for 2 epochs without interruption (the reference runs)."""
    root = tmp_path_factory.mktemp("straight")
    for kind in KINDS:
        run(kind, root / kind)
    return {kind: root / kind for kind in KINDS}


# --------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize(
    ("kind", "at_step"),
    [
        ("tokenizer", STEPS_PER_EPOCH),  # first step of epoch 2 (after epoch 1's validation)
        ("transformer", STEPS_PER_EPOCH),
        ("transformer", STEPS_PER_EPOCH + 1),  # mid-epoch
    ],
)
def test_ctrl_c_then_resume_equals_straight_run(kind, at_step, straight, tmp_path, monkeypatch):
    out = tmp_path / kind
    with monkeypatch.context() as patch:
        fail_at(patch, KINDS[kind][1], at_step, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            run(kind, out)
    # Ctrl-C left a loadable `latest` at the last completed step, and a loadable model file.
    state = load_state(out / STATE_FILE)
    assert state["position"]["step"] == at_step
    assert state["position"]["epoch"] == at_step // STEPS_PER_EPOCH
    load_model(out / f"{kind}.safetensors", expected_kind=kind)
    run(kind, out, resume=True)
    assert_same_run(out, straight[kind], kind)


@pytest.mark.parametrize("kind", list(KINDS))
def test_resume_from_mid_epoch_checkpoint_after_a_crash(kind, straight, tmp_path, monkeypatch):
    """A crash saves nothing; `checkpoint_steps` left a mid-epoch `latest` to resume from."""
    out = tmp_path / kind
    crash_step = STEPS_PER_EPOCH + 2  # epoch 2, third batch
    with monkeypatch.context() as patch:
        fail_at(patch, KINDS[kind][1], crash_step, RuntimeError("power cut"))
        with pytest.raises(RuntimeError, match="power cut"):
            run(kind, out, checkpoint_steps=1)
    position = load_state(out / STATE_FILE)["position"]
    assert (position["step"], position["epoch"], position["batch"]) == (crash_step, 1, 2)
    run(kind, out, resume=True, checkpoint_steps=1)
    assert_same_run(out, straight[kind], kind)


def test_training_is_seeded_by_the_config_not_the_global_rng(straight, tmp_path):
    torch.manual_seed(12345)  # whatever the caller's RNG state, the config's seed decides
    run("transformer", tmp_path / "again")
    assert_same_run(tmp_path / "again", straight["transformer"], "transformer")


# --------------------------------------------------------------------------- adaptive GAN weight


def test_adaptive_gan_weight_is_the_ratio_of_gradient_norms():
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(3, 5))
    x = torch.randn(7, 5)

    def losses():
        out = x @ weight.t()
        return out.abs().mean(), -(out.sin() * 0.01).mean()  # rec, g

    def grad_norm(loss):
        (grad,) = torch.autograd.grad(loss, weight)
        return float(grad.norm())

    rec, g = losses()
    expected = grad_norm(losses()[0]) / (grad_norm(losses()[1]) + 1e-4)
    got = adaptive_gan_weight(rec, g, weight)
    assert got.grad_fn is None and not got.requires_grad  # a constant for the backward pass
    assert math.isclose(float(got), expected, rel_tol=1e-5)
    (rec + got * g).backward()  # the graph survives for the real backward pass
    assert weight.grad is not None
    # A generator loss with no gradient at the layer gives a huge ratio: clamped.
    rec, _ = losses()
    flat = (weight * 0).sum()
    assert float(adaptive_gan_weight(rec, flat, weight, max_weight=50.0)) == 50.0


def _task_and_batch(disc_start: int):
    preset = get_preset("tiny")
    preset.tokenizer_training.disc_start = disc_start
    torch.manual_seed(0)
    task = TokenizerTask(VQGAN(preset.tokenizer).train(), preset.tokenizer_training)
    batch = IMAGES[:8].float() / 127.5 - 1.0
    return task, batch, preset.tokenizer_training


def test_gan_terms_are_off_before_disc_start_and_on_after():
    task, batch, cfg = _task_and_batch(disc_start=5)
    vqgan, disc = task.nets["tokenizer"], task.nets["discriminator"]
    before = task.step(batch, 4, None, 0, 8)
    assert not {"g_loss", "d_loss", "gan_weight"} & before.metrics.keys()
    expected = (before.metrics["rec"] + before.metrics["vq"]) * 8
    assert math.isclose(before.loss_sum.detach().item(), expected, rel_tol=1e-5)
    before.loss_sum.backward()
    assert all(p.grad is None for p in disc.parameters())  # the critic is not trained yet
    vqgan.zero_grad()

    after = task.step(batch, 5, None, 0, 8)
    assert {"g_loss", "d_loss", "gan_weight"} <= after.metrics.keys()
    assert after.metrics["gan_weight"] > 0
    total = after.metrics["rec"] + after.metrics["vq"] + after.metrics["d_loss"]
    total += after.metrics["gan_weight"] * after.metrics["g_loss"]
    assert math.isclose(after.loss_sum.detach().item(), total * 8, rel_tol=1e-4)
    assert cfg.disc_weight > 0


def test_generator_term_trains_the_decoder_but_never_the_discriminator():
    task, batch, cfg = _task_and_batch(disc_start=0)
    vqgan, disc = task.nets["tokenizer"], task.nets["discriminator"]
    out = task.step(batch, 0, None, 0, 8)
    out.loss_sum.backward()
    got_disc = {n: p.grad.clone() for n, p in disc.named_parameters()}
    got_last = vqgan.last_layer_weight.grad.clone()
    weight = out.metrics["gan_weight"]

    # Independently: the critic's gradient is that of the hinge loss alone on real + fake.
    disc.zero_grad()
    vqgan.zero_grad()
    recon, vq = vqgan(batch)
    logits_real, logits_fake = disc(torch.cat([batch, recon.detach()])).chunk(2)
    (8 * hinge_d_loss(logits_real, logits_fake)).backward()
    for name, p in disc.named_parameters():
        torch.testing.assert_close(got_disc[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)

    # ...and the decoder's last layer gets reconstruction + VQ + weight * generator loss.
    recon, vq = vqgan(batch)
    rec = (recon - batch).abs().mean()
    g = generator_loss(disc(recon))
    (expected,) = torch.autograd.grad(
        8 * (rec + vq.loss + weight * g), vqgan.last_layer_weight, retain_graph=True
    )
    torch.testing.assert_close(got_last, expected, rtol=1e-4, atol=1e-6)
    (without_gan,) = torch.autograd.grad(8 * (rec + vq.loss), vqgan.last_layer_weight)
    assert (got_last - without_gan).abs().max() > 1e-6  # the GAN term does reach the generator


# --------------------------------------------------------------------------- run folder


def _metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("kind", list(KINDS))
def test_run_folder_has_state_models_metrics_and_config(kind, straight):
    out = straight[kind]
    for file in (
        STATE_FILE,
        f"{kind}.safetensors",
        f"{kind}-best.safetensors",
        f"{kind}-epoch001.safetensors",
        f"{kind}-epoch002.safetensors",
    ):
        assert (out / file).is_file(), file
    for file in (f"{kind}.safetensors", f"{kind}-best.safetensors"):
        assert load_model(out / file, expected_kind=kind) is not None
    state = load_state(out / STATE_FILE)
    assert state["position"] == {
        "step": 2 * STEPS_PER_EPOCH,
        "epoch": 2,
        "batch": 0,
        "best": state["position"]["best"],
    }
    assert math.isfinite(state["position"]["best"])
    assert to_dict(load_config(out / "config.yaml")) == to_dict(KINDS[kind][0]())

    rows = _metrics(out / "metrics.csv")
    assert {r["split"] for r in rows} == {"train", "val"}
    train = {r["metric"] for r in rows if r["split"] == "train"}
    val = [r for r in rows if r["split"] == "val"]
    assert {"loss", "lr", "images_per_s"} <= train
    assert {r["epoch"] for r in val} == {"0", "1"}  # one validation per epoch
    assert all(math.isfinite(float(r["value"])) for r in rows)
    if kind == "tokenizer":
        assert {"rec", "vq", "perplexity", "usage", "g_loss", "d_loss", "gan_weight"} <= train
        assert {"loss", "psnr", "usage"} <= {r["metric"] for r in val}
    else:
        assert "accuracy" in train
        assert {"loss", "accuracy"} <= {r["metric"] for r in val}


def test_tokenizer_writes_a_reconstruction_grid(straight):
    out = straight["tokenizer"]
    grids = sorted((out / "samples").glob("recon-epoch*.png"))
    assert [g.name for g in grids] == ["recon-epoch001.png", "recon-epoch002.png"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(grids[-1], ARTIFACTS / "tokenizer_recon_grid.png")
    print(f"tokenizer sample grid: {ARTIFACTS / 'tokenizer_recon_grid.png'}")
    grid = np.asarray(Image.open(grids[-1]).convert("RGB")).astype(int)
    # Up to 8 validation images (top row) above their reconstructions by the final weights.
    preview = IMAGES[split_indices(NAMES, 0.2)[1][:8]]
    model = load_model(out / "tokenizer.safetensors", expected_kind="tokenizer")
    with torch.no_grad():
        recon = to_uint8(model(to_model_range(preview))[0])
    pad = 2
    assert grid.shape == (2 * (SIZE + pad) + pad, len(preview) * (SIZE + pad) + pad, 3)
    for i in range(len(preview)):
        x = pad + i * (SIZE + pad)
        top = grid[pad : pad + SIZE, x : x + SIZE]
        bottom = grid[2 * pad + SIZE : 2 * pad + 2 * SIZE, x : x + SIZE]
        assert np.array_equal(top, preview[i].permute(1, 2, 0).numpy())
        assert np.abs(bottom - recon[i].permute(1, 2, 0).numpy()).max() <= 1
    assert grid[pad : pad + SIZE].std() > 20  # pictures, not a flat colour


# --------------------------------------------------------------------------- non-finite loss


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = TransformerTask.step

    def step(self, batch, step, rng, offset, global_batch):
        out = original(self, batch, step, rng, offset, global_batch)
        if step == 2:
            return StepOutput(out.loss_sum * float("nan"), out.count, out.metrics)
        return out

    monkeypatch.setattr(TransformerTask, "step", step)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 2"):
        train_transformer(
            get_preset("tiny"), TOKENS, NAMES, out, progress=False, checkpoint_steps=1
        )
    state = load_state(out / STATE_FILE)
    assert state["position"]["step"] == 2  # saved after step index 1, nothing after
    assert all(torch.isfinite(t).all() for t in state["modules"]["transformer"].values())
    model = load_model(out / "transformer.safetensors", expected_kind="transformer")
    assert max_diff(model.state_dict(), state["modules"]["transformer"]) == 0.0


# --------------------------------------------------------------------------- CLI inputs


def cli_error(capsys, argv: list[str], code: int = 2) -> str:
    """Run the CLI expecting exit `code` and one line `maskgit: error: ...`, no traceback.

    (Image loading may draw a transient progress bar on stderr, ended by a carriage return.)
    """
    assert main(argv) == code
    err = capsys.readouterr().err
    errors = [line.strip() for line in err.splitlines() if "maskgit: error: " in line]
    assert len(errors) == 1 and errors[0].startswith("maskgit: error: "), err
    assert "Traceback" not in err
    return errors[0]


TRAIN_TOK = ["train-tokenizer", "--config", "tiny", "--no-progress", "--device", "cpu"]
TRAIN_TR = ["train", "--config", "tiny", "--no-progress", "--device", "cpu"]
ONE_STEP = ["--set", "tokenizer_training.epochs=1", "--set", "tokenizer_training.max_steps=1"]


def test_cli_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    err = cli_error(capsys, [*TRAIN_TOK, "--data", str(missing), "--out", str(tmp_path / "r")])
    assert str(missing) in err and "does not exist" in err


def test_cli_empty_and_non_image_folders(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = cli_error(capsys, [*TRAIN_TOK, "--data", str(empty), "--out", str(tmp_path / "r")])
    assert str(empty) in err and "no image files" in err

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "data.csv").write_text("a,b\n")
    with pytest.warns(UserWarning, match="skipped 2 non-image file"):
        err = cli_error(capsys, [*TRAIN_TOK, "--data", str(junk), "--out", str(tmp_path / "r")])
    assert str(junk) in err and "no image files" in err

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fake.png").write_text("not a png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        err = cli_error(capsys, [*TRAIN_TOK, "--data", str(broken), "--out", str(tmp_path / "r")])
    assert str(broken) in err and "could be read" in err


def test_cli_skips_non_image_files_and_still_trains(tmp_path, capsys):
    data = tmp_path / "mixed"
    write_pngs(data, shapes(12))
    (data / "README.txt").write_text("not an image")
    (data / "labels.json").write_text("{}")
    (data / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "run"
    with pytest.warns(UserWarning) as record:
        code = main([*TRAIN_TOK, *ONE_STEP, "--data", str(data), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    messages = " ".join(str(w.message) for w in record)
    assert "skipped 2 non-image file(s)" in messages
    assert "skipped 1 unreadable image(s)" in messages and "truncated.png" in messages
    assert load_model(out / "tokenizer.safetensors", expected_kind="tokenizer") is not None
    assert "training tokenizer on 12 images" in capsys.readouterr().out


def test_load_folder_converts_modes_and_sizes(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(folder / "a.png")
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:8, :, 3] = 255  # top half opaque red, bottom half transparent -> white
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(folder / "c.jpg")
    Image.fromarray(shapes(1, 32)[0]).convert("P").save(folder / "d.gif")
    Image.fromarray(rng.integers(0, 256, (8, 8, 2), dtype=np.uint8), "LA").save(folder / "e.png")
    images, names = load_folder(folder, 16, progress=False)
    assert names == ["a.png", "b.png", "c.jpg", "d.gif", "e.png"]
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.uint8
    gray = images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert images[1, :, 2, 5].tolist() == [255, 0, 0]
    assert images[1, :, 13, 5].tolist() == [255, 255, 255]


def _token_folder(folder: Path, codebook: int) -> Path:
    tokens = torch.randint(0, codebook, (N_IMAGES, 4, 4), generator=torch.Generator())
    save_tokens(folder, tokens, NAMES, {"codebook_size": codebook, "grid": 4})
    return folder


def test_cli_tokens_from_another_tokenizer(tmp_path, capsys):
    tokens = _token_folder(tmp_path / "tokens32", codebook=32)
    err = cli_error(capsys, [*TRAIN_TR, "--tokens", str(tokens), "--out", str(tmp_path / "r")])
    assert "codebook 32" in err and "16" in err and str(tokens) in err


def test_cli_token_folder_without_tokens(tmp_path, capsys):
    (tmp_path / "t").mkdir()
    err = cli_error(capsys, [*TRAIN_TR, "--tokens", str(tmp_path / "t"), "--out", str(tmp_path)])
    assert "tokens.safetensors" in err and "maskgit tokenize" in err


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("preset: tiny\ntransformer_training:\n  learning_rate: 0.1\n", "learning_rate"),
        ("preset: tiny\ntransformer_training:\n  epochs: two\n", "epochs"),
        ("preset: tiny\ntransformer:\n  dim: [32]\n", "dim"),
        ("preset: tiny\noptimizer:\n  lr: 0.1\n", "optimizer"),
        ("preset: tiny\ntransformer_training: [1, 2]\n", "transformer_training"),
        ("preset: huge\n", "huge"),
    ],
)
def test_cli_bad_config_file(yaml_text, named, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    tokens = _token_folder(tmp_path / "tokens", codebook=16)
    argv = [*TRAIN_TR, "--tokens", str(tokens), "--out", str(tmp_path / "r")]
    argv[argv.index("tiny")] = str(config)
    err = cli_error(capsys, argv)
    assert named in err


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("transformer_training.nope=1", "nope"),
        ("nosuchsection.lr=1", "nosuchsection"),
        ("transformer_training.epochs=1.5", "epochs"),
        ("transformer_training.lr", "transformer_training.lr"),
        ("transformer.dim=30", "dim"),  # not divisible by 4 heads
    ],
)
def test_cli_bad_set_override(override, named, tmp_path, capsys):
    tokens = _token_folder(tmp_path / "tokens", codebook=16)
    argv = [*TRAIN_TR, "--tokens", str(tokens), "--out", str(tmp_path / "r"), "--set", override]
    assert named in cli_error(capsys, argv)


def test_cli_resume_with_nothing_to_resume(tmp_path, capsys):
    tokens = _token_folder(tmp_path / "tokens", codebook=16)
    out = tmp_path / "fresh"
    err = cli_error(capsys, [*TRAIN_TR, "--tokens", str(tokens), "--out", str(out), "--resume"])
    assert "--resume" in err and STATE_FILE in err and "nothing to resume" in err
    err = cli_error(
        capsys, [*TRAIN_TOK, "--data", str(tmp_path), "--out", str(out), "--resume"]
    )  # tmp_path holds no images: the data error comes first
    assert "no image files" in err


def test_cli_ctrl_c_then_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C in `maskgit train` exits 130 leaving `latest`; `--resume` finishes the run
    exactly as an uninterrupted one."""
    tokens = _token_folder(tmp_path / "tokens", codebook=16)
    argv = [*TRAIN_TR, "--tokens", str(tokens)]
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    with monkeypatch.context() as patch:
        fail_at(patch, TransformerTask, STEPS_PER_EPOCH + 1, KeyboardInterrupt())
        assert main([*argv, "--out", str(tmp_path / "resumed")]) == 130
    captured = capsys.readouterr()
    assert "maskgit: interrupted" in captured.err
    assert f"at step {STEPS_PER_EPOCH + 1}" in captured.out + captured.err
    assert load_state(tmp_path / "resumed" / STATE_FILE)["position"]["step"] == STEPS_PER_EPOCH + 1
    assert main([*argv, "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    assert_same_run(tmp_path / "resumed", tmp_path / "straight", "transformer")
