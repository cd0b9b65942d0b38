"""Classical fills (baselines and the pre-fill of the hole before encoding)."""

from __future__ import annotations

import pytest
import torch

from extras import extra_missing
from maskgit.config import get_preset
from maskgit.data import to_model_range
from maskgit.fill import CLASSICAL_FILLS, classical_fill
from maskgit.options import DecodingOptions
from maskgit.pipeline import MaskGIT
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer

torch.set_num_threads(1)

SIZE = 16
NEEDS_SKIMAGE = pytest.mark.skipif(
    extra_missing("skimage") is not None, reason=extra_missing("skimage") or ""
)
FILLS = [  # biharmonic needs the `baselines` extra
    pytest.param(name, marks=NEEDS_SKIMAGE if name == "biharmonic" else ())
    for name in CLASSICAL_FILLS
]


def hole(y0=5, y1=9, x0=5, x1=9) -> torch.Tensor:
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[:, y0:y1, x0:x1] = True
    return masks


def flat_images(colour=(200, 30, 60)) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8)[None, :, None, None].expand(2, 3, SIZE, SIZE)


@pytest.mark.parametrize("name", FILLS)
def test_fills_keep_known_pixels_and_fill_the_hole(name):
    images = torch.randint(0, 255, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    masks = hole()
    filled = classical_fill(name, images, masks)
    assert filled.shape == images.shape and filled.dtype == torch.uint8
    assert torch.equal(filled[:, :, ~masks[0]], images[:, :, ~masks[0]]), name
    assert (classical_fill("white", images, masks)[:, :, masks[0]] == 255).all()
    with pytest.raises(ValueError, match="valid: white"):
        classical_fill("magic", images, masks)


@pytest.mark.parametrize("name", FILLS)
def test_fills_never_read_the_pixels_under_the_hole(name):
    # The pre-fill sees test images whose hole still holds the truth: it must not leak.
    images = torch.randint(0, 255, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    other = images.clone()
    masks = hole(3, 12, 4, 10)
    other[:, :, 3:12, 4:10] = 255 - other[:, :, 3:12, 4:10]
    assert torch.equal(classical_fill(name, images, masks), classical_fill(name, other, masks))


@pytest.mark.parametrize("name", [n for n in FILLS if n.values[0] != "white"])
def test_smooth_fills_continue_a_flat_colour(name):
    images = flat_images()
    filled = classical_fill(name, images.clone(), hole())
    assert (filled.int() - images.int()).abs().max() <= 3, name  # Telea adds +-2 noise


@pytest.fixture(scope="module")
def model() -> MaskGIT:
    preset = get_preset("tiny")
    torch.manual_seed(0)
    return MaskGIT(VQGAN(preset.tokenizer), BidirectionalTransformer(preset.transformer), "cpu")


@pytest.mark.parametrize("prefill", ["telea", "white"])
def test_known_tokens_are_encoded_from_the_prefilled_image(model, prefill):
    images = torch.randint(0, 255, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    masks = hole()
    options = DecodingOptions(steps=2, prefill=prefill)
    _, token_masks, records = model.decode_batch(images, masks, options, return_steps=True)
    expected = model.tokenizer.encode(to_model_range(classical_fill(prefill, images, masks)))
    known = ~token_masks.flatten(1)
    given = records[0].tokens  # (B, N): the known tokens stay as given at every step
    assert torch.equal(given[known], expected.flatten(1)[known])


def test_a_given_context_is_encoded_instead_of_the_prefill(model):
    images = torch.randint(0, 255, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    truth = torch.randint(0, 255, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    _, token_masks, records = model.decode_batch(
        images, hole(), DecodingOptions(steps=2), context=truth, return_steps=True
    )
    known = ~token_masks.flatten(1)
    expected = model.tokenizer.encode(to_model_range(truth)).flatten(1)
    assert torch.equal(records[0].tokens[known], expected[known])


def test_unknown_prefill_is_refused(model):
    image = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    with pytest.raises(ValueError, match="prefill='blur': expected one of telea, white"):
        model.inpaint(image, hole()[0], prefill="blur")
