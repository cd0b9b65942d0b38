"""Training masks, the masked-token loss, and pixel masks -> token masks (mask files and
arrays: tests/test_reader.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import maskgit.masking as masking
from maskgit.masking import (
    apply_token_mask,
    masked_token_loss,
    pixel_to_token_mask,
    random_token_mask,
    region_token_mask,
)
from maskgit.schedule import gamma

SCHEDULES = ["linear", "cosine", "lab-cosine", "square", "power-3.5", "log", "exp"]


# --------------------------------------------------------------------------- random_token_mask


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_mask_counts_follow_ceil_gamma_per_image(schedule):
    batch, n = 64, 16
    mask = random_token_mask(batch, n, schedule, generator=torch.Generator().manual_seed(3))
    assert mask.shape == (batch, n) and mask.dtype == torch.bool
    # The same generator replays the per-image r draws: r comes first, one per image.
    r = torch.rand(batch, generator=torch.Generator().manual_seed(3))
    expected = [min(n, max(1, math.ceil(gamma(schedule, x, n).item() * n))) for x in r.tolist()]
    assert mask.sum(dim=1).tolist() == expected


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_counts_differ_across_the_batch(schedule):
    """One r per image, not one count for the whole batch."""
    mask = random_token_mask(32, 64, schedule, generator=torch.Generator().manual_seed(0))
    counts = mask.sum(dim=1)
    assert len(set(counts.tolist())) > 5
    assert counts.min() >= 1 and counts.max() <= 64


def test_count_distribution_linear_is_uniform():
    batch, n = 20000, 16
    counts = random_token_mask(batch, n, "linear", generator=torch.Generator().manual_seed(1)).sum(
        1
    )
    hist = torch.bincount(counts, minlength=n + 1).double() / batch
    assert hist[0] == 0
    # ceil((1-r) N) with r ~ U(0,1) is uniform on 1..N.
    assert torch.allclose(hist[1:], torch.full((n,), 1.0 / n, dtype=torch.float64), atol=0.012)


def test_mean_mask_ratio_cosine():
    batch, n = 20000, 64
    mask = random_token_mask(batch, n, "cosine", generator=torch.Generator().manual_seed(2))
    # E[cos(pi r / 2)] = 2 / pi; ceil adds under one token on average.
    assert 2 / math.pi - 0.01 < mask.float().mean().item() < 2 / math.pi + 1 / n + 0.01


def test_never_zero_masked_even_when_schedule_gives_zero(monkeypatch):
    monkeypatch.setattr(masking, "gamma", lambda name, r, n=256: torch.zeros_like(r).double())
    mask = random_token_mask(50, 16, "linear", generator=torch.Generator().manual_seed(0))
    assert mask.sum(dim=1).tolist() == [1] * 50


def test_never_more_than_all_masked(monkeypatch):
    monkeypatch.setattr(masking, "gamma", lambda name, r, n=256: torch.ones_like(r).double() * 1.3)
    mask = random_token_mask(5, 16, "linear", generator=torch.Generator().manual_seed(0))
    assert mask.all()


@pytest.mark.parametrize("schedule", ["log", "exp", "linear", "cosine"])
def test_real_schedules_never_mask_zero(schedule):
    mask = random_token_mask(5000, 256, schedule, generator=torch.Generator().manual_seed(4))
    assert mask.sum(dim=1).min().item() >= 1


def test_positions_are_uniform():
    batch, n = 20000, 16
    mask = random_token_mask(batch, n, "linear", generator=torch.Generator().manual_seed(5))
    per_position = mask.float().mean(dim=0)
    overall = mask.float().mean()
    assert torch.allclose(per_position, overall.expand(n), atol=0.02)
    # Given the count, every position is equally likely: check images with exactly 1 mask.
    single = mask[mask.sum(1) == 1]
    assert single.shape[0] > 800
    freq = single.float().mean(dim=0)
    assert torch.allclose(freq, torch.full((n,), 1.0 / n), atol=0.03)


# --------------------------------------------------------------------------- region_token_mask


def _cut_edges(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """Per image: neighbour pairs (4-connectivity) with one token masked and one known."""
    m = mask.view(-1, grid, grid)
    return (m[:, 1:] != m[:, :-1]).sum((1, 2)) + (m[:, :, 1:] != m[:, :, :-1]).sum((1, 2))


@pytest.mark.parametrize("schedule", ["cosine", "linear", "square"])
def test_region_mask_counts_follow_the_schedule_like_random_masks(schedule):
    """Same seed, same per-image counts as random_token_mask: only the positions differ."""
    region = region_token_mask(64, 8, schedule, generator=torch.Generator().manual_seed(7))
    uniform = random_token_mask(64, 64, schedule, generator=torch.Generator().manual_seed(7))
    assert region.shape == (64, 64) and region.dtype == torch.bool
    assert region.sum(1).tolist() == uniform.sum(1).tolist()
    assert not torch.equal(region, uniform)


def test_region_masks_are_compact_holes_not_scattered_tokens():
    grid, batch = 16, 2000
    region = region_token_mask(batch, grid, "linear", generator=torch.Generator().manual_seed(0))
    uniform = random_token_mask(
        batch, grid * grid, "linear", generator=torch.Generator().manual_seed(0)
    )
    # Equal counts; a hole's border is a small fraction of a scattered mask's.
    assert _cut_edges(region, grid).float().mean() < 0.3 * _cut_edges(uniform, grid).float().mean()
    # Every position gets masked sometimes (the shapes move over the whole grid).
    assert region.float().mean(0).min() > 0.2


def test_region_mask_is_seeded():
    a = region_token_mask(8, 16, "cosine", generator=torch.Generator().manual_seed(1))
    b = region_token_mask(8, 16, "cosine", generator=torch.Generator().manual_seed(1))
    c = region_token_mask(8, 16, "cosine", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_token_mask_default_generator_and_device():
    torch.manual_seed(0)
    a = random_token_mask(4, 16, "cosine")
    torch.manual_seed(0)
    b = random_token_mask(4, 16, "cosine", device="cpu")
    assert torch.equal(a, b) and b.device.type == "cpu"


def test_random_token_mask_unknown_schedule():
    with pytest.raises(ValueError, match="valid"):
        random_token_mask(2, 16, "nope")


# --------------------------------------------------------------------------- masked_token_loss


def _loss_inputs(seed=0, batch=3, n=10, k=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n, k, generator=g)
    targets = torch.randint(0, k, (batch, n), generator=g)
    mask = torch.rand(batch, n, generator=g) < 0.4
    mask[:, 0] = True  # at least one masked per image
    mask[:, 1] = False  # at least one visible per image
    return logits, targets, mask


def test_loss_ignores_visible_positions():
    logits, targets, mask = _loss_inputs()
    base = masked_token_loss(logits, targets, mask)
    changed = logits.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), logits.shape[-1]) * 10
    assert torch.equal(masked_token_loss(changed, targets, mask), base)


def test_loss_depends_on_masked_positions():
    logits, targets, mask = _loss_inputs()
    base = masked_token_loss(logits, targets, mask)
    changed = logits.clone()
    changed[0, 0] += torch.linspace(-3, 3, logits.shape[-1])
    assert not torch.allclose(masked_token_loss(changed, targets, mask), base)


def test_loss_is_mean_ce_over_masked_tokens_of_batch():
    logits, targets, mask = _loss_inputs(seed=1)
    terms = []
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if mask[b, i]:
                log_p = torch.log_softmax(logits[b, i].double(), dim=-1)
                terms.append(-log_p[targets[b, i]].item())
    expected = sum(terms) / len(terms)  # a mean over tokens, not a mean of per-image means
    assert masked_token_loss(logits, targets, mask).item() == pytest.approx(expected, rel=1e-5)


def test_loss_gradient_only_at_masked_positions():
    logits, targets, mask = _loss_inputs(seed=2)
    logits.requires_grad_(True)
    masked_token_loss(logits, targets, mask).backward()
    grad_norm = logits.grad.abs().sum(-1)
    assert torch.all(grad_norm[~mask] == 0)
    assert torch.all(grad_norm[mask] > 0)


def test_loss_label_smoothing_matches_torch():
    logits, targets, mask = _loss_inputs(seed=3)
    got = masked_token_loss(logits, targets, mask, label_smoothing=0.1)
    want = F.cross_entropy(logits[mask], targets[mask], label_smoothing=0.1)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_loss_half_precision_logits_computed_in_fp32():
    logits, targets, mask = _loss_inputs(seed=4)
    loss = masked_token_loss(logits.bfloat16(), targets, mask)
    assert loss.dtype == torch.float32


def test_apply_token_mask():
    tokens = torch.arange(8).reshape(2, 4)
    mask = torch.tensor([[True, False, False, True], [False, False, False, False]])
    out = apply_token_mask(tokens, mask, 99)
    assert out.tolist() == [[99, 1, 2, 99], [4, 5, 6, 7]]
    assert tokens.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # input unchanged


# --------------------------------------------------------------------------- pixel masks


def test_pixel_to_token_mask_any_pixel_marks_its_token():
    pixel = torch.zeros(2, 16, 16, dtype=torch.bool)
    pixel[0, 5, 6] = True  # token (1, 1) with downsample 4
    pixel[0, 15, 0] = True  # token (3, 0)
    pixel[1, 0:4, 12:16] = True  # whole token (0, 3)
    tokens = pixel_to_token_mask(pixel, 4)
    assert tokens.shape == (2, 4, 4) and tokens.dtype == torch.bool
    expected = torch.zeros(2, 4, 4, dtype=torch.bool)
    expected[0, 1, 1] = expected[0, 3, 0] = expected[1, 0, 3] = True
    assert torch.equal(tokens, expected)


def test_pixel_to_token_mask_shapes_non_square():
    tokens = pixel_to_token_mask(torch.zeros(3, 8, 24, dtype=torch.bool), 8)
    assert tokens.shape == (3, 1, 3) and not tokens.any()
    assert pixel_to_token_mask(torch.ones(1, 8, 8, dtype=torch.bool), 2).all()


@pytest.mark.parametrize("shape", [(1, 15, 16), (1, 16, 15), (2, 10, 10)])
def test_pixel_to_token_mask_non_divisible_raises(shape):
    with pytest.raises(ValueError, match="divisible"):
        pixel_to_token_mask(torch.zeros(shape, dtype=torch.bool), 4)
