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
from maskgit.fill import classical_fill
from maskgit.masking import pixel_to_token_mask
from maskgit.options import DecodingOptions, resolve
from maskgit.reader import ImageLike, fit_mask, image_tensor, mask_tensor, resize_image
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


def crop_window(mask: torch.Tensor, model_size: int, context: float = CROP_CONTEXT) -> Window:
    """The square window the model fills for a bool mask (H, W), True = repaint.

    Side: `context` times the longer side of the mask's bounding box, at least `model_size`.
    The window is centred on the box and shifted to lie inside the image where it fits (no
    padding); when the side reaches the image's longer side (a large hole, a small image, an
    empty mask) the window is the whole image, centred in a square (white padding, PAD_VALUE).
    """
    if context < 1:
        raise ValueError(f"context={context}: expected at least 1 (the window holds the hole)")
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
    if side >= longest:
        return Window((height - longest) // 2, (width - longest) // 2, longest, True)

    def start(lo: int, hi: int, extent: int) -> int:
        if side > extent:  # the window overhangs this axis: centred on the image, padded
            return (extent - side) // 2
        return min(max((lo + hi - side) // 2, 0), extent - side)

    return Window(start(y0, y1, height), start(x0, x1, width), side, False)


def _overlap(window: Window, height: int, width: int) -> tuple[slice, slice, slice, slice]:
    """(image rows, image cols, window rows, window cols) of the part inside the image."""
    iy0, iy1 = max(window.top, 0), min(window.top + window.side, height)
    ix0, ix1 = max(window.left, 0), min(window.left + window.side, width)
    return (
        slice(iy0, iy1),
        slice(ix0, ix1),
        slice(iy0 - window.top, iy1 - window.top),
        slice(ix0 - window.left, ix1 - window.left),
    )


def to_model_view(
    image: torch.Tensor, mask: torch.Tensor, window: Window, model_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The window of uint8 `image` (3, H, W) and bool `mask` (H, W) at the model's size:
    (uint8 (3, S, S), bool (S, S)). Padding is white and known; the image is resized bicubic
    (aspect kept: the window is square), the mask by the any-part rule (`fit_mask`)."""
    rows, cols, wrows, wcols = _overlap(window, *image.shape[1:])
    if window.top == 0 and window.left == 0 and tuple(image.shape[1:]) == (window.side,) * 2:
        crop, crop_mask = image, mask  # the whole square image: no copy
    else:
        crop = torch.full((3, window.side, window.side), PAD_VALUE, dtype=torch.uint8)
        crop_mask = torch.zeros(window.side, window.side, dtype=torch.bool)
        crop[:, wrows, wcols] = image[:, rows, cols]
        crop_mask[wrows, wcols] = mask[rows, cols]
    if window.side != model_size:
        crop = _resize(crop, model_size)
        crop_mask = fit_mask(crop_mask, model_size)
    return crop, crop_mask


def _resize(image: torch.Tensor, side: int) -> torch.Tensor:
    """uint8 (3, s, s) -> (3, side, side), bicubic (the reader's resize)."""
    array = resize_image(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), side)
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1)


def paste_window(
    image: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, window: Window, feather: int = 0
) -> torch.Tensor:
    """`image` (uint8 (3, H, W)) with the model's `fill` (uint8 (3, S, S) of `window`)
    brought back to the window's resolution and pasted into the masked pixels only."""
    if window.side != fill.shape[-1]:
        fill = _resize(fill, window.side)
    rows, cols, wrows, wcols = _overlap(window, *image.shape[1:])
    out = image.clone()
    out[:, rows, cols] = paste_known(
        image[None, :, rows, cols], fill[None, :, wrows, wcols], mask[None, rows, cols], feather
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
    def _decode_images(self, tokens: torch.Tensor) -> torch.Tensor:
        grid = self.tokenizer.cfg.token_grid
        images = self.tokenizer.decode_tokens(tokens.reshape(-1, grid, grid).to(self.device))
        return to_uint8(images.cpu())

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Tokenizer round trip of uint8 images (B, 3, S, S): encode, quantise, decode."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = to_model_range(images[start : start + batch_size]).to(self.device)
            out.append(self._decode_images(self.tokenizer.encode(batch).flatten(1)))
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
        if context is None:
            context = classical_fill(options.prefill, images, pixel_masks)
        tokens = self.tokenizer.encode(to_model_range(context).to(self.device))  # (B, h, w)
        unknown = pixel_to_token_mask(pixel_masks, self.downsample).to(self.device)
        first = options.seed + first_index
        gens = [torch.Generator().manual_seed(first + i) for i in range(len(images))]
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
        return self._decode_images(final), unknown.cpu(), records

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
        **changes: Any,
    ) -> InpaintResult:
        """Repaint the masked pixels of each image; each comes back at its own size, and
        pixels outside the mask stay exact.

        Images of any size and aspect ratio: the mask is read at the image's size (it must
        match), the model fills a square window around the hole (`crop_window`: the hole's
        bounding box, `crop_context` times its side, never less than the model's resolution;
        the whole image, padded to a square, when that is as large as the image), brought to
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
                window = crop_window(hole, size, crop_context)
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
                merged = paste_window(image, hole, fill, window, feather)
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
            pictures = self._decode_images(record.sampled)
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
        box: tuple[int, int, int, int] | None = None,
        options: DecodingOptions | None = None,
        **kwargs: Any,
    ) -> InpaintResult:
        """Place each image inside `box` (x0, y0, x1, y1) of the model canvas; generate the rest.

        Default box: the central half of the canvas (`outpaint_box`). Limits: the canvas is
        the model's resolution (no sliding window), so the given content is shrunk to fit
        the box. Other arguments as `inpaint`.
        """
        size = self.image_size
        box = outpaint_box(size, box)
        pairs = [outpaint_canvas(image_tensor(image, size), box) for image in _as_list(images)]
        canvases, masks = [c for c, _ in pairs], [m for _, m in pairs]
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


def outpaint_box(
    size: int, box: Sequence[int] | None = None, pad: int | None = None
) -> tuple[int, int, int, int]:
    """Where the given content goes on a size x size canvas: `box` (x0, y0, x1, y1), or a
    margin of `pad` pixels on every side, or (neither) the central half of the canvas."""
    if box is not None and pad is not None:
        raise ValueError("give an outpaint box or a pad, not both")
    if pad is not None:
        if not 0 < pad < size / 2:
            raise ValueError(f"pad={pad}: expected 1 to {(size - 1) // 2} pixels (canvas {size})")
        box = (pad, pad, size - pad, size - pad)
    if box is None:
        box = (size // 4, size // 4, size - size // 4, size - size // 4)
    if len(box) != 4:
        raise ValueError(f"outpaint box {tuple(box)}: expected 4 numbers x0 y0 x1 y1")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
        raise ValueError(f"outpaint box {(x0, y0, x1, y1)} must lie inside 0..{size}")
    return x0, y0, x1, y1


def outpaint_canvas(
    content: torch.Tensor, box: tuple[int, int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 content (3, S, S) shrunk into `box` of a blank canvas -> (canvas, bool mask
    (S, S), True = to generate: everything outside the box)."""
    x0, y0, x1, y1 = box
    small = F.interpolate(
        content[None].float(),
        size=(y1 - y0, x1 - x0),
        mode="bicubic",
        align_corners=False,
        antialias=True,
    )[0]
    canvas = torch.full_like(content, MASKED_PIXEL_VALUE)
    canvas[:, y0:y1, x0:x1] = small.round().clamp(0, 255).to(torch.uint8)
    mask = torch.ones(content.shape[1:], dtype=torch.bool)
    mask[y0:y1, x0:x1] = False
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
    original: torch.Tensor, decoded: torch.Tensor, pixel_masks: torch.Tensor, feather: int = 0
) -> torch.Tensor:
    """Known pixels from `original`, repainted ones from `decoded` (uint8 (B, 3, H, W)).

    With `feather` > 0 the decoded content fades in over `feather` pixels inside the mask:
    weight d / feather at d pixels inside the edge (1 on the edge), full from d = feather on.
    """
    alpha = pixel_masks[:, None].float()  # (B, 1, H, W), 1 = take decoded
    check_run_options(feather=feather, image_size=max(alpha.shape[-2:]))
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
    mixed = alpha * decoded.float() + (1 - alpha) * original.float()
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
