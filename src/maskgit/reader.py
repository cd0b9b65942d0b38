"""One reader for images and masks: files (paths: str or os.PathLike), PIL images, NumPy
arrays, torch tensors.

Used by the pipeline, `inpaint_files`, evaluate, the demo and the web app, so an input means
the same thing whichever way it comes in.

Files: opened with a decompression-bomb guard and turned upright by their EXIF orientation
(`ImageOps.exif_transpose`: a phone photo is used as it is displayed).

Images -> uint8 RGB. One rule for values, whatever the container:
    uint8 and other integer dtypes   values 0..255 (int64 from `np.array(..., dtype=int)` too)
    uint16, 16-bit images            values 0..65535, scaled by that range (not clipped)
    floats                           values in [0, 1]
Anything else (bool, complex, values out of range, NaN) is refused with a message. Arrays are
(H, W), (H, W, C) or tensors (C, H, W), C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA);
transparency is composited on white. The pipeline reads images and masks at their own size
(see `maskgit.pipeline` for how it fits them to the model); `resize_image`: bicubic.

Masks -> bool, True = repaint (the package convention, see maskgit.masking). A bool array or
tensor is already in that convention. Anything else is an image of the mask, read with
`convention` (MASK_CONVENTIONS: white = repaint, the default, as in diffusers and LaMa; or
white = keep, the course lab's mask files), thresholded at half the value range (colour masks
by their channel mean). A transparent pixel (alpha below half) is "not painted": it is kept,
whatever the convention (a stroke drawn on a transparent layer repaints the stroke only).
Resizing a mask: a pixel is repainted when any part of it is (a thin stroke never vanishes).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

MASK_CONVENTIONS = ("white-repaint", "white-keep")
MAX_IMAGE_PIXELS = 40_000_000  # decompression-bomb guard (a 6324 x 6324 image)
UINT16_MAX = 65535
UINT8_MAX = 255
# PIL modes of 16-bit files (Pillow reads a 16-bit grey PNG as I;16, some TIFFs as I)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ICC_RGB = b"RGB "  # an ICC profile's colour space (header bytes 16..20) for RGB data

ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


class DataError(ValueError):
    """A data folder or file is missing, empty or unreadable; the message names it."""


# --------------------------------------------------------------------------- files


def upright(image: Image.Image) -> Image.Image:
    """The image as displayed: its EXIF orientation applied (a no-op without one)."""
    return ImageOps.exif_transpose(image)


def open_image(path: str | Path) -> Image.Image:
    """Open and decode an image file, upright; errors (DataError) name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the guard below says it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{path}: image is {img.width}x{img.height}, over the "
                    f"{MAX_IMAGE_PIXELS:,}-pixel limit (decompression-bomb guard)"
                )
            img.load()
            return upright(img)
    except Image.DecompressionBombError as exc:  # PIL refuses to open it at all (> 179 MP)
        raise DataError(
            f"{path}: over the {MAX_IMAGE_PIXELS:,}-pixel limit (decompression-bomb guard; {exc})"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def read_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), or (size, size, 3) when `size` is given."""
    array = read_image_and_profile(path)[0]
    return resize_image(array, size) if size is not None else array


def read_image_and_profile(path: str | Path) -> tuple[np.ndarray, bytes | None]:
    """An image file as uint8 RGB (H, W, 3) at its own size, and its RGB colour profile
    (`colour_profile`); a value error (DataError) names the file."""
    image = open_image(path)
    with _as_data_error():
        return image_array(image, what=str(path)), colour_profile(image)


def colour_profile(image: Image.Image) -> bytes | None:
    """The image's ICC profile when it describes RGB colours, else None.

    Outputs keep it (the pixels are the input's, in its colour space); a grey, CMYK or Lab
    profile does not describe the RGB output, which is then untagged (read as sRGB).
    """
    icc = image.info.get("icc_profile")
    return icc if isinstance(icc, bytes) and icc[16:20] == ICC_RGB else None


def read_mask(path: str | Path, convention: str = "white-repaint") -> torch.Tensor:
    """A mask file as bool (H, W) at its own size, True = repaint."""
    check_convention(convention)
    mask = open_image(path)
    with _as_data_error():
        return mask_tensor(mask, None, convention, what=str(path))


@contextmanager
def _as_data_error() -> Iterator[None]:
    """A file's values that are no image (their message names the file) raise DataError, as
    an unreadable file does (folders skip and count them)."""
    try:
        yield
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(str(exc)) from None


# --------------------------------------------------------------------------- images


def _array_of(item: ImageLike, what: str) -> np.ndarray:
    """path / PIL / NumPy / torch -> NumPy (H, W) or (H, W, C), values not yet scaled."""
    if isinstance(item, (str, os.PathLike)):
        item = open_image(item)  # errors name the file
    if isinstance(item, Image.Image):
        if item.mode in SIXTEEN_BIT_MODES:
            array = np.asarray(item)
            if array.size and (array.min() < 0 or array.max() > UINT16_MAX):
                raise ValueError(
                    f"{what}: mode {item.mode} values {array.min()}..{array.max()} are outside "
                    f"0..{UINT16_MAX} (images read: 8-bit, 16-bit 0..{UINT16_MAX}, float "
                    "0..1; 32-bit integer values above that are not: save it as 16-bit)"
                )
            return array.astype(np.uint16)
        if "transparency" in item.info or item.mode in ("P", "PA", "La", "RGBa"):
            item = item.convert("RGBA")
        elif item.mode not in ("L", "LA", "RGB", "RGBA", "F"):
            item = item.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV, ...
        return np.asarray(item)
    if isinstance(item, torch.Tensor):
        tensor = item.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        return tensor.numpy()
    if isinstance(item, np.ndarray):
        return item
    raise TypeError(f"unsupported {what} type {type(item).__name__}")


def unit_values(array: np.ndarray, what: str = "image") -> np.ndarray:
    """Values of an image array as float32 in [0, 1] by the dtype rule (module docstring)."""
    dtype = array.dtype
    if np.issubdtype(dtype, np.integer) and dtype != np.bool_:
        top = UINT16_MAX if dtype == np.uint16 else UINT8_MAX
        if array.size and (array.min() < 0 or array.max() > top):
            raise ValueError(
                f"{what}: {dtype} values {array.min()}..{array.max()} are outside 0..{top} "
                "(integer images hold 0..255, uint16 images 0..65535)"
            )
        return array.astype(np.float32) / top
    if np.issubdtype(dtype, np.floating):
        values = array.astype(np.float32)
        if values.size and not np.isfinite(values).all():
            raise ValueError(f"{what}: float values must be finite (NaN or infinity found)")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(
                f"{what}: float values must be in [0, 1] (got {values.min():g}..{values.max():g}"
                "; an image of 0..255 values is read as 8-bit integers: save it as 8-bit)"
            )
        return values
    raise ValueError(
        f"{what}: dtype {dtype} is not an image (expected integers 0..255, uint16 0..65535 "
        "or floats in [0, 1])"
    )


def _channels_last(values: np.ndarray, what: str) -> np.ndarray:
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"{what}: shape {tuple(values.shape)} is not (H, W), (H, W, C) or (C, H, W) with "
            "C = 1, 2, 3 or 4"
        )
    return values


def image_array(image: ImageLike, what: str = "image") -> np.ndarray:
    """Any accepted image -> uint8 RGB (H, W, 3), transparency composited on white; errors
    begin with `what` (a file name, or "image")."""
    array = _array_of(image, what)
    if array.dtype == np.uint8:  # the common case, without float copies of a large image
        return _uint8_rgb(_channels_last(array, what))
    values = _channels_last(unit_values(array, what), what)
    colour, alpha = _split_alpha(values)
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    if alpha is not None:
        colour = colour * alpha[..., None] + (1.0 - alpha[..., None])
    return np.ascontiguousarray((colour * 255.0).round().astype(np.uint8))


def _uint8_rgb(array: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> (H, W, 3); grey repeated, alpha composited on white (by PIL)."""
    channels = array.shape[2]
    if channels == 3:
        return np.ascontiguousarray(array)
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    rgba = Image.fromarray(np.ascontiguousarray(array), "LA" if channels == 2 else "RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB"))


def _split_alpha(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) -> colour (H, W, 1 or 3), alpha (H, W) or None (C = 2 and 4 carry alpha)."""
    if values.shape[2] in (2, 4):
        return values[..., :-1], values[..., -1]
    return values, None


def resize_image(array: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3), bicubic (aspect ratio not kept)."""
    if array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC))


def image_tensor(image: ImageLike, size: int | None) -> torch.Tensor:
    """Any accepted image -> uint8 (3, size, size), or (3, H, W) at its own size (None)."""
    array = image_array(image)
    if size is not None:
        array = resize_image(array, size)
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1)  # a copy


# --------------------------------------------------------------------------- masks


def check_convention(convention: str) -> str:
    if convention not in MASK_CONVENTIONS:
        raise ValueError(
            f"unknown mask convention {convention!r}; valid: {', '.join(MASK_CONVENTIONS)}"
        )
    return convention


def mask_array(
    mask: ImageLike, convention: str = "white-repaint", what: str = "mask"
) -> np.ndarray:
    """Any accepted mask -> bool (H, W), True = repaint, at its own size; errors begin with
    `what` (a file name, or "mask")."""
    check_convention(convention)
    array = _array_of(mask, what)
    if array.dtype == np.bool_:  # already the package convention
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.ndim != 2:
            raise ValueError(f"{what}: a bool mask must be (H, W), got {tuple(array.shape)}")
        return array
    if array.dtype == np.uint8:  # integer maths: no float copy of a large mask
        colour, alpha = _split_alpha(_channels_last(array, what))
        white = 2 * colour.sum(axis=2, dtype=np.int32) >= UINT8_MAX * colour.shape[2]
        opaque = None if alpha is None else alpha >= (UINT8_MAX + 1) // 2
    else:
        colour, alpha = _split_alpha(_channels_last(unit_values(array, what), what))
        white = colour.mean(axis=2) >= 0.5
        opaque = None if alpha is None else alpha >= 0.5
    repaint = white if convention == "white-repaint" else ~white
    if opaque is not None:
        repaint &= opaque  # transparent = not painted, whatever the convention
    return repaint


def fit_mask(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """bool (H, W) -> (size, size) or (h, w) = size; a pixel is repainted when any part of
    it is (shrinking or enlarging)."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(mask.shape) == shape:
        return mask
    # "area" averages the source pixels under each target pixel: > 0 keeps every pixel to
    # repaint (nearest would drop thin strokes when shrinking a mask)
    return F.interpolate(mask[None, None].float(), size=shape, mode="area")[0, 0] > 0


def mask_tensor(
    mask: ImageLike, size: int | None, convention: str = "white-repaint", what: str = "mask"
) -> torch.Tensor:
    """Any accepted mask -> bool (size, size) (or its own size when `size` is None)."""
    result = torch.from_numpy(np.ascontiguousarray(mask_array(mask, convention, what)))
    return result if size is None else fit_mask(result, size)
