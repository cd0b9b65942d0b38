"""Inpainting and generation over files: pair images with masks, validate, run, write.

Pairing (`pair_inputs`): `images` and `masks` are each a file or a folder.
    folder + folder   each image takes the mask with the same name stem (foo.png pairs with
                      foo.png or foo.jpg); the course lab's layout (a folder of masked images,
                      a folder of masks with equal names) works as is
    folder + file     every image takes that one mask
    file + folder     the image takes the mask with its name stem
    file + file       one pair
An image without a mask is an error that lists the names. Masks without an image are ignored.

Everything is checked before the first output is written: pairing, readability (an
unreadable or empty file raises `maskgit.data.DataError` naming it), image/mask sizes (must be
equal), ground truth, options. Images of another size than the model's are resized to it by
the pipeline's rule (see `maskgit.pipeline`) and a one-line notice says so; outputs are PNG
files at the model's resolution named after the inputs (`foo.jpg` -> `foo.png`), each written
to a temporary name and renamed, so no half-written file is ever left behind.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from maskgit.data import DataError, list_images, load_image
from maskgit.masking import MASK_CONVENTIONS
from maskgit.pipeline import MASKED_PIXEL_VALUE, MaskGIT, check_options
from maskgit.visualize import masked_preview, save_png, save_step_visuals

STEPS_FOLDER = "steps"  # step visuals go to <out>/steps/
NAMES_SHOWN = 5  # how many missing names an error message lists before "... and N more"

Log = Callable[[str], None]


@dataclass
class Pair:
    """One image to inpaint, its mask and (optionally) its ground truth."""

    image: Path
    mask: Path
    ground_truth: Path | None = None

    @property
    def output_name(self) -> str:
        return f"{self.image.stem}.png"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _files(path: str | Path, what: str) -> tuple[list[Path], bool]:
    """(image files, is_folder) of a file or folder argument; errors name it."""
    path = Path(path)
    if path.is_dir():
        return list_images(path), True
    if path.is_file():
        return [path], False
    raise DataError(f"{path}: no such file or folder ({what})")


def _by_stem(files: Sequence[Path], folder: str | Path) -> dict[str, Path]:
    table: dict[str, Path] = {}
    for path in files:
        if path.stem in table:
            raise ValueError(
                f"{folder}: {table[path.stem].name} and {path.name} have the same name "
                "stem, so it is ambiguous which one pairs (and both would write "
                f"{path.stem}.png); keep one"
            )
        table[path.stem] = path
    return table


def _list_names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" ... and {more} more" if more > 0 else "")


def _match(
    images: Sequence[Path],
    other: str | Path | None,
    what: str,
    images_arg: str | Path,
) -> list[Path | None]:
    """For each image, the file of `other` (a file or folder) that pairs with it."""
    if other is None:
        return [None] * len(images)
    files, is_folder = _files(other, what)
    if not is_folder:
        if what == "ground truth" and len(images) > 1:
            raise ValueError(
                f"--gt {other} is one file but there are {len(images)} images: give a folder "
                "of ground-truth images with the same names"
            )
        return [files[0]] * len(images)
    table = _by_stem(files, other)
    missing = [p.name for p in images if p.stem not in table]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(images)} image(s) in {images_arg} have no {what} in "
            f"{other} ({what} files pair with images by equal file name): "
            f"{_list_names(missing)}"
        )
    return [table[p.stem] for p in images]


def pair_inputs(images: str | Path, masks: str | Path, gt: str | Path | None = None) -> list[Pair]:
    """Pair image files with mask files (and ground-truth files); see the module docstring."""
    image_files, images_is_folder = _files(images, "images")
    if images_is_folder:
        _by_stem(image_files, images)  # two inputs must not write the same output
    mask_files = _match(image_files, masks, "mask", images)
    gt_files = _match(image_files, gt, "ground truth", images)
    return [
        Pair(image, mask, truth)  # type: ignore[arg-type]
        for image, mask, truth in zip(image_files, mask_files, gt_files, strict=True)
    ]


@dataclass
class LoadedInputs:
    """Validated inputs at the model's size."""

    pairs: list[Pair]
    images: list[torch.Tensor]  # uint8 (3, S, S)
    masks: list[torch.Tensor]  # bool (S, S), True = repaint
    ground_truths: list[Image.Image | None]
    resized: list[str]  # "name (WxH)" of the images that were not S x S


def load_inputs(model: MaskGIT, pairs: Sequence[Pair], mask_convention: str) -> LoadedInputs:
    """Read every file of `pairs`, check sizes, convert to the model's size (nothing written)."""
    if mask_convention not in MASK_CONVENTIONS:
        raise ValueError(
            f"unknown mask convention {mask_convention!r}; valid: {', '.join(MASK_CONVENTIONS)}"
        )
    size = model.image_size
    loaded = LoadedInputs(list(pairs), [], [], [], [])
    mask_cache: dict[Path, tuple[tuple[int, int], torch.Tensor]] = {}
    for pair in pairs:
        array = load_image(pair.image)
        if pair.mask not in mask_cache:
            mask_array = load_image(pair.mask)
            mask_cache[pair.mask] = (
                mask_array.shape[:2],
                model._mask_tensor(mask_array, mask_convention),
            )
        mask_shape, mask = mask_cache[pair.mask]
        if array.shape[:2] != mask_shape:
            raise ValueError(
                f"{pair.image} is {array.shape[1]}x{array.shape[0]} but its mask {pair.mask} "
                f"is {mask_shape[1]}x{mask_shape[0]}: an image and its mask must have the "
                "same size"
            )
        if array.shape[:2] != (size, size):
            loaded.resized.append(f"{pair.image.name} ({array.shape[1]}x{array.shape[0]})")
        loaded.images.append(model._image_tensor(array))
        loaded.masks.append(mask)
        truth = None
        if pair.ground_truth is not None:
            truth = Image.fromarray(load_image(pair.ground_truth, size))
        loaded.ground_truths.append(truth)
    return loaded


def _check_out(out: Path, *inputs: str | Path | None) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output path exists and is not a folder")
    for folder in inputs:
        if folder is not None and Path(folder).is_dir() and out.resolve() == Path(folder).resolve():
            raise ValueError(
                f"--out {out} is an input folder: outputs would overwrite inputs; "
                "choose another folder"
            )


def inpaint_folder(
    model: MaskGIT,
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    *,
    gt: str | Path | None = None,
    save_steps: bool = False,
    batch_size: int = 32,
    mask_convention: str = "white-repaint",
    feather: int = 0,
    seed: int = 0,
    progress: bool = True,
    log: Log | None = _stderr,
    **decode_kwargs: Any,
) -> list[Path]:
    """Inpaint every image of `images` with its mask from `masks`; write PNGs into `out`.

    Image i (in file-name order) uses seed + i, so results do not depend on `batch_size`.
    With `save_steps`, out/steps/ gets `<stem>_tokens.png`, `<stem>_steps.png`,
    `<stem>_compare.png` (beside the ground truth from `gt` when given) and `<stem>.gif`.
    `decode_kwargs`: steps, schedule, sweet_spot, temperature, choice_temperature, top_k,
    prefill.
    Returns the output image paths, in input order. Validation errors leave `out` untouched.
    """
    check_options(batch_size=batch_size, feather=feather, seed=seed, **decode_kwargs)
    out = Path(out)
    _check_out(out, images, masks)
    pairs = pair_inputs(images, masks, gt)
    inputs = load_inputs(model, pairs, mask_convention)
    if inputs.resized and log is not None:
        size = model.image_size
        log(
            f"note: {len(inputs.resized)} of {len(pairs)} image(s) are not {size}x{size} "
            f"(e.g. {inputs.resized[0]}); resized to {size}x{size} (images bicubic, masks "
            f"keep every repainted pixel), outputs are {size}x{size}"
        )
    written: list[Path] = []
    starts = range(0, len(pairs), batch_size)
    for start in tqdm(starts, desc="inpainting", unit="batch", disable=not progress):
        end = min(start + batch_size, len(pairs))
        result = model.inpaint(
            inputs.images[start:end],
            inputs.masks[start:end],
            seed=seed + start,
            return_steps=save_steps,
            batch_size=end - start,
            feather=feather,
            **decode_kwargs,
        )
        for offset, image in enumerate(result.images):
            index = start + offset
            pair = pairs[index]
            written.append(save_png(image, out / pair.output_name))
            if save_steps:
                save_step_visuals(
                    out / STEPS_FOLDER,
                    Path(pair.output_name).stem,
                    masked_preview(inputs.images[index], inputs.masks[index]),
                    image,
                    result.steps[offset],
                    inputs.ground_truths[index],
                    start_mask=result.token_masks[offset],
                )
    return written


def generate_files(
    model: MaskGIT,
    n: int,
    out: str | Path,
    *,
    save_steps: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    prefix: str = "sample",
    progress: bool = True,
    **decode_kwargs: Any,
) -> list[Path]:
    """Generate `n` images into `out` as `<prefix>_0000.png` ...; image i uses seed + i.

    With `save_steps`, out/steps/ gets the four step visuals per image (the "input" of the
    compare picture is the empty, fully masked canvas).
    """
    if n < 1:
        raise ValueError(f"n={n}: expected at least 1 image")
    check_options(batch_size=batch_size, seed=seed, **decode_kwargs)
    out = Path(out)
    _check_out(out)
    digits = max(4, len(str(n - 1)))
    size = model.image_size
    blank = masked_preview(
        torch.full((3, size, size), MASKED_PIXEL_VALUE, dtype=torch.uint8),
        torch.ones(size, size, dtype=torch.bool),
    )
    written: list[Path] = []
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="generating", unit="batch", disable=not progress):
        count = min(batch_size, n - start)
        result = model.generate(
            count, seed=seed + start, return_steps=save_steps, batch_size=count, **decode_kwargs
        )
        for offset, image in enumerate(result.images):
            stem = f"{prefix}_{start + offset:0{digits}d}"
            written.append(save_png(image, out / f"{stem}.png"))
            if save_steps:
                save_step_visuals(
                    out / STEPS_FOLDER,
                    stem,
                    blank,
                    image,
                    result.steps[offset],
                    start_mask=result.token_masks[offset],
                )
    return written
