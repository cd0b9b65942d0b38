"""Masks, in one convention.

THE MASK CONVENTION (used everywhere in this package):
    A token mask is a bool tensor (B, N) or (B, h, w) where True means "unknown / to be
    generated" (the token is replaced by [MASK]); False means "known / kept".
    A pixel mask is a bool tensor (B, H, W) where True means "repaint this pixel".
Mask *files* and images come in two conventions (white = repaint, as in diffusers and LaMa,
the default; or white = keep, as in the course lab, i.e. the university course's MaskGIT
assignment this package grew from); `maskgit.reader` converts either into the convention
above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskgit.schedule import gamma


def random_token_mask(
    batch_size: int,
    num_tokens: int,
    schedule: str,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training mask (B, N), True = masked: per image r ~ U(0,1), ceil(gamma(r) N) masked.

    Counts are clipped to [1, N], so no image is left without a masked token; positions are
    uniform without replacement.
    """
    counts = _mask_counts(batch_size, num_tokens, schedule, generator)
    scores = torch.rand(batch_size, num_tokens, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, N): a random permutation per row
    return (ranks < counts[:, None]).to(device)


def _mask_counts(batch_size: int, num_tokens: int, schedule: str, generator) -> torch.Tensor:
    """Per image r ~ U(0,1) -> ceil(gamma(r) N) masked tokens, clipped to [1, N]. (B,)"""
    r = torch.rand(batch_size, generator=generator)
    return torch.ceil(gamma(schedule, r, num_tokens) * num_tokens).long().clamp(1, num_tokens)


def region_token_mask(
    batch_size: int,
    grid: int,
    schedule: str,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training mask (B, grid*grid), True = masked, shaped like an inpainting hole.

    The count per image follows the schedule exactly as in `random_token_mask`, but the
    masked tokens are the `count` tokens nearest to a random shape: a box (Chebyshev distance
    to a random centre with a random aspect ratio) or a stroke (distance to a random
    three-segment polyline), half the images each. So the hole grows as one contiguous
    region, like the boxes and free-form strokes users paint.
    """
    counts = _mask_counts(batch_size, grid * grid, schedule, generator)
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    points = torch.stack([xs, ys], -1).reshape(1, -1, 2).float() + 0.5  # (1, N, 2)
    centre = torch.rand(batch_size, 1, 2, generator=generator) * grid  # (B, 1, 2)
    aspect = torch.exp(torch.empty(batch_size, 1, 2).uniform_(-0.7, 0.7, generator=generator))
    box = ((points - centre).abs() * aspect).amax(-1)  # (B, N)
    corners = torch.rand(batch_size, 4, 2, generator=generator) * grid  # (B, 4, 2): polyline
    start, end = corners[:, :-1, None], corners[:, 1:, None]  # (B, 3, 1, 2)
    direction = end - start
    t = ((points[:, None] - start) * direction).sum(-1) / direction.square().sum(-1).clamp_min(
        1e-6
    )  # (B, 3, N): projection of each token centre on each segment
    nearest = start + t.clamp(0, 1)[..., None] * direction  # (B, 3, N, 2)
    stroke = (points[:, None] - nearest).norm(dim=-1).amin(1)  # (B, N)
    use_box = torch.rand(batch_size, 1, generator=generator) < 0.5
    distance = torch.where(use_box, box, stroke)
    distance = distance + 1e-3 * torch.rand(distance.shape, generator=generator)  # break ties
    ranks = distance.argsort(dim=1).argsort(dim=1)  # (B, N): 0 = nearest to the shape
    return (ranks < counts[:, None]).to(device)


def masked_token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy on masked positions only, averaged over all masked tokens of the batch
    (`reduction="sum"`: summed, as training does before dividing by the global count).

    logits (B, N, K), targets (B, N) int64, mask (B, N) bool with True = masked.
    """
    return F.cross_entropy(
        logits[mask].float(), targets[mask], label_smoothing=label_smoothing, reduction=reduction
    )


def apply_token_mask(tokens: torch.Tensor, mask: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """Replace the masked positions of `tokens` by `mask_token_id` (new tensor)."""
    return torch.where(mask, torch.full_like(tokens, mask_token_id), tokens)


def pixel_to_token_mask(pixel_mask: torch.Tensor, downsample: int) -> torch.Tensor:
    """Pixel mask (B, H, W) True = repaint -> token mask (B, H/ds, W/ds) True = unknown.

    A token is unknown when any pixel of its downsample x downsample patch is to be repainted.
    """
    if pixel_mask.shape[-1] % downsample or pixel_mask.shape[-2] % downsample:
        raise ValueError(
            f"mask size {tuple(pixel_mask.shape[-2:])} is not divisible by {downsample}"
        )
    pooled = F.max_pool2d(pixel_mask[:, None].float(), kernel_size=downsample)
    return pooled[:, 0] > 0
