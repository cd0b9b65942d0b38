"""`--init-from`: a run starts from another run's weights (fresh optimiser, step 0)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from maskgit.checkpoint import CheckpointError, save_model
from maskgit.config import get_preset
from maskgit.tokenizer.model import VQGAN
from maskgit.train import train_tokenizer, train_transformer
from maskgit.transformer import BidirectionalTransformer


def _frozen(preset):
    """Training settings under which one epoch leaves the weights as they were (lr 0)."""
    cfg = preset.tokenizer_training
    cfg.epochs, cfg.batch_size, cfg.lr, cfg.min_lr, cfg.disc_weight = 1, 4, 0.0, 0.0, 0.0
    return preset


def test_tokenizer_starts_from_the_given_weights(tmp_path):
    preset = _frozen(get_preset("tiny"))
    torch.manual_seed(7)
    source = VQGAN(preset.tokenizer)
    save_model(source, tmp_path / "source.safetensors")
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    names = [f"img{i}.png" for i in range(8)]
    train_tokenizer(
        preset, images, names, tmp_path / "run", progress=False,
        init_from=tmp_path / "source.safetensors",
    )  # fmt: skip
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
