"""A tiny random model folder for the tests (16x16 images, 4x4 tokens, 16 codes)."""

from __future__ import annotations

from pathlib import Path

import torch

from maskgit.checkpoint import save_model
from maskgit.config import TokenizerConfig, TransformerConfig, get_preset
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer


def write_tiny_model(
    folder: Path,
    tokenizer_cfg: TokenizerConfig | None = None,
    transformer_cfg: TransformerConfig | None = None,
    weight_std: float | None = None,
) -> Path:
    """A model folder as `--model` expects it (tokenizer + transformer, seed 0); returns it.

    `weight_std` redraws the transformer's weights at that scale (e.g. 0.2, a trained
    model's, for sharper predictions than the init's 0.02).
    """
    preset = get_preset("tiny")
    torch.manual_seed(0)
    save_model(VQGAN(tokenizer_cfg or preset.tokenizer), folder / "tokenizer.safetensors")
    transformer = BidirectionalTransformer(transformer_cfg or preset.transformer)
    if weight_std is not None:
        with torch.no_grad():
            for p in transformer.parameters():
                p.normal_(0, weight_std)
    save_model(transformer, folder / "transformer.safetensors")
    return folder
