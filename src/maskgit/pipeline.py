"""MaskGIT pipeline: tokenizer + transformer -> inpaint, outpaint, generate.

Inputs may be PIL images, numpy arrays (H, W, 3) uint8 or torch tensors (3, H, W), uint8 or
float in [0, 1]; masks may be PIL images / arrays (read with `mask_convention`, thresholded at
0.5) or bool tensors (H, W) in the package convention (True = repaint). Images of another
size than the model's are resized to it (bicubic, aspect ratio not kept) and results come
out at the model's resolution; masks are resized so that a model pixel is repainted when any
mask pixel under it is (a thin stroke never vanishes). Outputs are PIL images.
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

from maskgit.checkpoint import CheckpointError, load_model
from maskgit.data import to_model_range, to_rgb, to_uint8
from maskgit.decoding import DecodeStep, check_decode_args, decode
from maskgit.fill import classical_fill
from maskgit.masking import pixel_mask_from_array, pixel_to_token_mask
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer

DEFAULT_MODEL_DIR = Path(__file__).parent / "weights" / "emoji-demo"
MASKED_PIXEL_VALUE = 255  # canvas colour of unknown pixels (outpaint, generate, previews)
# What the encoder sees in the hole: a classical fill (default) or plain white. The encoder's
# receptive field spans several tokens, so the hole's content changes the *known* tokens
# around it, which the transformer only ever saw computed from whole real images.
PREFILLS = ("telea", "white")

ImageLike = Image.Image | np.ndarray | torch.Tensor


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

    # ------------------------------------------------------------------ conversions

    def _image_tensor(self, image: ImageLike) -> torch.Tensor:
        """Any accepted image -> uint8 (3, S, S) at the model's size S."""
        if isinstance(image, Image.Image):
            array = np.asarray(to_rgb(image))
        elif isinstance(image, np.ndarray):
            array = image
            if array.dtype != np.uint8:  # float in [0, 1] (before any RGBA conversion)
                array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
            if array.ndim == 3 and array.shape[2] == 4:
                array = np.asarray(to_rgb(Image.fromarray(array, "RGBA")))
        elif isinstance(image, torch.Tensor):
            tensor = image.detach().cpu()
            if tensor.is_floating_point():
                tensor = (tensor.clamp(0, 1) * 255).round().to(torch.uint8)
            array = tensor.permute(1, 2, 0).numpy() if tensor.ndim == 3 else tensor.numpy()
        else:
            raise TypeError(f"unsupported image type {type(image).__name__}")
        if array.ndim == 2:
            array = array[..., None]
        if array.shape[2] == 1:  # grayscale
            array = np.repeat(array, 3, axis=2)
        array = array[..., :3]
        size = self.image_size
        if array.shape[:2] != (size, size):
            array = np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC))
        return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1)  # a copy

    def _mask_tensor(self, mask: ImageLike, convention: str) -> torch.Tensor:
        """Any accepted mask -> bool (S, S), True = repaint."""
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
            result = mask.cpu()
        else:
            if isinstance(mask, Image.Image):
                mask = np.asarray(mask.convert("L"))
            elif isinstance(mask, torch.Tensor):
                mask = mask.detach().cpu().float().numpy()
            result = pixel_mask_from_array(np.asarray(mask), convention)
        size = self.image_size
        if tuple(result.shape) != (size, size):
            # "area" averages the source pixels under each model pixel: > 0 keeps every
            # pixel to repaint (nearest would drop thin strokes when shrinking a mask)
            result = (
                F.interpolate(result[None, None].float(), size=(size, size), mode="area")[0, 0] > 0
            )
        return result

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
    def fill_tokens(
        self,
        images: torch.Tensor,
        pixel_masks: torch.Tensor,
        *,
        steps: int = 12,
        schedule: str = "cosine",
        sweet_spot: int | None = None,
        temperature: float = 1.0,
        choice_temperature: float = 4.5,
        top_k: int | None = None,
        seed: int = 0,
        first_index: int = 0,
        return_steps: bool = False,
        prefill: str = "telea",
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[DecodeStep]]:
        """Core of inpaint: uint8 images (B,3,S,S) + bool masks (B,S,S) -> decoded uint8 images.

        The hole is pre-filled by `prefill` (one of PREFILLS) before encoding; `context`
        (uint8 (B,3,S,S)), when given, is encoded instead (for diagnostics, e.g. the ground
        truth: the best context there can be). Image i uses seed + first_index + i, so
        results do not depend on the batching.
        Returns (decoded images, token masks (B, h, w), step records).
        """
        check_prefill(prefill)
        filled = classical_fill(prefill, images, pixel_masks) if context is None else context
        tokens = self.tokenizer.encode(to_model_range(filled).to(self.device))  # (B, h, w)
        unknown = pixel_to_token_mask(pixel_masks, self.downsample).to(self.device)
        gens = [torch.Generator().manual_seed(seed + first_index + i) for i in range(len(images))]
        final, records = decode(
            tokens.flatten(1),
            unknown.flatten(1),
            self._logits,
            self.transformer.cfg.mask_token_id,
            steps=steps,
            sweet_spot=sweet_spot,
            schedule=schedule,
            temperature=temperature,
            choice_temperature=choice_temperature,
            top_k=top_k,
            generator=gens,
            record_steps=return_steps,
        )
        return self._decode_images(final), unknown.cpu(), records

    def inpaint(
        self,
        images: ImageLike | Sequence[ImageLike],
        masks: ImageLike | Sequence[ImageLike],
        *,
        steps: int = 12,
        schedule: str = "cosine",
        sweet_spot: int | None = None,
        temperature: float = 1.0,
        choice_temperature: float = 4.5,
        top_k: int | None = None,
        seed: int = 0,
        return_steps: bool = False,
        mask_convention: str = "white-repaint",
        feather: int = 0,
        batch_size: int = 32,
        prefill: str = "telea",
    ) -> InpaintResult:
        """Repaint the masked pixels of each image; pixels outside the mask stay exact.

        `feather` > 0 blends the generated content into the hole over that many pixels
        inside the mask edge (outside the mask nothing changes). `prefill` is what the
        tokenizer sees in the hole (PREFILLS; "telea" scored best, docs/model-card.md).
        """
        check_options(
            batch_size=batch_size,
            feather=feather,
            steps=steps,
            sweet_spot=sweet_spot,
            schedule=schedule,
            temperature=temperature,
            choice_temperature=choice_temperature,
            top_k=top_k,
            seed=seed,
            prefill=prefill,
        )
        images, masks = _as_list(images), _as_list(masks, item_ndim=2)
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} images but {len(masks)} masks")
        result = InpaintResult([])
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self._image_tensor(x) for x in images[start : start + batch_size]])
            pmask = torch.stack(
                [self._mask_tensor(m, mask_convention) for m in masks[start : start + batch_size]]
            )
            decoded, token_masks, records = self.fill_tokens(
                batch,
                pmask,
                steps=steps,
                schedule=schedule,
                sweet_spot=sweet_spot,
                temperature=temperature,
                choice_temperature=choice_temperature,
                top_k=top_k,
                seed=seed,
                first_index=start,
                return_steps=return_steps,
                prefill=prefill,
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
        **kwargs: Any,
    ) -> InpaintResult:
        """Place each image inside `box` (x0, y0, x1, y1) of the model canvas; generate the rest.

        Default box: the central half of the canvas. Limits: the canvas is the model's
        resolution (no sliding window), so the given content is shrunk to fit the box.
        """
        size = self.image_size
        x0, y0, x1, y1 = box or (size // 4, size // 4, size - size // 4, size - size // 4)
        if not (0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size):
            raise ValueError(f"outpaint box {(x0, y0, x1, y1)} must lie inside 0..{size}")
        canvases, masks = [], []
        for image in _as_list(images):
            content = self._image_tensor(image)
            small = F.interpolate(
                content[None].float(),
                size=(y1 - y0, x1 - x0),
                mode="bicubic",
                align_corners=False,
                antialias=True,
            )[0]
            canvas = torch.full_like(content, MASKED_PIXEL_VALUE)
            canvas[:, y0:y1, x0:x1] = small.round().clamp(0, 255).to(torch.uint8)
            mask = torch.ones(size, size, dtype=torch.bool)
            mask[y0:y1, x0:x1] = False
            canvases.append(canvas)
            masks.append(mask)
        return self.inpaint(canvases, masks, **kwargs)

    def generate(self, n: int, **kwargs: Any) -> InpaintResult:
        """Generate `n` images from nothing (every token unknown)."""
        if n < 1:
            raise ValueError(f"n={n}: expected at least 1 image")
        size = self.image_size
        blank = torch.full((3, size, size), MASKED_PIXEL_VALUE, dtype=torch.uint8)
        full = torch.ones(size, size, dtype=torch.bool)
        return self.inpaint([blank] * n, [full] * n, **kwargs)


def check_options(
    *,
    batch_size: int = 32,
    feather: int = 0,
    steps: int = 12,
    sweet_spot: int | None = None,
    schedule: str = "cosine",
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    top_k: int | None = None,
    seed: int = 0,
    prefill: str = "telea",
) -> None:
    """Validate decoding and run options (ValueError naming the option); defaults as MaskGIT's."""
    check_decode_args(steps, sweet_spot, schedule)
    check_prefill(prefill)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected at least 1")
    if feather < 0:
        raise ValueError(f"feather={feather}: expected 0 (no feathering) or more pixels")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: expected >= 0 (0 = argmax)")
    if choice_temperature < 0:
        raise ValueError(f"choice_temperature={choice_temperature}: expected >= 0")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k}: expected at least 1")
    if seed < 0:
        raise ValueError(f"seed={seed}: expected >= 0")


def check_prefill(prefill: str) -> None:
    """ValueError unless `prefill` is one of PREFILLS."""
    if prefill not in PREFILLS:
        raise ValueError(f"prefill={prefill!r}: expected one of {', '.join(PREFILLS)}")


def paste_known(
    original: torch.Tensor, decoded: torch.Tensor, pixel_masks: torch.Tensor, feather: int = 0
) -> torch.Tensor:
    """Known pixels from `original`, repainted ones from `decoded` (uint8 (B, 3, H, W)).

    With `feather` > 0 the decoded content fades in over `feather` pixels inside the mask:
    weight d / feather at d pixels inside the edge (1 on the edge), full from d = feather on.
    """
    alpha = pixel_masks[:, None].float()  # (B, 1, H, W), 1 = take decoded
    if feather > 0:
        # a mask pixel d pixels inside the edge (d = 1 on the edge, chessboard distance)
        # survives d - 1 erosions: the mean of the mask and its first feather - 1 erosions
        # is min(d, feather) / feather, > 0 everywhere inside the mask, 0 outside
        eroded, ramps = alpha, [alpha]
        for _ in range(feather - 1):
            eroded = -F.max_pool2d(-eroded, 3, stride=1, padding=1)
            ramps.append(eroded)
        alpha = torch.stack(ramps).mean(0)
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
