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
equal), ground truth, options. Images of any size and aspect ratio are inpainted at their
own size (the model fills a window around the hole, see `maskgit.pipeline.MaskGIT.inpaint`);
outputs are PNG files of the input's size, equal to the input outside the mask, named after
the inputs (`foo.jpg` -> `foo.png`), tagged with the input's colour profile when it has an
RGB one (`maskgit.reader.colour_profile`), each written to a temporary name and renamed, so
no half-written file is ever left behind; an output name longer than the file system allows
is refused before the first is written. Step pictures (--save-steps) show the model's steps at
its resolution.
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

from maskgit.data import DataError, list_images
from maskgit.fileio import check_name_lengths, check_no_overwrite
from maskgit.options import DecodingOptions, resolve
from maskgit.pipeline import (
    MASKED_PIXEL_VALUE,
    MaskGIT,
    Pad,
    check_run_options,
    outpaint_canvas,
    outpaint_layout,
)
from maskgit.reader import (
    check_convention,
    image_tensor,
    read_image,
    read_image_and_profile,
    read_mask,
)
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
    """Validated inputs, each at its own size."""

    pairs: list[Pair]
    images: list[torch.Tensor]  # uint8 (3, H, W)
    masks: list[torch.Tensor]  # bool (H, W), True = repaint
    ground_truths: list[Image.Image | None]
    profiles: list[bytes | None]  # each image's RGB colour profile (ICC), kept on its output


def load_inputs(model: MaskGIT, pairs: Sequence[Pair], mask_convention: str) -> LoadedInputs:
    """Read every file of `pairs` at its own size and check sizes (nothing written)."""
    check_convention(mask_convention)
    loaded = LoadedInputs(list(pairs), [], [], [], [])
    mask_cache: dict[Path, torch.Tensor] = {}
    for pair in pairs:
        array, profile = read_image_and_profile(pair.image)
        if pair.mask not in mask_cache:
            mask_cache[pair.mask] = read_mask(pair.mask, mask_convention)
        mask = mask_cache[pair.mask]
        if array.shape[:2] != tuple(mask.shape):
            raise ValueError(
                f"{pair.image} is {array.shape[1]}x{array.shape[0]} but its mask {pair.mask} "
                f"is {mask.shape[1]}x{mask.shape[0]}: an image and its mask must have the "
                "same size"
            )
        loaded.images.append(image_tensor(array, None))
        loaded.profiles.append(profile)
        loaded.masks.append(mask)
        truth = None
        if pair.ground_truth is not None:
            truth = Image.fromarray(read_image(pair.ground_truth))
        loaded.ground_truths.append(truth)
    return loaded


def _check_out(out: Path, *inputs: str | Path | None) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output path exists and is not a folder")
    check_no_overwrite(out, (), [("input", path) for path in inputs])


def _written(names: Sequence[str], save_steps: bool) -> list[str]:
    """The files (relative to the output folder) a run writes for outputs named `names`."""
    files = [f"{name}.png" for name in names]
    if save_steps:
        suffixes = ("_tokens.png", "_steps.png", "_compare.png", ".gif")
        files += [f"{STEPS_FOLDER}/{name}{suffix}" for name in names for suffix in suffixes]
    return files


def _check_pairs(out: Path, pairs: Sequence[Pair], save_steps: bool) -> None:
    """No output file is one of the files read (image, mask, ground truth), whatever the path."""
    inputs = [("image", pair.image) for pair in pairs] + [("mask", pair.mask) for pair in pairs]
    inputs += [("ground truth", pair.ground_truth) for pair in pairs]
    names = [Path(pair.output_name).stem for pair in pairs]
    check_no_overwrite(out, _written(names, save_steps), inputs)


def _write_batches(
    model: MaskGIT,
    names: Sequence[str],
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    out: Path,
    options: DecodingOptions,
    *,
    ground_truths: Sequence[Image.Image | None] | None = None,
    profiles: Sequence[bytes | None] | None = None,
    save_steps: bool = False,
    batch_size: int = 32,
    feather: int = 0,
    progress: bool = True,
    desc: str = "inpainting",
) -> list[Path]:
    """Decode uint8 images (3, H, W) with bool masks (H, W) by batches; write `<name>.png`
    (tagged with `profiles[i]`, the input's colour profile, when given).

    The progress bar counts decoding steps (batches x steps), so a single batch moves too.

    Image i uses options.seed + i, so results do not depend on `batch_size`.
    """
    written: list[Path] = []
    starts = range(0, len(names), batch_size)
    steps = options.steps_to_run
    bar = tqdm(total=len(starts) * steps, desc=desc, unit="step", disable=not progress)
    for number, start in enumerate(starts):
        end = min(start + batch_size, len(names))
        if len(starts) > 1:
            bar.set_postfix_str(f"batch {number + 1}/{len(starts)}")
        result = model.inpaint(
            images[start:end],
            masks[start:end],
            options,
            first_index=start,
            return_steps=save_steps,
            batch_size=end - start,
            feather=feather,
            on_step=(lambda _: bar.update(1)) if progress else None,
        )
        bar.update((number + 1) * steps - bar.n)  # a decode ends early when nothing is left
        for offset, image in enumerate(result.images):
            index = start + offset
            profile = profiles[index] if profiles else None
            written.append(save_png(image, out / f"{names[index]}.png", profile))
            if save_steps:
                save_step_visuals(
                    out / STEPS_FOLDER,
                    names[index],
                    masked_preview(images[index], masks[index]),
                    image,
                    result.steps[offset],
                    ground_truths[index] if ground_truths else None,
                    start_mask=result.token_masks[offset],
                )
    bar.close()
    return written


def inpaint_folder(
    model: MaskGIT,
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    options: DecodingOptions | None = None,
    *,
    gt: str | Path | None = None,
    save_steps: bool = False,
    batch_size: int = 32,
    mask_convention: str = "white-repaint",
    feather: int = 0,
    progress: bool = True,
    log: Log | None = _stderr,
    **changes: Any,
) -> list[Path]:
    """Inpaint every image of `images` with its mask from `masks`; write PNGs into `out`.

    `options` (default DEFAULT_DECODING) with keyword `changes` say how to decode; image i
    (in file-name order) uses options.seed + i, so results do not depend on `batch_size`.
    With `save_steps`, out/steps/ gets `<stem>_tokens.png`, `<stem>_steps.png`,
    `<stem>_compare.png` (beside the ground truth from `gt` when given) and `<stem>.gif`.
    Returns the output image paths, in input order. Validation errors leave `out` untouched.
    """
    options = resolve(options, **changes)
    check_run_options(batch_size=batch_size, feather=feather)
    out = Path(out)
    _check_out(out, images, masks, gt)
    pairs = pair_inputs(images, masks, gt)
    _check_pairs(out, pairs, save_steps)
    inputs = load_inputs(model, pairs, mask_convention)
    names = [Path(pair.output_name).stem for pair in pairs]
    return _write_batches(
        model,
        names,
        inputs.images,
        inputs.masks,
        out,
        options,
        ground_truths=inputs.ground_truths,
        profiles=inputs.profiles,
        save_steps=save_steps,
        batch_size=batch_size,
        feather=feather,
        progress=progress,
    )


def outpaint_files(
    model: MaskGIT,
    images: str | Path,
    out: str | Path,
    options: DecodingOptions | None = None,
    *,
    pad: Pad | None = None,
    canvas: Sequence[int] | None = None,
    at: Sequence[int] | None = None,
    save_steps: bool = False,
    batch_size: int = 32,
    progress: bool = True,
    **changes: Any,
) -> list[Path]:
    """Outpaint every image of `images` (a file or folder) at its own size: each is placed on
    a larger canvas (a margin `pad`, or `canvas` (width, height) with the image's top-left
    `at`; see `pipeline.outpaint_layout`) and the rest is generated. PNGs of the canvas size,
    equal to the image inside its placement, named after the inputs go into `out`.
    Everything (layouts included) is checked before the first output is written."""
    options = resolve(options, **changes)
    check_run_options(batch_size=batch_size)
    out = Path(out)
    _check_out(out, images)
    files, is_folder = _files(images, "images")
    if is_folder:
        _by_stem(files, images)  # two inputs must not write the same output
    written = _written([path.stem for path in files], save_steps)
    check_no_overwrite(out, written, [("image", path) for path in files])
    canvases, masks, profiles = [], [], []
    for path in files:
        array, profile = read_image_and_profile(path)
        pixels = image_tensor(array, None)
        profiles.append(profile)
        try:
            placement = outpaint_layout(pixels.shape[2], pixels.shape[1], pad, canvas, at)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        extended, mask = outpaint_canvas(pixels, placement)
        canvases.append(extended)
        masks.append(mask)
    return _write_batches(
        model,
        [path.stem for path in files],
        canvases,
        masks,
        out,
        options,
        profiles=profiles,
        save_steps=save_steps,
        batch_size=batch_size,
        progress=progress,
        desc="outpainting",
    )


class _Lazy(Sequence[Any]):
    """A sequence of `length` items, item i made by `make(i)` only when it is asked for."""

    def __init__(self, length: int, make: Callable[[int], Any]):
        self.length, self.make = length, make

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.make(i) for i in range(*index.indices(self.length))]
        if not -self.length <= index < self.length:
            raise IndexError(index)
        return self.make(index % self.length)


def generate_files(
    model: MaskGIT,
    n: int,
    out: str | Path,
    options: DecodingOptions | None = None,
    *,
    save_steps: bool = False,
    batch_size: int = 32,
    prefix: str = "sample",
    progress: bool = True,
    **changes: Any,
) -> list[Path]:
    """Generate `n` images into `out` as `<prefix>_0000.png` ...; image i uses seed + i.

    With `save_steps`, out/steps/ gets the four step visuals per image (the "input" of the
    compare picture is the empty, fully masked canvas).
    """
    if n < 1:
        raise ValueError(f"n={n}: expected at least 1 image")
    options = resolve(options, **changes)
    check_run_options(batch_size=batch_size)
    out = Path(out)
    _check_out(out)
    digits = max(4, len(str(n - 1)))
    check_name_lengths(out, _written([f"{prefix}_{n - 1:0{digits}d}"], save_steps))  # longest
    size = model.image_size
    blank = torch.full((3, size, size), MASKED_PIXEL_VALUE, dtype=torch.uint8)
    full = torch.ones(size, size, dtype=torch.bool)
    return _write_batches(  # names and canvases made batch by batch: n may be 10**12 (#29.12)
        model,
        _Lazy(n, lambda i: f"{prefix}_{i:0{digits}d}"),
        _Lazy(n, lambda i: blank),
        _Lazy(n, lambda i: full),
        out,
        options,
        save_steps=save_steps,
        batch_size=batch_size,
        progress=progress,
        desc="generating",
    )
