"""The embedded default model: shipped in the package, loads with no argument, inpaints."""

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit.data import load_image, to_model_range
from maskgit.demo import sample_pairs
from maskgit.fill import classical_fill
from maskgit.masking import pixel_to_token_mask
from maskgit.pipeline import DEFAULT_MODEL_DIR, MaskGIT

WEIGHT_BUDGET_BYTES = 40 * 1024 * 1024


def test_shipped_weights_fit_the_budget():
    files = list(DEFAULT_MODEL_DIR.glob("*.safetensors"))
    assert {f.name for f in files} == {"tokenizer.safetensors", "transformer.safetensors"}
    assert sum(f.stat().st_size for f in files) <= WEIGHT_BUDGET_BYTES


@pytest.fixture(scope="module")
def default_model():
    return MaskGIT.from_pretrained(device="cpu")


def test_default_model_inpaints_a_bundled_sample(default_model):
    image_path, mask_path = sample_pairs()[0]
    image = Image.open(image_path).convert("RGB")
    mask = Image.open(mask_path)
    result = default_model.inpaint(image, mask, steps=8, seed=0, return_steps=True)
    out = np.asarray(result.images[0])
    original = np.asarray(image)
    repaint = np.asarray(mask.convert("L")) >= 128
    assert out.shape == (64, 64, 3)
    assert (out[~repaint] == original[~repaint]).all()  # known pixels are exact
    assert (out[repaint] != original[repaint]).any()  # the hole was repainted
    assert len(result.steps[0]) == 8
    assert not result.steps[0][-1].token_mask.any()


def test_default_model_reconstructs_known_content(default_model):
    """The shipped tokenizer is trained: a sample's reconstruction is close (PSNR > 15 dB)."""
    image = Image.open(sample_pairs()[0][0]).convert("RGB")
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        tokens = default_model.tokenizer.encode(x)
        recon = default_model.tokenizer.decode_tokens(tokens).clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).mean().item()
    assert 10 * np.log10(1 / mse) > 15


def test_telea_prefill_keeps_the_context_tokens_closer_to_the_whole_images(default_model):
    """What the encoder sees in the hole changes the known tokens around it (its receptive
    field spans several tokens); with the Telea pre-fill fewer of them differ from the whole
    image's tokens than with a white hole (measured on the test split: 27 % vs 58 %)."""
    pairs = sample_pairs()
    images = torch.stack(
        [torch.from_numpy(np.array(load_image(i, 64))).permute(2, 0, 1) for i, _ in pairs]
    )
    masks = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(m).convert("L")) >= 128) for _, m in pairs]
    )
    known = ~pixel_to_token_mask(masks, default_model.downsample)
    with torch.no_grad():
        truth = default_model.tokenizer.encode(to_model_range(images))
        changed = {}
        for prefill in ("telea", "white"):
            filled = classical_fill(prefill, images, masks)
            tokens = default_model.tokenizer.encode(to_model_range(filled))
            changed[prefill] = ((tokens != truth) & known).sum() / known.sum()
    assert changed["telea"] < 0.75 * changed["white"], changed
