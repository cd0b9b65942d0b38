"""Pictures: image grids, per-step frames (token masks, decoded images), animated GIFs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from maskgit.fileio import atomic_write


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """uint8 (3, H, W) tensor or (H, W, 3) array -> PIL RGB image."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(np.asarray(image, dtype=np.uint8))


def image_grid(
    images: Sequence[Image.Image],
    columns: int,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile equally sized images in rows of `columns`, `pad` pixels apart."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), background)
    for i, img in enumerate(images):
        grid.paste(
            img.convert("RGB"), (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad))
        )
    return grid


def save_grid(images: Sequence[Image.Image], path: str | Path, columns: int) -> Path:
    """Write an image grid to `path` (PNG); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, columns).save(path)
    return path


# --------------------------------------------------------------------------- decoding steps
#
# Step frames come from `maskgit.pipeline.StepFrame`; this module must not import the
# pipeline (the pipeline sits above it), so frames are typed by the protocol below.

KNOWN_COLOUR = (232, 232, 232)  # token given (or fixed) - light
UNKNOWN_COLOUR = (40, 40, 48)  # token still [MASK] - dark
GRID_COLOUR = (160, 160, 160)
HOLE_COLOURS = ((128, 128, 128), (176, 176, 176))  # checkerboard painted into a hole
MIN_READABLE = 128  # small images are upscaled (nearest) to at least this many pixels
LABEL_HEIGHT = 14


class FrameLike(Protocol):
    """What a decoding-step frame provides (maskgit.pipeline.StepFrame matches it)."""

    step: int
    token_mask: np.ndarray  # (h, w) bool, True = still unknown after this step
    image: Image.Image  # decoded from this step's prediction


def readable_scale(width: int, minimum: int = MIN_READABLE) -> int:
    """Integer nearest-neighbour factor that makes an image `width` at least ~`minimum` wide."""
    return max(1, minimum // max(width, 1))


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour upscale by an integer factor (pixels stay crisp squares)."""
    if factor <= 1:
        return image.convert("RGB")
    return image.convert("RGB").resize((image.width * factor, image.height * factor), Image.NEAREST)


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font without a size
        return ImageFont.load_default()


def labelled(image: Image.Image, text: str, height: int = LABEL_HEIGHT) -> Image.Image:
    """`image` with a white caption strip of `height` pixels above it."""
    out = Image.new("RGB", (image.width, image.height + height), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, height))
    draw = ImageDraw.Draw(out)
    draw.text((2, 1), text, fill=(0, 0, 0), font=_font(max(8, height - 3)))
    return out


def _row(tiles: Sequence[Image.Image], pad: int = 2) -> Image.Image:
    """Tiles side by side (equal heights not required), `pad` white pixels apart."""
    width = sum(t.width for t in tiles) + pad * (len(tiles) + 1)
    height = max(t.height for t in tiles) + 2 * pad
    out = Image.new("RGB", (width, height), (255, 255, 255))
    x = pad
    for tile in tiles:
        out.paste(tile.convert("RGB"), (x, pad))
        x += tile.width + pad
    return out


def token_mask_image(token_mask: np.ndarray, cell: int = 8, grid: bool = True) -> Image.Image:
    """A (h, w) bool token mask (True = unknown) as squares of `cell` pixels: unknown dark."""
    mask = np.asarray(token_mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"token mask must be (h, w), got shape {mask.shape}")
    pixels = np.where(mask[..., None], UNKNOWN_COLOUR, KNOWN_COLOUR).astype(np.uint8)
    pixels = pixels.repeat(cell, axis=0).repeat(cell, axis=1)
    if grid and cell >= 4:
        pixels[::cell, :] = GRID_COLOUR
        pixels[:, ::cell] = GRID_COLOUR
        pixels[-1, :] = GRID_COLOUR
        pixels[:, -1] = GRID_COLOUR
    return Image.fromarray(pixels)


def _cell_for(token_mask: np.ndarray) -> int:
    return max(4, MIN_READABLE // max(np.asarray(token_mask).shape[1], 1))


def _step_label(frame: FrameLike) -> str:
    if frame.step < 0:
        return "no steps"
    return f"step {frame.step + 1}"  # frames count steps from 0; people count from 1


@dataclass
class _Frame:
    step: int
    token_mask: np.ndarray
    image: Image.Image


def token_mask_grid(
    frames: Sequence[FrameLike],
    cell: int | None = None,
    labels: bool = True,
    start_mask: np.ndarray | None = None,
    columns: int | None = None,
) -> Image.Image:
    """The token mask after each step, one tile per step (unknown tokens dark, known light).

    `start_mask` (h, w) adds a first tile with the mask before decoding. Each token is drawn
    as a `cell`-pixel square (default: tiles about 128 pixels wide). `columns` wraps rows.
    """
    if not frames and start_mask is None:
        raise ValueError("token_mask_grid needs at least one frame")
    masks = ([("start", start_mask)] if start_mask is not None else []) + [
        (_step_label(f), f.token_mask) for f in frames
    ]
    cell = cell or _cell_for(masks[0][1])
    tiles = []
    for text, mask in masks:
        tile = token_mask_image(mask, cell)
        tiles.append(labelled(tile, text) if labels else tile)
    if columns is None or columns >= len(tiles):
        return _row(tiles)
    return image_grid(tiles, columns)


def step_strip(
    frames: Sequence[FrameLike],
    scale: int | None = None,
    labels: bool = True,
    columns: int | None = None,
) -> Image.Image:
    """The image decoded at each step, side by side (small images upscaled, nearest)."""
    if not frames:
        raise ValueError("step_strip needs at least one frame")
    scale = scale or readable_scale(frames[0].image.width)
    tiles = []
    for frame in frames:
        tile = upscale(frame.image, scale)
        tiles.append(labelled(tile, _step_label(frame)) if labels else tile)
    if columns is None or columns >= len(tiles):
        return _row(tiles)
    return image_grid(tiles, columns)


def side_by_side(
    masked_input: Image.Image,
    result: Image.Image,
    ground_truth: Image.Image | None = None,
    scale: int | None = None,
    labels: bool = True,
) -> Image.Image:
    """Masked input | result [| ground truth], upscaled alike, with captions."""
    named = [("input", masked_input), ("result", result)]
    if ground_truth is not None:
        named.append(("ground truth", ground_truth))
    width = max(img.width for _, img in named)
    scale = scale or readable_scale(width)
    tiles = []
    for text, img in named:
        if img.size != named[0][1].size:  # e.g. a ground truth of another size
            img = img.resize(named[0][1].size, Image.BICUBIC)
        tile = upscale(img, scale)
        tiles.append(labelled(tile, text) if labels else tile)
    return _row(tiles)


def masked_preview(
    image: Image.Image | np.ndarray | torch.Tensor,
    pixel_mask: np.ndarray | torch.Tensor,
    checker: int | None = None,
) -> Image.Image:
    """`image` with the hole (pixel_mask True = repaint, (H, W)) painted as a grey checkerboard."""
    if not isinstance(image, Image.Image):
        image = to_pil(image)
    pixels = np.array(image.convert("RGB"))
    mask = np.asarray(
        pixel_mask.cpu().numpy() if isinstance(pixel_mask, torch.Tensor) else pixel_mask, bool
    )
    if mask.shape != pixels.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {pixels.shape[:2]} differ in size")
    checker = checker or max(2, pixels.shape[1] // 16)
    yy, xx = np.indices(mask.shape)
    pattern = ((yy // checker + xx // checker) % 2).astype(bool)
    hole = np.where(pattern[..., None], HOLE_COLOURS[1], HOLE_COLOURS[0]).astype(np.uint8)
    pixels[mask] = hole[mask]
    return Image.fromarray(pixels)


def step_animation(
    frames: Sequence[FrameLike], scale: int | None = None, labels: bool = True
) -> list[Image.Image]:
    """One picture per step: the token mask beside the decoded image, captioned with the step.

    The token mask shrinks at every step, so consecutive pictures always differ (GIF writers
    merge identical consecutive frames).
    """
    if not frames:
        raise ValueError("step_animation needs at least one frame")
    scale = scale or readable_scale(frames[0].image.width)
    side = frames[0].image.width * scale
    mask_shape = np.asarray(frames[0].token_mask).shape
    cell = max(1, side // max(mask_shape[1], 1))
    pictures = []
    total = len(frames)
    for frame in frames:
        pair = _row([token_mask_image(frame.token_mask, cell), upscale(frame.image, scale)])
        text = f"{_step_label(frame)}/{total}" if frame.step >= 0 else _step_label(frame)
        pictures.append(labelled(pair, text) if labels else pair)
    return pictures


def save_gif(
    frames: Sequence[FrameLike] | Sequence[Image.Image],
    path: str | Path,
    duration_ms: int = 400,
    last_frame_ms: int | None = 1500,
    loop: int = 0,
) -> Path:
    """Write an animated GIF (atomically). Step frames become `step_animation` pictures.

    `last_frame_ms` holds the final picture longer (None: same as the others).
    """
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    pictures = (
        [f.convert("RGB") for f in frames]
        if isinstance(frames[0], Image.Image)
        else step_animation(frames)  # type: ignore[arg-type]
    )
    durations = [int(duration_ms)] * len(pictures)
    if last_frame_ms is not None:
        durations[-1] = int(last_frame_ms)
    path = Path(path)

    def write(tmp: Path) -> None:
        pictures[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=durations if len(pictures) > 1 else durations[0],
            loop=loop,
            disposal=1,
        )

    atomic_write(path, write)
    return path


def save_png(image: Image.Image, path: str | Path, icc_profile: bytes | None = None) -> Path:
    """Write a PNG atomically (a reader never sees half a file), tagged with `icc_profile`
    when given (the input's colour profile, `maskgit.reader.colour_profile`); returns the path.
    """
    path = Path(path)
    tags = {"icc_profile": icc_profile} if icc_profile else {}
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", **tags))
    return path


STEP_VISUALS = ("_tokens.png", "_steps.png", "_compare.png", ".gif")  # save_step_visuals'


def save_step_visuals(
    out_dir: str | Path,
    stem: str,
    masked_input: Image.Image,
    result: Image.Image,
    frames: Sequence[FrameLike],
    ground_truth: Image.Image | None = None,
    start_mask: np.ndarray | None = None,
    duration_ms: int = 400,
) -> list[Path]:
    """Write `<stem>_tokens.png`, `<stem>_steps.png`, `<stem>_compare.png` and `<stem>.gif`.

    tokens: the token mask after each step; steps: the image decoded at each step; compare:
    masked input | result | ground truth; gif: token mask and decoded image, step by step.
    Returns the four paths in that order. With no frames (nothing was masked, so no step
    ran) the pictures show the result as a single "no steps" frame.
    """
    out_dir = Path(out_dir)
    if not frames:
        if start_mask is None:
            raise ValueError("save_step_visuals needs frames or a start_mask")
        frames = [_Frame(-1, np.asarray(start_mask, bool), result)]
        start_mask = None
    paths = [
        save_png(token_mask_grid(frames, start_mask=start_mask), out_dir / f"{stem}_tokens.png"),
        save_png(step_strip(frames), out_dir / f"{stem}_steps.png"),
        save_png(side_by_side(masked_input, result, ground_truth), out_dir / f"{stem}_compare.png"),
        save_gif(frames, out_dir / f"{stem}.gif", duration_ms),
    ]
    return paths
