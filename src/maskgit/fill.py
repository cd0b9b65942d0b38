"""Classical (non-learned) hole filling of uint8 images (N, 3, H, W) under bool masks (N, H, W),
True = repaint.

Two uses: the baselines that `maskgit evaluate` compares MaskGIT with, and the pre-fill of the
hole before the tokenizer encodes an image to inpaint. The encoder's receptive field reaches
several tokens beyond a pixel's own patch, so what the hole holds changes the tokens *around*
it, which the transformer takes as known context (see `pipeline.MaskGIT.decode_batch`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from maskgit.phases import checkpoint

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
            "the biharmonic baseline needs scikit-image: pip install "
            "'maskgit-toolkit[baselines]' (from a clone: pip install -e '.[baselines]')"
        ) from exc
    return (inpaint_biharmonic(image, mask, channel_axis=-1) * 255).round()


def harmonic_fill(
    values: torch.Tensor, hole: torch.Tensor, tolerance: float = 0.01
) -> torch.Tensor:
    """`values` (float (B, C, H, W)) continued into `hole` (bool (B, H, W), True = unknown) as
    the harmonic function (discrete Laplace equation, 4 neighbours) that takes the known
    values on the hole's edge; known entries come back unchanged.

    The image's own border is a mirror (no flow across it), so a hole that reaches it is
    still determined by its known edge. Solved coarse to fine: each level starts from the
    next coarser solution and runs red-black successive over-relaxation sweeps until no value
    of the image moves by more than `tolerance` in a sweep (each image stops on its own, so
    batching never changes a result). A hole with no known pixel at all gets 0.
    """
    known = (~hole)[:, None].to(values.dtype)  # (B, 1, H, W), 1 = known
    if not bool((1 - known).any()):
        return values
    values = values * known
    height, width = values.shape[-2:]
    start = torch.zeros_like(values)
    if min(height, width) >= 4:  # the next coarser level: mean of the known values per 2x2
        weight = F.avg_pool2d(known, 2, ceil_mode=True)  # (B, 1, H/2, W/2)
        coarse = F.avg_pool2d(values, 2, ceil_mode=True) / weight.clamp_min(1e-6)
        coarse = harmonic_fill(coarse, weight[:, 0] == 0, tolerance)
        start = F.interpolate(coarse, scale_factor=2, mode="nearest")[..., :height, :width]
    kernel = values.new_tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]]).view(1, 1, 3, 3) / 4
    kernel = kernel.repeat(values.shape[1], 1, 1, 1)  # (C, 1, 3, 3): one per channel
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    red = ((rows + cols) % 2 == 0).to(values)  # (H, W) checkerboard: red cells, then black
    omega = 2 / (1 + math.sin(math.pi / max(height, width)))  # over-relaxation for this size
    filled = values + (1 - known) * start
    moving = (1 - known).amax(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1), 1 = not converged
    for sweep in range(8 * max(height, width) ** 2):  # a cap, far beyond convergence
        moved = torch.zeros_like(moving)
        for colour in (red, 1 - red):
            padded = F.pad(filled, (1, 1, 1, 1), mode="replicate")  # the mirror border
            average = F.conv2d(padded, kernel, groups=values.shape[1])  # (B, C, H, W)
            step = omega * moving * (1 - known) * colour * (average - filled)
            moved = torch.maximum(moved, step.abs().amax(dim=(1, 2, 3), keepdim=True))
            filled = filled + step
        if sweep % 4 == 3:  # one device sync per 4 sweeps
            checkpoint()  # the blend of a large hole runs long: a watcher may stop it
            moving = moving * (moved > tolerance).to(moving.dtype)
            if not bool(moving.any()):
                break
    return filled
