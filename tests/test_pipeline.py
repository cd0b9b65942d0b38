"""MaskGIT pipeline on tiny random models: exactness of known pixels, determinism, batching,
step records, sweet spot, outpainting at full size, mask conventions and resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit.config import get_preset
from maskgit.options import DecodingOptions
from maskgit.pipeline import MaskGIT, paste_known
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer

torch.set_num_threads(1)

SIZE = 16  # tiny preset: 16x16 images, 4x4 tokens (downsample 4)
GRID = 4


@pytest.fixture(scope="module")
def model() -> MaskGIT:
    preset = get_preset("tiny")
    torch.manual_seed(0)
    return MaskGIT(VQGAN(preset.tokenizer), BidirectionalTransformer(preset.transformer), "cpu")


def random_images(n: int, seed: int = 0, size: int = SIZE) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def box_mask(y0=4, y1=12, x0=4, x1=12, size=SIZE) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def arrays(images) -> list[np.ndarray]:
    return [np.asarray(img) for img in images]


def assert_same_images(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(arrays(a), arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- known pixels


def test_empty_mask_returns_the_input_pixel_exact(model):
    images = random_images(2)
    empty = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    result = model.inpaint(images, [empty, empty])
    assert_same_images(result.images, images)
    # the same through a mask *file* convention (all black = nothing to repaint)
    black = Image.new("L", (SIZE, SIZE), 0)
    assert_same_images(model.inpaint(images[0], black).images, images[:1])


@pytest.mark.parametrize("feather", [0, 2])
def test_outside_the_mask_the_output_equals_the_input(model, feather):
    images = random_images(3, seed=1)
    masks = [box_mask(), box_mask(0, 8, 0, 16), box_mask(5, 7, 9, 14)]
    result = model.inpaint(images, masks, feather=feather, seed=3)
    for out, original, mask in zip(arrays(result.images), arrays(images), masks, strict=True):
        keep = ~mask.numpy()
        assert out.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(out[keep], original[keep])
        assert not np.array_equal(out[~keep], original[~keep])  # the hole was repainted


def test_feather_only_changes_a_band_inside_the_mask_edge(model):
    image = random_images(1, seed=2)
    mask = box_mask(2, 14, 2, 14)
    sharp = np.asarray(model.inpaint(image, mask, seed=4).images[0])
    soft = np.asarray(model.inpaint(image, mask, seed=4, feather=3).images[0])
    deep = box_mask(5, 11, 5, 11).numpy()  # 3 pixels or more from the edge
    np.testing.assert_array_equal(soft[deep], sharp[deep])
    band = mask.numpy() & ~deep
    assert not np.array_equal(soft[band], sharp[band])


def test_paste_known_feather_alpha():
    original = torch.zeros(1, 3, 12, 12, dtype=torch.uint8)
    decoded = torch.full((1, 3, 12, 12), 200, dtype=torch.uint8)
    mask = box_mask(2, 10, 2, 10, size=12)[None]
    out = paste_known(original, decoded, mask, feather=3)[0, 0]
    assert (out[~mask[0]] == 0).all()  # outside: exact original
    assert (out[mask[0]] > 0).all()  # inside: some decoded content everywhere
    assert out[5, 5] == 200  # the centre is fully decoded
    assert out[2, 5] < out[3, 5] < out[4, 5] <= 200  # ramp from the edge inwards
    np.testing.assert_array_equal(
        paste_known(original, decoded, mask, 0)[0, 0].numpy(), np.where(mask[0], 200, 0)
    )


# --------------------------------------------------------------------------- determinism


def test_full_mask_equals_generate_with_the_same_seed(model):
    full = torch.ones(SIZE, SIZE, dtype=torch.bool)
    inpainted = model.inpaint(random_images(2, seed=5), [full, full], seed=7, steps=6)
    generated = model.generate(2, seed=7, steps=6)
    assert_same_images(inpainted.images, generated.images)


def test_same_seed_same_output_other_seed_other_output(model):
    images, masks = random_images(2, seed=6), [box_mask(), box_mask(0, 16, 0, 8)]
    sampled = DecodingOptions(temperature=1.0, choice_temperature=4.5)  # the default is argmax
    first = model.inpaint(images, masks, sampled, seed=11)
    again = model.inpaint(images, masks, sampled, seed=11)
    other = model.inpaint(images, masks, sampled, seed=12)
    assert_same_images(first.images, again.images)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(arrays(first.images), arrays(other.images), strict=True)
    )


def test_an_image_gets_the_same_output_alone_or_inside_a_batch(model):
    images = random_images(3, seed=8)
    masks = [box_mask(), box_mask(0, 10, 3, 16), box_mask(8, 16, 0, 16)]
    batched = model.inpaint(images, masks, seed=2, batch_size=3)
    one_by_one = model.inpaint(images, masks, seed=2, batch_size=1)
    alone = model.inpaint(images[0], masks[0], seed=2)  # image 0 uses seed + 0 either way
    assert_same_images(batched.images, one_by_one.images)
    assert_same_images(alone.images, batched.images[:1])
    generated = model.generate(3, seed=9, batch_size=2, steps=5)
    assert_same_images(generated.images, model.generate(3, seed=9, batch_size=3, steps=5).images)


# --------------------------------------------------------------------------- step records


def unknown_counts(frames) -> list[int]:
    return [int(frame.token_mask.sum()) for frame in frames]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "lab-cosine"])
def test_return_steps_gives_one_frame_per_step_and_the_mask_shrinks(model, schedule):
    images = random_images(2, seed=9)
    masks = [box_mask(0, 16, 0, 16), box_mask(0, 8, 0, 12)]
    result = model.inpaint(images, masks, steps=7, schedule=schedule, return_steps=True)
    assert len(result.steps) == 2
    for frames, start_mask in zip(result.steps, result.token_masks, strict=True):
        assert len(frames) == 7
        assert [f.step for f in frames] == list(range(7))
        counts = unknown_counts(frames)
        assert counts[0] < int(start_mask.sum())
        # never more unknown tokens than before (it may stay at 1 until the last step)
        assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
        assert counts[-2] >= 1  # while steps remain, at least one token stays unknown
        assert counts[-1] == 0 and not frames[-1].token_mask.any()
        for frame in frames:
            assert frame.token_mask.shape == (GRID, GRID) and frame.token_mask.dtype == bool
            assert not (frame.token_mask & ~start_mask).any()  # never outside the start mask
            assert frame.image.size == (SIZE, SIZE)
    assert int(result.token_masks[0].sum()) == GRID * GRID
    assert int(result.token_masks[1].sum()) == 2 * 3


def test_sweet_spot_stops_early_with_nothing_left_unknown(model):
    result = model.generate(2, steps=12, sweet_spot=4, return_steps=True, seed=1)
    for frames in result.steps:
        assert len(frames) == 4
        counts = unknown_counts(frames)
        assert counts[-1] == 0 and counts[-2] > 0
    full = model.generate(1, steps=12, return_steps=True, seed=1)
    assert len(full.steps[0]) == 12
    # the first steps are the same decisions: the sweet spot only cuts the run short
    np.testing.assert_array_equal(full.steps[0][0].token_mask, result.steps[0][0].token_mask)


def test_empty_mask_runs_no_step(model):
    result = model.inpaint(
        random_images(1), torch.zeros(SIZE, SIZE, dtype=torch.bool), return_steps=True
    )
    assert result.steps == [[]]
    assert not result.token_masks[0].any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps=0"),
        ({"steps": 4, "sweet_spot": 5}, "sweet_spot=5"),
        ({"schedule": "wiggly"}, "valid: linear, cosine"),
    ],
)
def test_bad_decoding_options_raise_value_error(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.inpaint(random_images(1), box_mask(), **kwargs)


# --------------------------------------------------------------------------- outpainting


def test_outpaint_keeps_the_image_at_full_size_inside_a_bigger_canvas(model):
    rng = np.random.default_rng(31)
    content = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))  # 40x24
    pixels = np.asarray(content)
    result = model.outpaint([content, content], pad=8, seed=3, return_steps=True)
    for image in arrays(result.images):
        assert image.shape == (24 + 16, 40 + 16, 3)  # the canvas: the image plus the margin
        np.testing.assert_array_equal(image[8:32, 8:48], pixels)  # exact, full resolution
        assert not (image[:8] == 255).all()  # the margin was generated
    assert result.windows[0].whole  # the new area surrounds the image: the whole canvas
    assert result.steps[0][0].image.size == (SIZE, SIZE)  # steps at the model's resolution
    # default: a margin of half the image on every side (the image in the central half)
    default = np.asarray(model.outpaint(content, seed=3).images[0])
    assert default.shape == (48, 80, 3)
    np.testing.assert_array_equal(default[12:36, 20:60], pixels)
    # an explicit output size and position: the image in the top-left corner
    corner = np.asarray(model.outpaint(content, canvas=(64, 30), at=(0, 0), seed=3).images[0])
    assert corner.shape == (30, 64, 3)
    np.testing.assert_array_equal(corner[:24, :40], pixels)


def test_outpaint_a_non_square_image_keeps_its_aspect_ratio(model):
    rng = np.random.default_rng(32)
    photo = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # 96x64
    out = np.asarray(model.outpaint(photo, pad="25%", seed=1, steps=2).images[0])
    assert out.shape == (64 + 32, 96 + 48, 3)  # 25% of the height / of the width per side
    np.testing.assert_array_equal(out[16:80, 24:120], photo)
    wide = np.asarray(model.outpaint(photo, pad=(10, 0), seed=1, steps=2).images[0])
    assert wide.shape == (64, 116, 3)  # (horizontal, vertical)
    np.testing.assert_array_equal(wide[:, 10:106], photo)


def test_outpaint_layout_rules():
    from maskgit.pipeline import Placement, outpaint_layout, parse_pad

    assert outpaint_layout(40, 24) == Placement(80, 48, 20, 12)  # 50% on every side
    assert outpaint_layout(40, 24, 8) == Placement(56, 40, 8, 8)
    assert outpaint_layout(40, 24, "10%") == Placement(48, 28, 4, 2)  # rounded (2.4 -> 2)
    assert outpaint_layout(40, 24, "1 2 3 4") == Placement(44, 30, 1, 2)  # left top right bottom
    assert outpaint_layout(40, 24, [0, 0, 8, 0]) == Placement(48, 24, 0, 0)  # one side only
    assert outpaint_layout(40, 24, canvas=(50, 30)) == Placement(50, 30, 5, 3)  # centred
    assert outpaint_layout(40, 24, canvas=(50, 30), at=(10, 6)) == Placement(50, 30, 10, 6)
    assert parse_pad("5,10%") == (5, "10%", 5, "10%")
    for kwargs, message in (
        ({"pad": -1}, "negative"),
        ({"pad": 0.25}, "25%"),
        ({"pad": "abc"}, "neither pixels"),
        ({"pad": "x%"}, "percentage"),
        ({"pad": (1, 2, 3)}, "1 value"),
        ({"pad": 0}, "nothing to generate"),
        ({"canvas": (40, 24)}, "nothing to generate"),
        ({"canvas": (50, 30), "at": (11, 0)}, "does not fit"),
        ({"canvas": (30, 30)}, "does not fit"),
        ({"pad": 4, "canvas": (50, 30)}, "not both"),
        ({"at": (0, 0)}, "canvas size"),
    ):
        with pytest.raises(ValueError, match=message):
            outpaint_layout(40, 24, **kwargs)


def test_outpaint_box_is_refused_with_a_pointer_to_the_new_arguments(model):
    with pytest.raises(TypeError, match="pad="):
        model.outpaint(random_images(1)[0], box=(4, 4, 12, 12))


# --------------------------------------------------------------------------- mask inputs


def test_white_keep_mask_file_is_the_inverse_of_white_repaint(model):
    image = random_images(1, seed=10)
    hole = box_mask().numpy()
    repaint_file = Image.fromarray(np.where(hole, 255, 0).astype(np.uint8))  # white = repaint
    keep_file = Image.fromarray(np.where(hole, 0, 255).astype(np.uint8))  # white = keep (lab)
    expected = model.inpaint(image, box_mask(), seed=5)
    as_repaint = model.inpaint(image, repaint_file, seed=5)
    as_keep = model.inpaint(image, keep_file, seed=5, mask_convention="white-keep")
    assert_same_images(as_repaint.images, expected.images)
    assert_same_images(as_keep.images, expected.images)
    np.testing.assert_array_equal(as_keep.token_masks[0], expected.token_masks[0])
    with pytest.raises(ValueError, match="white-repaint, white-keep"):
        model.inpaint(image, keep_file, mask_convention="black-keep")


def test_non_binary_masks_are_thresholded_at_one_half(model):
    image = random_images(1, seed=11)
    hole = box_mask().numpy()
    expected = model.inpaint(image, box_mask(), seed=6).images
    soft_float = np.where(hole, 0.51, 0.49).astype(np.float32)
    soft_uint8 = np.where(hole, 128, 127).astype(np.uint8)  # 128/255 > 0.5 > 127/255
    grey_rgb = np.repeat(soft_uint8[..., None], 3, axis=2)
    for mask in (soft_float, soft_uint8, grey_rgb, Image.fromarray(soft_uint8)):
        assert_same_images(model.inpaint(image, mask, seed=6).images, expected)


def test_a_batch_of_masks_as_one_tensor(model):
    images = torch.from_numpy(np.stack(arrays(random_images(3, seed=12)))).permute(0, 3, 1, 2)
    masks = torch.stack([box_mask(), box_mask(0, 4, 0, 4), box_mask(8, 16, 8, 16)])  # (3, H, W)
    result = model.inpaint(images, masks, seed=1)
    listed = model.inpaint(list(images), list(masks), seed=1)
    assert len(result.images) == 3
    assert_same_images(result.images, listed.images)


def test_an_image_of_another_size_comes_back_at_its_own_size(model):
    big = random_images(1, seed=13, size=2 * SIZE)[0]
    nothing = Image.new("L", big.size, 0)
    result = model.inpaint(big, nothing)
    assert_same_images(result.images, [big])  # nothing to repaint: the input, full size


def test_a_200x120_image_comes_back_200x120_and_exact_outside_the_mask(model):
    rng = np.random.default_rng(21)
    image = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)  # (H, W, 3): 200 wide
    mask = np.zeros((120, 200), dtype=bool)
    mask[30:70, 50:110] = True
    for feather in (0, 3):
        out = np.asarray(model.inpaint(image, mask, seed=2, feather=feather).images[0])
        assert out.shape == (120, 200, 3)
        np.testing.assert_array_equal(out[~mask], image[~mask])
        assert (out[mask] != image[mask]).any()  # the hole was repainted


def test_a_model_size_image_gives_the_same_result_as_the_plain_path(model):
    """No regression: at the model's size the window is the image itself, and the result
    is the decoder's output pasted into the mask, as before any-size support."""
    images = random_images(2, seed=22)
    masks = [box_mask(), box_mask(0, 6, 3, 16)]
    options = DecodingOptions(seed=4, steps=5)
    batch = torch.stack([torch.from_numpy(np.array(a)).permute(2, 0, 1) for a in arrays(images)])
    decoded, _, _ = model.decode_batch(batch, torch.stack(masks), options)
    for feather in (0, 2):
        plain = paste_known(batch, decoded, torch.stack(masks), feather, blend=options.blend)
        result = model.inpaint(images, masks, options, feather=feather)
        assert [w.whole and w.side == SIZE for w in result.windows] == [True, True]
        expected = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in plain]
        assert_same_images(result.images, expected)


def test_a_small_hole_in_a_large_image_is_filled_in_a_crop(model):
    rng = np.random.default_rng(23)
    image = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    mask = np.zeros((1000, 1000), dtype=bool)
    mask[500:505, 700:706] = True  # 6 px wide: the window is the model's size (16)
    seen = []
    result = model.inpaint(
        image, mask, seed=1, on_step=lambda step: seen.append(step), return_steps=True
    )
    assert result.steps[0][0].image.size == (SIZE, SIZE)  # steps stay at the model's size
    window = result.windows[0]
    assert not window.whole and window.side == SIZE  # a 16x16 crop, at full resolution
    assert window.top <= 500 and window.top + window.side >= 505
    assert window.left <= 700 and window.left + window.side >= 706
    assert seen[0].tokens.shape == (1, GRID * GRID)  # the model saw one 16x16 crop
    out = np.asarray(result.images[0])
    assert out.shape == (1000, 1000, 3)
    np.testing.assert_array_equal(out[~mask], image[~mask])


def test_crop_window_rules():
    from maskgit.pipeline import crop_window

    def hole(h, w, y0, y1, x0, x1):
        m = torch.zeros(h, w, dtype=torch.bool)
        m[y0:y1, x0:x1] = True
        return m

    # 20 px hole in 400x300: side 2 x 20 = 40, centred on the hole
    w = crop_window(hole(300, 400, 100, 120, 200, 220), 16)
    assert (w.top, w.left, w.side, w.whole) == (90, 190, 40, False)
    # near a corner: shifted inside the image, no padding
    w = crop_window(hole(300, 400, 0, 20, 390, 400), 16)
    assert (w.top, w.left, w.side) == (0, 360, 40)
    # a window taller than a wide image: centred vertically (padding), kept inside in x
    w = crop_window(hole(50, 400, 10, 40, 100, 160), 16)
    assert (w.top, w.left, w.side, w.whole) == (-35, 70, 120, False)
    # a large hole: the whole image, centred in a square
    w = crop_window(hole(120, 200, 10, 110, 20, 180), 16)
    assert (w.top, w.left, w.side, w.whole) == (-40, 0, 200, True)
    # a crop over CROP_LIMIT (0.5) of the image's side: the whole image instead
    w = crop_window(hole(300, 400, 100, 220, 100, 220), 16)  # 2 x 120 = 240 > 200
    assert (w.top, w.left, w.side, w.whole) == (-50, 0, 400, True)
    w = crop_window(hole(300, 400, 100, 220, 100, 220), 16, limit=1.0)
    assert (w.top, w.left, w.side, w.whole) == (40, 40, 240, False)
    w = crop_window(hole(300, 400, 100, 200, 100, 200), 16)  # 2 x 100 = 200: a crop
    assert (w.side, w.whole) == (200, False)
    with pytest.raises(ValueError, match="limit"):
        crop_window(hole(300, 400, 100, 200, 100, 200), 16, limit=0)
    # an empty mask, a model-size image
    assert crop_window(torch.zeros(16, 16, dtype=torch.bool), 16) == crop_window(
        hole(16, 16, 4, 6, 4, 6), 16
    )


def test_the_mask_must_have_the_image_size(model):
    with pytest.raises(ValueError, match="same size"):
        model.inpaint(random_images(1, size=32)[0], box_mask())


def test_shrinking_a_mask_keeps_thin_strokes(model):
    stroke = np.zeros((4 * SIZE, 4 * SIZE), dtype=np.uint8)
    stroke[:, 21] = 255  # one pixel wide: nearest-neighbour shrinking would lose it
    big = random_images(1, seed=14, size=4 * SIZE)[0]
    result = model.inpaint(big, stroke)
    column = 21 // 4  # model pixel 5 -> token column 1
    assert result.token_masks[0][:, column // 4].all()
    assert result.token_masks[0].sum() == GRID


def test_float_and_grayscale_inputs(model):
    rng = np.random.default_rng(15)
    rgba = rng.random((SIZE, SIZE, 4)).astype(np.float32)
    rgba[..., 3] = 1.0  # opaque
    gray = torch.rand(1, SIZE, SIZE)
    empty = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    out = np.asarray(model.inpaint(rgba, empty).images[0])
    np.testing.assert_array_equal(out, (rgba[..., :3] * 255).round().astype(np.uint8))
    out = np.asarray(model.inpaint(gray, empty).images[0])
    expected = (gray[0].numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16])
def test_integer_images_of_any_dtype_mean_the_same_picture(model, dtype):
    image = random_images(1, seed=9)[0]  # uint8 (H, W, 3)
    scale = 257 if dtype == np.uint16 else 1  # uint16 images span 0..65535
    other = (np.asarray(image).astype(dtype) * scale).astype(dtype)
    want = model.inpaint(image, box_mask(), steps=3).images[0]
    got = model.inpaint(other, box_mask(), steps=3).images[0]
    assert np.array_equal(np.asarray(got), np.asarray(want))
