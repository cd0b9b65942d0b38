"""Classical (non-learned) hole filling of uint8 images (N, 3, H, W) under bool masks (N, H, W),
True = repaint.

Two uses: the baselines that `maskgit evaluate` compares MaskGIT with, and the pre-fill of the
hole before the tokenizer encodes an image to inpaint. The encoder's receptive field reaches
several tokens beyond a pixel's own patch, so what the hole holds changes the tokens *around*
it, which the transformer takes as known context (see `pipeline.MaskGIT.decode_batch`).
"""

from __future__ import annotations

import numpy as np
import torch

CLASSICAL_FILLS = ("white", "telea", "navier-stokes", "biharmonic")


def classical_fill(name: str, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Fill the masked pixels by method `name` (one of CLASSICAL_FILLS); others stay exact.

    The result is on the images' device (the classical methods themselves run on the CPU).
    """
    if name not in CLASSICAL_FILLS:
        raise ValueError(f"unknown fill {name!r}; valid: {', '.join(CLASSICAL_FILLS)}")
    if name == "white":
        return torch.where(masks[:, None], torch.full_like(images, 255), images)
    out = []
    pairs = zip(images.cpu().permute(0, 2, 3, 1).numpy(), masks.cpu().numpy(), strict=True)
    for image, mask in pairs:
        if name == "biharmonic":
            filled = _biharmonic(image, mask)
        else:
            import cv2

            flag = cv2.INPAINT_TELEA if name == "telea" else cv2.INPAINT_NS
            filled = cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8) * 255, 3, flag)
        out.append(np.clip(filled, 0, 255).astype(np.uint8))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(images.device)


def _biharmonic(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    try:
        from skimage.restoration import inpaint_biharmonic
    except ImportError as exc:
        raise ImportError(
            "the biharmonic baseline needs scikit-image: pip install 'maskgit[baselines]'"
        ) from exc
    return (inpaint_biharmonic(image, mask, channel_axis=-1) * 255).round()
