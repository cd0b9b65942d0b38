"""maskgit.reader: one rule for image dtypes, mask conventions, transparency, resizing and
EXIF orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit.reader import (
    image_array,
    image_tensor,
    mask_array,
    mask_tensor,
    read_image,
    read_mask,
)

_ROWS, _COLS = np.meshgrid(np.arange(0, 256, 32), np.arange(0, 256, 32), indexing="ij")
GRADIENT = np.stack([_ROWS, _COLS, np.full((8, 8), 255)], axis=-1).astype(np.uint8)  # (8, 8, 3)


# --------------------------------------------------------------------------- image dtypes


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.int16, np.uint32, np.int8])
def test_any_integer_array_holds_0_to_255(dtype):
    if dtype == np.int8:
        array = (GRADIENT // 2).astype(dtype)
        assert np.array_equal(image_array(array), GRADIENT // 2)
    else:
        assert np.array_equal(image_array(GRADIENT.astype(dtype)), GRADIENT)


def test_uint16_is_scaled_by_its_range():
    wide = GRADIENT.astype(np.uint16) * 257  # 0..65535
    assert np.array_equal(image_array(wide), GRADIENT)
    assert image_array(np.full((2, 2), 30000, np.uint16))[0, 0, 0] == round(30000 / 65535 * 255)


def test_floats_in_unit_range_and_tensors_agree():
    floats = GRADIENT / 255.0
    assert np.array_equal(image_array(floats), GRADIENT)
    assert np.array_equal(image_array(floats.astype(np.float32)), GRADIENT)
    chw = torch.from_numpy(GRADIENT).permute(2, 0, 1)
    for tensor in (chw, chw.long(), chw.float() / 255, chw.half() / 255):
        assert np.array_equal(image_array(tensor), GRADIENT), tensor.dtype


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((2, 2, 3), 300, np.int64), "outside 0..255"),
        (np.full((2, 2, 3), -1, np.int32), "outside 0..255"),
        (np.full((2, 2, 3), 2.0), r"in \[0, 1\]"),
        (np.full((2, 2, 3), np.nan), "finite"),
        (np.ones((2, 2, 3), bool), "not an image"),
        (np.ones((2, 2, 3), np.complex64), "not an image"),
        (np.ones((2, 2, 5), np.uint8), "shape"),
    ],
)
def test_other_values_are_refused_with_a_message(array, message):
    with pytest.raises(ValueError, match=message):
        image_array(array)


def test_grey_and_transparency_on_white():
    grey = np.array([[0, 255]], np.uint8)
    assert image_array(grey).tolist() == [[[0, 0, 0], [255, 255, 255]]]
    rgba = np.array([[[0, 0, 0, 0], [0, 0, 0, 255]]], np.uint8)
    assert image_array(rgba).tolist() == [[[255, 255, 255], [0, 0, 0]]]
    assert image_array(Image.fromarray(rgba, "RGBA")).tolist() == image_array(rgba).tolist()


def test_image_tensor_resizes_to_the_model():
    out = image_tensor(GRADIENT, 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.uint8


# --------------------------------------------------------------------------- masks


def test_uint8_mask_conventions():
    array = np.array([[0, 255], [127, 128]], dtype=np.uint8)
    repaint = mask_tensor(array, None)  # default: white = repaint
    assert repaint.dtype == torch.bool and repaint.tolist() == [[False, True], [False, True]]
    keep = mask_tensor(array, None, "white-keep")
    assert keep.tolist() == [[True, False], [True, False]]


def test_float_mask_threshold_and_range():
    array = np.array([[0.0, 1.0, 0.49, 0.51]], dtype=np.float32)
    assert mask_array(array).tolist() == [[False, True, False, True]]
    assert mask_array(array, "white-keep").tolist() == [[True, False, True, False]]
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        mask_array(np.array([[0.0, 255.0]]))


def test_bool_masks_are_the_package_convention_whatever_the_file_convention():
    array = np.array([[True, False]])
    assert mask_array(array).tolist() == [[True, False]]
    assert mask_array(array, "white-keep").tolist() == [[True, False]]
    assert mask_array(torch.tensor([[False, True]]), "white-keep").tolist() == [[False, True]]


def test_colour_masks_use_the_channel_mean():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = 255  # white
    rgb[0, 1] = (255, 0, 0)  # mean 85: not white
    rgb[1, 0] = (255, 255, 0)  # mean 170: white
    assert mask_array(rgb).tolist() == [[True, False], [True, False]]
    assert mask_array(rgb, "white-keep").tolist() == [[False, True], [False, True]]


def test_unknown_convention():
    with pytest.raises(ValueError, match="white-repaint"):
        mask_array(np.zeros((2, 2)), "black-repaint")


@pytest.mark.parametrize("convention", ["white-repaint", "white-keep"])
def test_a_transparent_pixel_is_never_repainted(convention):
    stroke = np.zeros((4, 4, 4), np.uint8)  # transparent black ...
    paint = 255 if convention == "white-repaint" else 0
    stroke[1, :] = (paint, paint, paint, 255)  # ... with one opaque stroke meaning "repaint"
    stroke[3, :] = (255 - paint, 255 - paint, 255 - paint, 0)  # invisible: not painted
    expected = np.zeros((4, 4), bool)
    expected[1, :] = True
    for mask in (
        stroke,
        Image.fromarray(stroke, "RGBA"),
        torch.from_numpy(stroke).permute(2, 0, 1),
    ):
        assert np.array_equal(mask_array(mask, convention), expected)


def test_resizing_a_mask_repaints_any_touched_pixel():
    big = np.zeros((64, 64), np.uint8)
    big[10, 3:50] = 255  # a one-pixel line: nearest-neighbour shrinking would drop it
    small = mask_tensor(big, 16)
    assert small.shape == (16, 16) and small[2, 0:13].all() and small.sum() == 13
    grown = mask_tensor(np.array([[255, 0], [0, 0]], np.uint8), 4)
    assert (
        grown.tolist()
        == [[True, True, False, False], [True, True, False, False]] + [[False] * 4] * 2
    )


# --------------------------------------------------------------------------- files


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 30000, np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # a real 16-bit file
    assert (read_image(path) == round(30000 / 65535 * 255)).all()  # 117, not 255


def _rotated_file(path, array: np.ndarray, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif)


def test_exif_orientation_is_applied_on_read(tmp_path):
    stored = np.zeros((8, 16, 3), np.uint8)  # 16 wide, 8 high as stored
    stored[:, :4] = 255  # white on the left as stored -> on top when shown (rotated 90 cw)
    _rotated_file(tmp_path / "phone.png", stored)
    shown = read_image(tmp_path / "phone.png")
    assert shown.shape == (16, 8, 3)
    assert (shown[:4] == 255).all() and (shown[4:] == 0).all()
    mask = read_mask(tmp_path / "phone.png")
    assert mask.shape == (16, 8) and mask[:4].all() and not mask[4:].any()


def test_uint8_and_float_masks_share_the_thresholds():
    rgba = np.array([[[255, 255, 255, 127], [255, 255, 255, 128], [127, 128, 128, 255]]], np.uint8)
    as_uint8 = mask_array(rgba)
    assert as_uint8.tolist() == [[False, True, True]]  # alpha >= half; channel mean >= half
    assert np.array_equal(mask_array(rgba / 255.0), as_uint8)
