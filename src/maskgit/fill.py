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
import torch.nn.functional as F

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


# A hole of at most this many pixels is solved exactly (`_solve_exact`: a sparse LU
# factorisation, once per image, every channel at once): any hole at the model's resolution
# (64x64 = 4,096 pixels, ~10 ms) and a 256x256 hole (~0.3 s, ~50 MB). A larger hole is solved
# on a grid halved until it fits and refined on the way back up (`_solve_coarse_to_fine`),
# so its cost grows with its pixels, not faster.
EXACT_UNKNOWNS = 256 * 256
# Gauss-Seidel sweeps (red, then black) at each finer level of the coarse-to-fine solve:
# they carry the fine detail of the hole's edge in, over the few pixels where it matters
# (the correction of a coarse solution is a high frequency of that level, damped by a sweep).
REFINE_SWEEPS = 8


def harmonic_fill(
    values: torch.Tensor, hole: torch.Tensor, exact_unknowns: int = EXACT_UNKNOWNS
) -> torch.Tensor:
    """`values` (float (B, C, H, W)) continued into `hole` (bool (B, H, W), True = unknown) as
    the harmonic function (discrete Laplace equation, 4 neighbours) that takes the known
    values on the hole's edge; known entries come back unchanged.

    The image's own border is a mirror (no flow across it), so a hole that reaches it is
    still determined by its known edge. Each image is solved on its own (batching never
    changes a result), within the hole's bounding box plus one pixel (nothing farther away
    enters the solution): exactly by a sparse direct solve when the hole has at most
    `exact_unknowns` pixels, else coarse to fine (exact on a halved grid, bilinearly enlarged,
    REFINE_SWEEPS sweeps per level; within a colour level or two of the exact solution).
    An image with no known pixel at all gets 0.
    """
    out = values.clone()
    for index in range(len(values)):
        out[index] = _fill_one(values[index], hole[index].to(values.device), exact_unknowns)
    return out


def _fill_one(values: torch.Tensor, hole: torch.Tensor, exact_unknowns: int) -> torch.Tensor:
    """`harmonic_fill` of one image: values (C, H, W), hole (H, W)."""
    if not bool(hole.any()):
        return values
    if bool(hole.all()):
        return torch.zeros_like(values)
    rows, cols = torch.nonzero(hole.any(1)), torch.nonzero(hole.any(0))
    box = (
        slice(max(int(rows[0]) - 1, 0), int(rows[-1]) + 2),
        slice(max(int(cols[0]) - 1, 0), int(cols[-1]) + 2),
    )
    inside, inside_hole = values[:, box[0], box[1]], hole[box]
    if int(inside_hole.sum()) <= exact_unknowns:
        filled = _solve_exact(inside, inside_hole)
    else:
        filled = _solve_coarse_to_fine(inside, inside_hole, exact_unknowns)
    out = values.clone()
    out[:, box[0], box[1]] = filled
    return out


def _solve_exact(values: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """The harmonic continuation by one sparse LU solve: at each hole pixel 4 u = the sum of
    its 4 neighbours, a neighbour outside the image being the pixel itself (the mirror).
    values (C, H, W), hole (H, W) with at least one known pixel -> (C, H, W)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import splu

    known = values.detach().cpu().double().numpy()  # (C, H, W)
    mask = hole.cpu().numpy()
    height, width = mask.shape
    ys, xs = np.nonzero(mask)  # the unknowns, in row-major order
    count = len(ys)
    index = np.full(mask.shape, -1)
    index[ys, xs] = np.arange(count)
    rows, cols = [np.arange(count)], [np.arange(count)]
    entries = [np.full(count, 4.0)]
    rhs = np.zeros((known.shape[0], count))  # (C, n)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = np.clip(ys + dy, 0, height - 1), np.clip(xs + dx, 0, width - 1)
        neighbour = index[ny, nx]
        unknown = neighbour >= 0
        rows.append(np.nonzero(unknown)[0])
        cols.append(neighbour[unknown])
        entries.append(np.full(int(unknown.sum()), -1.0))
        rhs[:, ~unknown] += known[:, ny[~unknown], nx[~unknown]]
    matrix = coo_matrix(
        (np.concatenate(entries), (np.concatenate(rows), np.concatenate(cols))),
        shape=(count, count),
    ).tocsc()  # duplicates (a mirrored neighbour is the pixel itself) are summed
    solution = splu(matrix).solve(rhs.T)  # (n, C)
    out = known.copy()
    out[:, ys, xs] = solution.T
    return torch.from_numpy(out).to(values)


def _solve_coarse_to_fine(
    values: torch.Tensor, hole: torch.Tensor, exact_unknowns: int
) -> torch.Tensor:
    """A large hole: the problem on a grid of half the side (each 2x2 block the mean of its
    known values, unknown where it has none), solved by `_fill_one`, bilinearly enlarged and
    refined by REFINE_SWEEPS red-black Gauss-Seidel sweeps. values (C, H, W) -> (C, H, W)."""
    height, width = hole.shape
    known = (~hole)[None, None].to(values.dtype)  # (1, 1, H, W), 1 = known
    weight = F.avg_pool2d(known, 2, ceil_mode=True)  # (1, 1, H/2, W/2)
    coarse = F.avg_pool2d(values[None] * known, 2, ceil_mode=True) / weight.clamp_min(1e-6)
    coarse = _fill_one(coarse[0], weight[0, 0] == 0, exact_unknowns)  # (C, H/2, W/2)
    start = F.interpolate(coarse[None], scale_factor=2, mode="bilinear")[0, :, :height, :width]
    filled = torch.where(hole, start, values)  # (C, H, W)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    red = (ys + xs) % 2 == 0
    colours = (hole & red, hole & ~red)  # (H, W) each: the cells one half-sweep updates
    for _ in range(REFINE_SWEEPS):
        for colour in colours:
            padded = F.pad(filled[None], (1, 1, 1, 1), mode="replicate")[0]  # the mirror
            average = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1]  # (C, H, W), summed in place
            average += padded[:, 1:-1, :-2]
            average += padded[:, 1:-1, 2:]
            average *= 0.25
            filled = torch.where(colour, average, filled)
    return filled
