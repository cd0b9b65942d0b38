"""`--init-from`: a run starts from another run's weights (fresh optimiser, step 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maskgit.checkpoint import CheckpointError, check_pair, load_model, save_model
from maskgit.config import get_preset
from maskgit.tokenizer.model import VQGAN
from maskgit.train import train_tokenizer, train_transformer
from maskgit.transformer import BidirectionalTransformer
from tiny_model import write_tiny_model


def _frozen(preset):
    """Training settings under which one epoch leaves the weights as they were (lr 0)."""
    cfg = preset.tokenizer_training
    cfg.epochs, cfg.batch_size, cfg.lr, cfg.min_lr, cfg.disc_weight = 1, 4, 0.0, 0.0, 0.0
    return preset


def _train_from_seeded_source(preset, tmp_path):
    """A seeded tokenizer saved as source.safetensors and a run warm-started from it on 8
    random images; returns (source, images)."""
    torch.manual_seed(7)
    source = VQGAN(preset.tokenizer)
    save_model(source, tmp_path / "source.safetensors")
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    names = [f"img{i}.png" for i in range(8)]
    train_tokenizer(
        preset, images, names, tmp_path / "run", progress=False,
        init_from=tmp_path / "source.safetensors",
    )  # fmt: skip
    return source, images


def test_tokenizer_starts_from_the_given_weights(tmp_path):
    preset = _frozen(get_preset("tiny"))
    source, images = _train_from_seeded_source(preset, tmp_path)
    names = [f"img{i}.png" for i in range(8)]
    trained = load_file(str(tmp_path / "run" / "tokenizer.safetensors"))
    for name, tensor in source.named_parameters():  # (buffers count steps: they move)
        assert torch.equal(trained[name], tensor.detach()), name
    fresh = tmp_path / "fresh"
    train_tokenizer(preset, images, names, fresh, progress=False)
    first = next(iter(source.state_dict()))  # a fresh run starts elsewhere (seeded init)
    assert not torch.equal(
        load_file(str(fresh / "tokenizer.safetensors"))[first], source.state_dict()[first]
    )


def test_another_config_or_kind_is_refused_before_anything_is_written(tmp_path):
    preset = get_preset("tiny")
    other = get_preset("tiny")
    other.transformer.dim = other.transformer.dim * 2
    save_model(BidirectionalTransformer(other.transformer), tmp_path / "wide.safetensors")
    save_model(VQGAN(preset.tokenizer), tmp_path / "tokenizer.safetensors")
    tokens = torch.randint(0, preset.transformer.codebook_size, (8, 4, 4))
    names = [f"img{i}.png" for i in range(8)]
    for source in ["wide.safetensors", "tokenizer.safetensors", "missing.safetensors"]:
        with pytest.raises(CheckpointError, match=f"--init-from .*{source}"):
            train_transformer(
                preset, tokens, names, tmp_path / "run", progress=False,
                init_from=tmp_path / source,
            )  # fmt: skip
        assert not (tmp_path / "run").exists()


def test_decoder_only_training_keeps_the_tokens_and_moves_the_decoder(tmp_path):
    """tokenizer_training.decoder_only: the encoder side and the codebook stay as they were
    (so a transformer trained on the tokens stays valid), the decoder learns."""
    preset = get_preset("tiny")
    cfg = preset.tokenizer_training
    cfg.epochs, cfg.batch_size, cfg.lr, cfg.disc_start = 2, 4, 1e-2, 0
    cfg.decoder_only = True
    preset.tokenizer.dead_code_steps = 1  # would re-seed codes after every step if not frozen
    source, images = _train_from_seeded_source(preset, tmp_path)
    trained = load_model(tmp_path / "run" / "tokenizer.safetensors")
    assert source.tokenizes_like(trained)
    batch = images.float() / 127.5 - 1
    assert torch.equal(source.encode(batch), trained.encode(batch))
    assert not torch.equal(source.decoder.conv_out.weight, trained.decoder.conv_out.weight)
    moved = VQGAN(preset.tokenizer)  # a tokenizer trained in full is not "the same tokens"
    assert not source.tokenizes_like(moved)


def _ship(run, out, *extra) -> subprocess.CompletedProcess:
    script = Path(__file__).parents[1] / "scripts" / "ship_weights.py"
    command = [sys.executable, str(script), str(run), str(out), *map(str, extra)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_ship_weights_pairs_a_decoder_only_tokenizer_and_refuses_another(tmp_path):
    run = write_tiny_model(tmp_path / "run")
    (run / "config.yaml").write_text("preset: tiny\n")
    tokenizer = load_model(run / "tokenizer.safetensors")
    with torch.no_grad():
        tokenizer.decoder.conv_out.weight.add_(0.5)  # a new decoder, the same tokens
    save_model(tokenizer, tmp_path / "decoder-only.safetensors")
    shipped = _ship(run, tmp_path / "out", "--tokenizer", tmp_path / "decoder-only.safetensors")
    assert shipped.returncode == 0, shipped.stderr
    check_pair(
        tmp_path / "out" / "tokenizer.safetensors", tmp_path / "out" / "transformer.safetensors"
    )
    ours = load_model(tmp_path / "out" / "tokenizer.safetensors").decoder.conv_out.weight
    assert torch.allclose(ours, tokenizer.decoder.conv_out.weight, atol=1e-2)  # fp16 cast
    with torch.no_grad():
        tokenizer.quantizer.codebook.weight.add_(0.5)  # other codes: other tokens
    save_model(tokenizer, tmp_path / "other.safetensors")
    refused = _ship(run, tmp_path / "refused", "--tokenizer", tmp_path / "other.safetensors")
    assert refused.returncode != 0
    assert "--tokenizer" in refused.stderr and "decoder_only" in refused.stderr
    assert not (tmp_path / "refused").exists()
