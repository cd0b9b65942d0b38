"""MaskGIT pipeline: tokenizer + transformer -> inpaint, outpaint, generate.

Inputs may be PIL images, NumPy arrays or torch tensors, read by `maskgit.reader` (its
docstring has the rules for dtypes, transparency and resizing); masks likewise, with
`mask_convention` for mask images, or bool arrays/tensors (H, W) in the package convention
(True = repaint). Results come out as PIL images at each input's own size (`MaskGIT.inpaint`
says how the model, which works at its own square resolution, fills any size). Decoding is set
by a `maskgit.options.DecodingOptions` (default DEFAULT_DECODING, the shipped model's best)
and/or its fields as keywords (`model.inpaint(image, mask, steps=12)`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maskgit.checkpoint import CheckpointError, check_pair, load_model
from maskgit.data import to_model_range, to_uint8
from maskgit.decoding import DecodeStep, StepCallback, decode
from maskgit.fill import classical_fill, harmonic_fill
from maskgit.masking import pixel_to_token_mask
from maskgit.options import BLENDS, DecodingOptions, resolve
from maskgit.phases import DECODING_PHASE, checkpoint
from maskgit.reader import ImageLike, fit_mask, image_tensor, mask_tensor
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer

DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "emoji-demo"
# `MaskGIT.from_pretrained(..., quantize=...)`: int8 = dynamic int8 linear layers (CPU only)
QUANTIZE_MODES = ("int8",)
MASKED_PIXEL_VALUE = 255  # canvas colour of unknown pixels (outpaint, generate, previews)
# The model fills a square window whose side is CROP_CONTEXT times the hole's bounding-box
# side (so a hole keeps at least its own size of context on every side), at least the model's
# resolution (a smaller window would only be enlarged).
CROP_CONTEXT = 2.0
# A crop is taken only when its window is at most CROP_LIMIT times the image's longer side;
# a larger hole is filled from the whole picture. With 0.5 a crop shows the model at most a
# quarter of the picture: a hole small in a large picture (a 4x4 mosaic of emoji) is filled
# at the scale the model knows, while a hole large in an upscaled picture is filled from the
# whole picture shrunk, which is what the model was trained on (an enlarged part of an emoji
# is outside its data). Chosen by benchmarks/crop_vs_whole.py (issue #21): crop >= whole on
# both.
CROP_LIMIT = 0.5
# Where a window reaches outside the image (a non-square image, or a window larger than the
# image's short side), it is padded with white, marked known: white is the background the
# emoji models are trained on and the colour transparency is composited on (reader), so the
# tokenizer reads the padding as plain background; edge replication would instead smear the
# border pixels into stripes that the transformer takes as content to continue. The padding is
# never repainted and never pasted back.
PAD_VALUE = MASKED_PIXEL_VALUE


@dataclass(frozen=True)
class Window:
    """A square `side` x `side` window of an image, its top-left corner at (top, left);
    negative or overhanging coordinates are outside the image (padding)."""

    top: int
    left: int
    side: int
    whole: bool  # the window holds the whole image (padded to a square)


def crop_window(
    mask: torch.Tensor, model_size: int, context: float = CROP_CONTEXT, limit: float = CROP_LIMIT
) -> Window:
    """The square window the model fills for a bool mask (H, W), True = repaint.

    Side: `context` times the longer side of the mask's bounding box, at least `model_size`.
    The window is centred on the box and shifted to lie inside the image where it fits (no
    padding); when the side is over `limit` times the image's longer side (a large hole, a
    small image, an empty mask) the window is the whole image, centred in a square (white
    padding, PAD_VALUE).
    """
    if context < 1:
        raise ValueError(f"context={context}: expected at least 1 (the window holds the hole)")
    if not 0 < limit <= 1:
        raise ValueError(f"limit={limit}: expected more than 0 and at most 1 (the whole image)")
    height, width = (int(v) for v in mask.shape)
    longest = max(height, width)
    rows, cols = torch.nonzero(mask.any(1)), torch.nonzero(mask.any(0))
    if len(rows) == 0:
        side = longest
    else:
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
        wanted = context * max(y1 - y0, x1 - x0)  # context = infinity: always the whole
        side = longest if wanted >= longest else max(math.ceil(wanted), model_size)
    if side >= longest or side > limit * longest:
        return Window((height - longest) // 2, (width - longest) // 2, longest, True)

    def start(lo: int, hi: int, extent: int) -> int:
        if side > extent:  # the window overhangs this axis: centred on the image, padded
            return (extent - side) // 2
        return min(max((lo + hi - side) // 2, 0), extent - side)

    return Window(start(y0, y1, height), start(x0, x1, width), side, False)


def _model_region(
    window: Window, height: int, width: int, model_size: int
) -> tuple[slice, slice, slice, slice]:
    """Where the part of `window` inside a `height` x `width` image lies: (image rows, image
    cols) and, in the window brought to the model's `model_size` square, (model rows, model
    cols), each at least one pixel. Only this part is ever resized, in both directions: the
    padding of the window exists at the model's resolution only, so memory and time grow
    with the image's pixels, not with the window's side squared (#29.9: a 10000x10 image
    would otherwise make a 10000x10000 window)."""
    scale = model_size / window.side

    def axis(start: int, extent: int) -> tuple[slice, slice]:
        lo, hi = max(start, 0), min(start + window.side, extent)
        first = min(round((lo - start) * scale), model_size - 1)
        last = min(max(round((hi - start) * scale), first + 1), model_size)
        return slice(lo, hi), slice(first, last)

    (rows, model_rows), (cols, model_cols) = axis(window.top, height), axis(window.left, width)
    return rows, cols, model_rows, model_cols


def _length(part: slice) -> int:
    return part.stop - part.start


def to_model_view(
    image: torch.Tensor, mask: torch.Tensor, window: Window, model_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The window of uint8 `image` (3, H, W) and bool `mask` (H, W) at the model's size:
    (uint8 (3, S, S), bool (S, S)). The image's part of the window is resized bicubic (the
    window is square, so the aspect is kept) to its place in the square, its mask by the
    any-part rule (`fit_mask`); the rest of the square is padding, white and known."""
    rows, cols, model_rows, model_cols = _model_region(window, *image.shape[1:], model_size)
    shape = (_length(model_rows), _length(model_cols))
    crop = torch.full((3, model_size, model_size), PAD_VALUE, dtype=torch.uint8)
    crop_mask = torch.zeros(model_size, model_size, dtype=torch.bool)
    crop[:, model_rows, model_cols] = _resize(image[:, rows, cols], shape)
    crop_mask[model_rows, model_cols] = fit_mask(mask[rows, cols], shape)
    return crop, crop_mask


def _resize(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, h, w) -> (3, *shape), bicubic (PIL's, as the reader resizes)."""
    if tuple(image.shape[1:]) == tuple(shape):
        return image
    array = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    resized = array.resize((shape[1], shape[0]), Image.BICUBIC)
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1)


def paste_window(
    image: torch.Tensor,
    mask: torch.Tensor,
    fill: torch.Tensor,
    window: Window,
    feather: int = 0,
    blend: str = "none",
) -> torch.Tensor:
    """`image` (uint8 (3, H, W)) with the model's `fill` (uint8 (3, S, S) of `window`): the
    image's part of the fill (`_model_region`) brought back to its resolution and pasted
    into the masked pixels only (`paste_known` within the window)."""
    rows, cols, model_rows, model_cols = _model_region(window, *image.shape[1:], fill.shape[-1])
    part = _resize(fill[:, model_rows, model_cols], (_length(rows), _length(cols)))
    out = image.clone()
    out[:, rows, cols] = paste_known(
        image[None, :, rows, cols], part[None], mask[None, rows, cols], feather=feather, blend=blend
    )[0]
    return out


@dataclass
class StepFrame:
    """One decoding step of one image, for visualisation."""

    step: int
    token_mask: np.ndarray  # (h, w) bool, True = still unknown after this step
    image: Image.Image  # the image decoded from this step's prediction at every position


@dataclass
class InpaintResult:
    images: list[Image.Image]
    steps: list[list[StepFrame]] = field(default_factory=list)  # per image, per step
    token_masks: list[np.ndarray] = field(default_factory=list)  # (h, w) at the start
    windows: list[Window] = field(default_factory=list)  # where each image was filled


class MaskGIT:
    """A tokenizer and a transformer that share a codebook; decoding by `maskgit.decoding`."""

    def __init__(
        self,
        tokenizer: VQGAN,
        transformer: BidirectionalTransformer,
        device: str | torch.device | None = None,
    ):
        if transformer.cfg.codebook_size != tokenizer.cfg.codebook_size:
            raise CheckpointError(
                f"transformer codebook {transformer.cfg.codebook_size} != tokenizer codebook "
                f"{tokenizer.cfg.codebook_size}: they were not trained together"
            )
        if transformer.cfg.num_tokens != tokenizer.cfg.token_grid**2:
            raise CheckpointError(
                f"transformer expects {transformer.cfg.num_tokens} tokens, the tokenizer makes "
                f"a {tokenizer.cfg.token_grid}x{tokenizer.cfg.token_grid} grid"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.quantize: str | None = None  # "int8" after from_pretrained(..., quantize="int8")
        self.tokenizer = tokenizer.to(self.device).eval()
        self.transformer = transformer.to(self.device).eval()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str | torch.device | None = None,
        *,
        quantize: str | None = None,
    ) -> MaskGIT:
        """Load a model folder holding tokenizer.safetensors and transformer.safetensors.

        With no path: the embedded default model shipped in the package (emoji, 64x64).
        `quantize="int8"`: the transformer's linear layers run in int8 (`quantize_int8`;
        CPU only: the device defaults to the CPU then, and a CUDA device is an error).
        """
        if quantize is not None:
            device = check_quantize(quantize, device)
        folder = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if not folder.is_dir():
            raise CheckpointError(
                f"{folder}: not a model folder (expected tokenizer.safetensors and "
                "transformer.safetensors inside)"
            )
        tokenizer = load_model(folder / "tokenizer.safetensors", "tokenizer")
        transformer = load_model(folder / "transformer.safetensors", "transformer")
        check_pair(folder / "tokenizer.safetensors", folder / "transformer.safetensors")
        try:
            model = cls(tokenizer, transformer, device)
        except CheckpointError as exc:  # the two files do not belong together: name the folder
            raise CheckpointError(f"{folder}: {exc}") from exc
        if quantize is not None:
            model.transformer = quantize_int8(model.transformer)
        model.quantize = quantize
        return model

    @property
    def image_size(self) -> int:
        return self.tokenizer.cfg.image_size

    @property
    def downsample(self) -> int:
        return self.tokenizer.cfg.downsample

    # ------------------------------------------------------------------ decoding

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        with (
            torch.no_grad(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"),
        ):
            return self.transformer(tokens).float()

    @torch.no_grad()
    def images_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, S, S) decoded from token ids (B, N) or (B, h, w)."""
        grid = self.tokenizer.cfg.token_grid
        images = self.tokenizer.decode_tokens(tokens.reshape(-1, grid, grid).to(self.device))
        return to_uint8(images.cpu())

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Tokenizer round trip of uint8 images (B, 3, S, S): encode, quantise, decode."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = to_model_range(images[start : start + batch_size]).to(self.device)
            out.append(self.images_from_tokens(self.tokenizer.encode(batch).flatten(1)))
        return torch.cat(out)

    @torch.no_grad()
    def decode_batch(
        self,
        images: torch.Tensor,
        pixel_masks: torch.Tensor,
        options: DecodingOptions,
        *,
        first_index: int = 0,
        return_steps: bool = False,
        context: torch.Tensor | None = None,
        on_step: StepCallback | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[DecodeStep]]:
        """The decoder's images for uint8 images (B,3,S,S) with bool masks (B,S,S), no paste.

        The hole is pre-filled by `options.prefill` before encoding; `context` (uint8
        (B,3,S,S)), when given, is encoded instead (for diagnostics, e.g. the ground truth:
        the best context there can be). Image i uses options.seed + first_index + i, so
        results do not depend on the batching.
        Returns (decoded images, token masks (B, h, w), step records when `return_steps`).
        """
        checkpoint(f"pre-filling the hole ({options.prefill})")
        if context is None:
            context = classical_fill(options.prefill, images, pixel_masks)
        checkpoint("encoding (tokenizer)")
        tokens = self.tokenizer.encode(to_model_range(context).to(self.device))  # (B, h, w)
        unknown = pixel_to_token_mask(pixel_masks, self.downsample).to(self.device)
        first = options.seed + first_index
        gens = [torch.Generator().manual_seed(first + i) for i in range(len(images))]
        checkpoint(DECODING_PHASE)
        final, records = decode(
            tokens.flatten(1),
            unknown.flatten(1),
            self._logits,
            self.transformer.cfg.mask_token_id,
            options,
            generator=gens,
            record_steps=return_steps,
            on_step=on_step,
        )
        checkpoint("decoding the tokens to pixels")
        return self.images_from_tokens(final), unknown.cpu(), records

    def inpaint(
        self,
        images: ImageLike | Sequence[ImageLike],
        masks: ImageLike | Sequence[ImageLike],
        options: DecodingOptions | None = None,
        *,
        return_steps: bool = False,
        mask_convention: str = "white-repaint",
        feather: int = 0,
        batch_size: int = 32,
        on_step: StepCallback | None = None,
        first_index: int = 0,
        crop_context: float = CROP_CONTEXT,
        crop_limit: float = CROP_LIMIT,
        **changes: Any,
    ) -> InpaintResult:
        """Repaint the masked pixels of each image; each comes back at its own size, and
        pixels outside the mask stay exact.

        Images of any size and aspect ratio: the mask is read at the image's size (it must
        match), the model fills a square window around the hole (`crop_window`: the hole's
        bounding box, `crop_context` times its side, never less than the model's resolution;
        the whole image, padded to a square, when that is over `crop_limit` times the image's
        longer side), brought to
        the model's resolution and back, and the fill is pasted into the masked pixels only.
        A model-size image fills itself, unchanged. `result.windows` says where each image
        was filled; step frames and token masks are at the model's resolution.
        `options` (default DEFAULT_DECODING) with keyword `changes` (its field names) say
        how to decode; image i uses the seed options.seed + first_index + i. `feather` > 0
        blends the generated content into the hole over that many pixels inside the mask
        edge (outside the mask nothing changes). `on_step` sees every decoding step of every
        batch (maskgit.decoding.DecodeStep).
        """
        options = resolve(options, **changes)
        check_run_options(batch_size=batch_size, feather=feather, image_size=self.image_size)
        images, masks = _as_list(images), _as_list(masks, item_ndim=2)
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks")
        size = self.image_size
        result = InpaintResult([])
        for start in range(0, len(images), batch_size):
            full = [image_tensor(x, None) for x in images[start : start + batch_size]]
            holes = [
                mask_tensor(m, None, mask_convention) for m in masks[start : start + batch_size]
            ]
            windows, batch, pmask = [], [], []
            for index, (image, hole) in enumerate(zip(full, holes, strict=True)):
                if tuple(hole.shape) != tuple(image.shape[1:]):
                    raise ValueError(
                        f"image {start + index} is {image.shape[2]}x{image.shape[1]} but its mask "
                        f"is {hole.shape[1]}x{hole.shape[0]}: an image and its mask must have "
                        "the same size"
                    )
                window = crop_window(hole, size, crop_context, crop_limit)
                crop, crop_mask = to_model_view(image, hole, window, size)
                windows.append(window)
                batch.append(crop)
                pmask.append(crop_mask)
            batch_t, pmask_t = torch.stack(batch), torch.stack(pmask)
            decoded, token_masks, records = self.decode_batch(
                batch_t,
                pmask_t,
                options,
                first_index=first_index + start,
                return_steps=return_steps,
                on_step=on_step,
            )
            for image, hole, window, fill in zip(full, holes, windows, decoded, strict=True):
                checkpoint(f"pasting into the image ({options.blend} blend)")
                merged = paste_window(image, hole, fill, window, feather, options.blend)
                result.images.append(Image.fromarray(merged.permute(1, 2, 0).numpy()))
            result.windows += windows
            result.token_masks += [m.numpy() for m in token_masks]
            if return_steps:
                result.steps += self._frames(records, len(batch))
        return result

    def _frames(self, records: list[DecodeStep], batch: int) -> list[list[StepFrame]]:
        frames: list[list[StepFrame]] = [[] for _ in range(batch)]
        grid = self.tokenizer.cfg.token_grid
        for record in records:
            checkpoint(f"step pictures ({record.step + 1} of {len(records)})")
            pictures = self.images_from_tokens(record.sampled)
            for i in range(batch):
                frames[i].append(
                    StepFrame(
                        record.step,
                        record.unknown[i].reshape(grid, grid).numpy(),
                        Image.fromarray(pictures[i].permute(1, 2, 0).numpy()),
                    )
                )
        return frames

    def outpaint(
        self,
        images: ImageLike | Sequence[ImageLike],
        options: DecodingOptions | None = None,
        *,
        pad: Pad | None = None,
        canvas: Sequence[int] | None = None,
        at: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> InpaintResult:
        """Extend each image: it keeps its own size and pixels on a larger canvas, and the
        model generates the rest of the canvas.

        Where the image goes (`outpaint_layout`): a margin `pad` around it (pixels, or
        "25%" of the image's side; one value, or (horizontal, vertical), or (left, top,
        right, bottom)), or an output size `canvas` (width, height) with the image's top-left
        corner `at` (x, y) (default: centred); neither: a margin of half the image on every
        side (the image in the central half). Each result has the canvas's size, and the
        image's pixels are exact inside its placement. The model fills the canvas at its own
        resolution (as `inpaint` fills a hole: the whole canvas shrunk into the model's square
        when the new area surrounds the image), and the generated area is brought back to the
        canvas's resolution. A canvas over MAX_SIDE px a side or MAX_PIXELS pixels is refused
        (ValueError) before it is made. Other arguments as `inpaint` (step frames are at the
        model's resolution).
        """
        if "box" in kwargs:
            raise TypeError(
                "outpaint(box=...) is gone: the image now keeps its own size; give pad= "
                "(a margin) or canvas= and at= (the output size and where the image goes)"
            )
        canvases, masks = [], []
        for image in _as_list(images):
            pixels = image_tensor(image, None)
            placement = outpaint_layout(pixels.shape[2], pixels.shape[1], pad, canvas, at)
            extended, mask = outpaint_canvas(pixels, placement)
            canvases.append(extended)
            masks.append(mask)
        return self.inpaint(canvases, masks, options, **kwargs)

    def generate(
        self, n: int, options: DecodingOptions | None = None, **kwargs: Any
    ) -> InpaintResult:
        """Generate `n` images from nothing (every token unknown); other arguments as
        `inpaint`."""
        if n < 1:
            raise ValueError(f"n={n}: expected at least 1 image")
        size = self.image_size
        blank = torch.full((3, size, size), MASKED_PIXEL_VALUE, dtype=torch.uint8)
        full = torch.ones(size, size, dtype=torch.bool)
        return self.inpaint([blank] * n, [full] * n, options, **kwargs)


Pad = int | str | Sequence[int | str]  # a margin: pixels (16) or a percentage ("25%")
DEFAULT_PAD = "50%"  # the image in the central half of the canvas
# The largest outpaint canvas, for the Python API, the CLI and the web server alike (which also
# downscales larger uploads to it): 4096 px a side, 16 MP. A canvas is allocated whole
# (uint8 pixels and a bool mask, 4 bytes a pixel) and pasted in float32 copies: ~1 GB at
# 16 MP, within a laptop's memory; a 60000x60000 canvas would need ~120 GB (#29.12). The side
# limit keeps the model's window, a square of the canvas's longer side, within 4096 px too.
MAX_SIDE = 4096
MAX_PIXELS = 16_000_000


def check_canvas(width: int, height: int, source: str) -> None:
    """ValueError naming `source` (the option that made the canvas) when a `width` x
    `height` outpaint canvas is over MAX_SIDE px a side or MAX_PIXELS pixels."""
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise ValueError(
            f"{source}: the outpaint canvas would be {width}x{height}, over the limit of "
            f"{MAX_SIDE} px a side and {MAX_PIXELS:,} pixels; give a smaller canvas, margin "
            "or image"
        )


@dataclass(frozen=True)
class Placement:
    """An outpaint canvas of `width` x `height` with the image's top-left corner at
    (left, top)."""

    width: int
    height: int
    left: int
    top: int


def parse_pad(pad: Pad) -> tuple[int | str, int | str, int | str, int | str]:
    """A margin as (left, top, right, bottom), each pixels (int) or a percentage ("25%").

    One value: every side; two: (horizontal, vertical); four: (left, top, right, bottom)
    (PIL's ImageOps.expand border order). Text "16" or "16 8" or "10%,5%" is split on commas
    and spaces. ValueError names what is wrong.
    """
    if isinstance(pad, str):
        parts: list = pad.replace(",", " ").split()
    elif isinstance(pad, (int, np.integer)) and not isinstance(pad, bool):
        parts = [int(pad)]
    elif isinstance(pad, Sequence):
        parts = list(pad)
    else:
        raise ValueError(
            f'pad={pad!r}: expected pixels (an int) or a percentage of the image ("25%")'
        )
    if len(parts) not in (1, 2, 4):
        raise ValueError(
            f"pad={pad!r}: expected 1 value (every side), 2 (horizontal, vertical) or 4 "
            "(left, top, right, bottom)"
        )
    values = [_margin(part, pad) for part in parts]
    if len(values) == 1:
        values *= 4
    elif len(values) == 2:
        values *= 2
    return values[0], values[1], values[2], values[3]


def _margin(part: Any, pad: Any) -> int | str:
    """One margin value: pixels (int >= 0) or "P%" (P >= 0)."""
    if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
        value: int | str = int(part)
    elif isinstance(part, str) and part.strip().endswith("%"):
        value = part.strip()
        try:
            percent = float(value[:-1])
        except ValueError:
            percent = -1.0
        if not (math.isfinite(percent) and percent >= 0):
            raise ValueError(f"pad={pad!r}: {part!r} is not a percentage like 25%")
        return value
    elif isinstance(part, str) and part.strip().lstrip("-").isdigit():
        value = int(part.strip())
    else:
        raise ValueError(
            f"pad={pad!r}: {part!r} is neither pixels (a whole number) nor a percentage of the "
            'image ("25%"; a fraction such as 0.25 is written 25%)'
        )
    if value < 0:
        raise ValueError(f"pad={pad!r}: a margin cannot be negative ({part!r})")
    return value


def _pixels(margin: int | str, side: int) -> int:
    if isinstance(margin, str):  # a percentage of the image's side along that axis
        return round(float(margin[:-1]) / 100 * side)
    return margin


def outpaint_layout(
    width: int,
    height: int,
    pad: Pad | None = None,
    canvas: Sequence[int] | None = None,
    at: Sequence[int] | None = None,
) -> Placement:
    """Where a `width` x `height` image goes on its outpaint canvas.

    `pad`: a margin around the image (`parse_pad`; percentages of the image's width for left
    and right, of its height for top and bottom, so a uniform percentage keeps the aspect
    ratio). Or `canvas` (width, height), the output size, with `at` (x, y) the image's
    top-left corner on it (default: centred). Neither: DEFAULT_PAD. The canvas must hold the
    image, be larger than it (something to generate) and within `check_canvas`'s limit.
    ValueError names what is wrong.
    """
    if pad is not None and (canvas is not None or at is not None):
        raise ValueError("give an outpaint margin (pad) or a canvas size and position, not both")
    if at is not None and canvas is None:
        raise ValueError("at (x, y): give the canvas size (width, height) too")
    if canvas is None:
        left, top, right, bottom = parse_pad(DEFAULT_PAD if pad is None else pad)
        left, right = _pixels(left, width), _pixels(right, width)
        top, bottom = _pixels(top, height), _pixels(bottom, height)
        placement = Placement(left + width + right, top + height + bottom, left, top)
        source = f"pad={DEFAULT_PAD if pad is None else pad!r}"
    else:
        size = _ints(canvas, "canvas", "width, height")
        if min(size) < 1:
            raise ValueError(f"canvas {size}: expected a positive width and height")
        if at is None:
            where = ((size[0] - width) // 2, (size[1] - height) // 2)
        else:
            where = _ints(at, "at", "x, y")
        placement = Placement(size[0], size[1], where[0], where[1])
        if not (
            0 <= placement.left <= placement.width - width
            and 0 <= placement.top <= placement.height - height
        ):
            raise ValueError(
                f"a {width}x{height} image at {where} does not fit on a "
                f"{size[0]}x{size[1]} canvas: it must lie inside"
            )
        source = f"canvas={size}"
    if (placement.width, placement.height) == (width, height):
        raise ValueError(
            f"outpaint canvas {placement.width}x{placement.height} is the image's own size: "
            "nothing to generate (give a margin or a larger canvas)"
        )
    check_canvas(placement.width, placement.height, source)
    return placement


def _ints(values: Sequence[int], name: str, meaning: str) -> tuple[int, int]:
    items = list(values)
    if len(items) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items
    ):
        raise ValueError(f"{name}={tuple(items)}: expected two whole numbers ({meaning})")
    return int(items[0]), int(items[1])


def outpaint_canvas(image: torch.Tensor, placement: Placement) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 `image` (3, h, w) at its own size on a blank canvas (MASKED_PIXEL_VALUE) of
    `placement` -> (canvas (3, H, W), bool mask (H, W), True = to generate: everything
    outside the image)."""
    _, h, w = image.shape
    rows = slice(placement.top, placement.top + h)
    cols = slice(placement.left, placement.left + w)
    canvas = torch.full(
        (3, placement.height, placement.width), MASKED_PIXEL_VALUE, dtype=torch.uint8
    )
    canvas[:, rows, cols] = image
    mask = torch.ones(placement.height, placement.width, dtype=torch.bool)
    mask[rows, cols] = False
    return canvas, mask


def check_quantize(quantize: str, device: str | torch.device | None) -> torch.device:
    """The device for a model loaded with `quantize`: ValueError for an unknown mode (naming
    the valid ones) or a device int8 kernels do not run on; no device given = the CPU."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"quantize={quantize!r}: expected one of {', '.join(QUANTIZE_MODES)} "
            "(or none for float32)"
        )
    resolved = torch.device(device if device is not None else "cpu")
    if resolved.type != "cpu":
        raise ValueError(
            f"quantize={quantize!r} runs on the CPU only (torch's dynamic int8 kernels); "
            f"got device {resolved}: use device cpu, or no quantize on {resolved.type}"
        )
    return resolved


def quantize_int8(transformer: torch.nn.Module) -> torch.nn.Module:
    """A copy of `transformer` whose nn.Linear layers are dynamically quantised to int8
    (weights int8 per tensor, activations quantised per batch at run time; CPU only).

    The embeddings, layer norms, attention and the weight-tied output product stay float32.
    torch.ao.quantization.quantize_dynamic and the quantised tensors it makes are deprecated
    in favour of torchao (torch warns so when it runs; still working in torch 2.13): the
    warnings are not shown.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")
        return quantize_dynamic(
            transformer, {torch.nn.Linear}, dtype=torch.qint8, inplace=False
        ).eval()


def check_run_options(
    *, batch_size: int = 32, feather: int = 0, image_size: int | None = None
) -> None:
    """Validate the options of a run besides decoding (ValueError naming the option);
    `feather` is at most `image_size` (the side of the images it blends) when given."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    if isinstance(feather, bool) or not isinstance(feather, int) or feather < 0:
        raise ValueError(f"feather={feather}: expected 0 (no feathering) or more pixels")
    if image_size is not None and feather > image_size:
        raise ValueError(
            f"feather={feather}: larger than the image ({image_size} pixels a side); "
            f"expected 0 to {image_size}"
        )


def paste_known(
    original: torch.Tensor,
    decoded: torch.Tensor,
    pixel_masks: torch.Tensor,
    feather: int = 0,
    blend: str = "none",
) -> torch.Tensor:
    """Known pixels from `original`, repainted ones from `decoded` (uint8 (B, 3, H, W)).

    `blend="seamless"` first adds to `decoded` the harmonic continuation into the hole of its
    error on the known pixels (original - decoded): the hole's colours then meet the image's
    along the edge, and the correction fades towards the hole's middle (options.BLENDS).
    With `feather` > 0 the decoded content fades in over `feather` pixels inside the mask:
    weight d / feather at d pixels inside the edge (1 on the edge), full from d = feather on.
    """
    alpha = pixel_masks[:, None].float()  # (B, 1, H, W), 1 = take decoded
    check_run_options(feather=feather, image_size=max(alpha.shape[-2:]))
    if blend not in BLENDS:
        raise ValueError(f"blend={blend!r}: expected one of {', '.join(BLENDS)}")
    fill = decoded.float()  # (B, 3, H, W)
    if blend == "seamless":
        fill = fill + harmonic_fill(original.float() - fill, pixel_masks.bool())
    if feather > 0:
        # a mask pixel d pixels inside the edge (d = 1 on the edge, chessboard distance)
        # survives d - 1 erosions: the mean of the mask and its first feather - 1 erosions
        # is min(d, feather) / feather, > 0 everywhere inside the mask, 0 outside
        # (summed as they come: memory does not grow with `feather`)
        eroded, total = alpha, alpha.clone()
        for _ in range(feather - 1):
            eroded = -F.max_pool2d(-eroded, 3, stride=1, padding=1)
            total += eroded
        alpha = total / feather
    mixed = alpha * fill + (1 - alpha) * original.float()
    return mixed.round().clamp(0, 255).to(torch.uint8)


def _as_list(items: Any, item_ndim: int = 3) -> list:
    """A sequence or a batched tensor -> list of items; a single item -> [item].

    A tensor with one dimension more than an item (images (B, 3, H, W), masks (B, H, W))
    is a batch.
    """
    if isinstance(items, (list, tuple)):
        return list(items)
    if isinstance(items, torch.Tensor) and items.ndim == item_ndim + 1:
        return list(items)
    return [items]
