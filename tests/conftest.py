"""Shared fixtures. One torch thread: the machine has two cores and a training job may run."""

from __future__ import annotations

import pytest
import torch

from maskgit.config import get_preset

torch.set_num_threads(1)


@pytest.fixture
def tiny_preset():
    """A fresh copy of the tiny preset (16x16 images, 4x4 tokens, 16 codes)."""
    return get_preset("tiny")


@pytest.fixture
def tiny_tokenizer_cfg(tiny_preset):
    return tiny_preset.tokenizer


@pytest.fixture
def tiny_transformer_cfg(tiny_preset):
    return tiny_preset.transformer


@pytest.fixture
def tiny_transformer(tiny_transformer_cfg):
    from maskgit.transformer import BidirectionalTransformer

    torch.manual_seed(0)
    return BidirectionalTransformer(tiny_transformer_cfg).eval()


@pytest.fixture
def tiny_vqgan(tiny_tokenizer_cfg):
    from maskgit.tokenizer.model import VQGAN

    torch.manual_seed(0)
    return VQGAN(tiny_tokenizer_cfg).eval()
