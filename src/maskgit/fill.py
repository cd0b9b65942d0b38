"""Classical (non-learned) hole filling of uint8 images (N, 3, H, W) under bool masks (N, H, W),
True = repaint.

Two uses: the baselines that `maskgit evaluate` compares MaskGIT with, and the pre-fill of the
hole before the tokenizer encodes an image to inpaint. The encoder's receptive field reaches
several tokens beyond a pixel's own patch, so what the hole holds changes the tokens *around*
it, which the transformer takes as known context (see `pipeline.MaskGIT.decode_batch`).
"""

from __future__ import annotations

from typing import Any

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


# A hole of at most this many pixels is solved exactly (`_solve_exact`: a sparse LU
# factorisation, once per image, every channel at once): any hole at the model's resolution
# (64x64 = 4,096 pixels, ~10 ms) and a 256x256 hole (~0.3 s, ~50 MB). A larger hole is solved
# on a grid halved until it fits and refined on the way back up (`_solve_coarse_to_fine`),
# so its cost grows with its pixels, not faster.
EXACT_UNKNOWNS = 256 * 256
# Gauss-Seidel sweeps (red, then black) at each finer level of the coarse-to-fine solve, over
# the hole's pixels near its edge: they carry the fine detail of the edge in, over the few
# pixels where it matters (detail finer than the coarser grid fades within a few pixels).
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
    REFINE_SWEEPS sweeps per level near the edge; within a colour level or two of the exact
    solution). Images with the same hole share one factorisation.
    An image with no known pixel at all gets 0.
    """
    out = values.clone()
    factors: Factors = {}  # images with the same hole (one mask for a batch) share one
    for index in range(len(values)):
        checkpoint()  # a batch of large holes runs long: a watcher may stop it
        mask = hole[index].to(values.device)
        out[index] = _fill_one(values[index], mask, exact_unknowns, factors)
    return out


# LU factorisations of the exact solve by hole (its shape and packed bits), within one call
Factors = dict[tuple[tuple[int, ...], bytes], Any]


def _fill_one(
    values: torch.Tensor, hole: torch.Tensor, exact_unknowns: int, factors: Factors
) -> torch.Tensor:
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
        filled = _solve_exact(inside, inside_hole, factors)
    else:
        filled = _solve_coarse_to_fine(inside, inside_hole, exact_unknowns, factors)
    out = values.clone()
    out[:, box[0], box[1]] = filled
    return out


def _solve_exact(values: torch.Tensor, hole: torch.Tensor, factors: Factors) -> torch.Tensor:
    """The harmonic continuation by one sparse LU solve: at each hole pixel 4 u = the sum of
    its 4 neighbours, a neighbour outside the image being the pixel itself (the mirror).
    values (C, H, W), hole (H, W) with at least one known pixel -> (C, H, W); the matrix's
    factorisation is taken from `factors` when this hole was solved before, else added."""
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
    key = (mask.shape, np.packbits(mask).tobytes())
    if key not in factors:
        matrix = coo_matrix(
            (np.concatenate(entries), (np.concatenate(rows), np.concatenate(cols))),
            shape=(count, count),
        ).tocsc()  # duplicates (a mirrored neighbour is the pixel itself) are summed
        # minimum degree on A + A^T: the least fill for this symmetric matrix (~1.8x faster
        # than the default COLAMD on a square hole)
        factors[key] = splu(matrix, permc_spec="MMD_AT_PLUS_A")
    solution = factors[key].solve(rhs.T)  # (n, C)
    out = known.copy()
    out[:, ys, xs] = solution.T
    return torch.from_numpy(out).to(values)


def _solve_coarse_to_fine(
    values: torch.Tensor, hole: torch.Tensor, exact_unknowns: int, factors: Factors
) -> torch.Tensor:
    """A large hole: the problem on a grid of half the side (each 2x2 block the mean of its
    known values, unknown where it has none), solved by `_fill_one`, bilinearly enlarged and
    refined near the hole's edge (`_refine_edge`). values (C, H, W) -> (C, H, W)."""
    height, width = hole.shape
    known = (~hole)[None, None].to(values.dtype)  # (1, 1, H, W), 1 = known
    weight = F.avg_pool2d(known, 2, ceil_mode=True)  # (1, 1, H/2, W/2)
    coarse = F.avg_pool2d(values[None] * known, 2, ceil_mode=True) / weight.clamp_min(1e-6)
    coarse = _fill_one(coarse[0], weight[0, 0] == 0, exact_unknowns, factors)  # (C, H/2, W/2)
    start = F.interpolate(coarse[None], scale_factor=2, mode="bilinear")[0, :, :height, :width]
    return _refine_edge(torch.where(hole, start, values), hole)


def _refine_edge(filled: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """REFINE_SWEEPS red-black Gauss-Seidel sweeps over the hole's pixels within
    2 * REFINE_SWEEPS pixels of a known one (as far as the sweeps carry anything; farther
    in, the enlarged coarse solution is smooth and stays). The band's pixels are gathered,
    so the cost grows with the hole's edge, not its area. filled (C, H, W) -> (C, H, W)."""
    import cv2

    height, width = hole.shape
    mask = hole.cpu().numpy().astype(np.uint8)
    distance = cv2.distanceTransform(mask, cv2.DIST_C, 3)  # chessboard, to the nearest known
    ys, xs = np.nonzero(mask.astype(bool) & (distance <= 2 * REFINE_SWEEPS))
    flat = filled.reshape(filled.shape[0], -1).clone()  # (C, H * W)
    halves = []
    for parity in (0, 1):  # red cells, then black: each half reads only the other's
        y, x = ys[(ys + xs) % 2 == parity], xs[(ys + xs) % 2 == parity]
        neighbours = [  # a neighbour outside the image is the pixel itself (the mirror)
            np.clip(y - 1, 0, height - 1) * width + x,
            np.clip(y + 1, 0, height - 1) * width + x,
            y * width + np.clip(x - 1, 0, width - 1),
            y * width + np.clip(x + 1, 0, width - 1),
        ]
        indices = [torch.from_numpy(i).to(flat.device) for i in (y * width + x, *neighbours)]
        halves.append(indices)
    for _ in range(REFINE_SWEEPS):
        checkpoint()
        for centre, *around in halves:
            total = flat[:, around[0]] + flat[:, around[1]]  # (C, n)
            total += flat[:, around[2]]
            total += flat[:, around[3]]
            flat[:, centre] = total * 0.25
    return flat.reshape(filled.shape)
