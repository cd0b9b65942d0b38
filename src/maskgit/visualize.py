"""Pictures: image grids, per-step frames, animated GIFs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


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
