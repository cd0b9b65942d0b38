"""MaskGIT pipeline: tokenizer + transformer -> inpaint, outpaint, generate.

Inputs may be PIL images, NumPy arrays or torch tensors, read by `maskgit.reader` (its
docstring has the rules for dtypes, transparency and resizing); masks likewise, with
`mask_convention` for mask images, or bool arrays/tensors (H, W) in the package convention
(True = repaint). Results come out at the model's resolution as PIL images. Decoding is set
by a `maskgit.options.DecodingOptions` (default DEFAULT_DECODING, the shipped model's best)
and/or its fields as keywords (`model.inpaint(image, mask, steps=12)`).
"""

from __future__ import annotations

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
from maskgit.reader import ImageLike, image_tensor, mask_tensor
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer

DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "emoji-demo"
MASKED_PIXEL_VALUE = 255  # canvas colour of unknown pixels (outpaint, generate, previews)


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
        self.tokenizer = tokenizer.to(self.device).eval()
        self.transformer = transformer.to(self.device).eval()

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, device: str | torch.device | None = None
    ) -> MaskGIT:
        """Load a model folder holding tokenizer.safetensors and transformer.safetensors.

        With no path: the embedded default model shipped in the package (emoji, 64x64).
        """
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
            return cls(tokenizer, transformer, device)
        except CheckpointError as exc:  # the two files do not belong together: name the folder
            raise CheckpointError(f"{folder}: {exc}") from exc

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
        **changes: Any,
    ) -> InpaintResult:
        """Repaint the masked pixels of each image; pixels outside the mask stay exact.

        `options` (default DEFAULT_DECODING) with keyword `changes` (its field names) say
        how to decode; image i uses the seed options.seed + first_index + i. `feather` > 0 blends the generated content into the hole over that
        many pixels inside the mask edge (outside the mask nothing changes). `on_step` sees
        every decoding step of every batch (maskgit.decoding.DecodeStep).
        """
        options = resolve(options, **changes)
        check_run_options(batch_size=batch_size, feather=feather, image_size=self.image_size)
        images, masks = _as_list(images), _as_list(masks, item_ndim=2)
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks")
        size = self.image_size
        result = InpaintResult([])
        for start in range(0, len(images), batch_size):
            batch = torch.stack([image_tensor(x, size) for x in images[start : start + batch_size]])
            pmask = torch.stack(
                [mask_tensor(m, size, mask_convention) for m in masks[start : start + batch_size]]
            )
            decoded, token_masks, records = self.decode_batch(
                batch,
                pmask,
                options,
                first_index=first_index + start,
                return_steps=return_steps,
                on_step=on_step,
            )
            merged = paste_known(batch, decoded, pmask, feather)
            result.images += [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in merged]
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
