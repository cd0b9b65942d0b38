"""Iterative parallel decoding (MaskGIT), independent of any model.

`decode` takes a `logits_fn` mapping token ids (B, N) -> logits (B, N, K), so it never sees
the model, and a `DecodingOptions` (maskgit.options) that says how; an optional
`on_step(DecodeStep)` callback sees every step. Token masks follow the package convention:
True = unknown (to be generated).

The rule, at step t = 0 .. S-1 of T planned steps (S = sweet spot, S <= T):
  1. logits = logits_fn(current tokens, with [MASK] at unknown positions)
  2. sample a token at every unknown position (temperature, optional top-k; argmax when
     temperature == 0)
  3. confidence = log p(sampled) + choice_temperature * (1 - (t+1)/T) * Gumbel noise,
     with p the untempered softmax; positions already known get CONFIDENCE_OF_KNOWN_TOKENS
  4. keep n = floor(gamma((t+1)/T) * U0) tokens masked (U0 = the image's unknown count at the
     start), clamped to [1, unknown_now - 1] while steps remain and 0 at the last step S-1;
     the n lowest-confidence new tokens are re-masked, all others are fixed for good.
Randomness for image i comes only from its own generator, so results do not depend on
how images are batched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from maskgit.options import DecodingOptions, resolve
from maskgit.schedule import gamma

CONFIDENCE_OF_KNOWN_TOKENS = float("inf")

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class DecodeStep:
    """State after one decoding step (all tensors on CPU)."""

    step: int
    unknown: torch.Tensor  # (B, N) bool, still unknown after this step
    tokens: torch.Tensor  # (B, N) int64, [MASK] id where still unknown
    sampled: torch.Tensor  # (B, N) int64, this step's prediction at every position


StepCallback = Callable[[DecodeStep], None]


def tokens_to_keep_masked(
    unknown_at_start: torch.Tensor,
    unknown_now: torch.Tensor,
    step: int,
    steps: int,
    last_step: int,
    schedule: str,
    num_tokens: int,
) -> torch.Tensor:
    """How many tokens stay masked after `step` (0-based), per image (B,) int64."""
    if step >= last_step:
        return torch.zeros_like(unknown_now)
    ratio = gamma(schedule, (step + 1) / steps, num_tokens).item()
    scheduled = torch.floor(ratio * unknown_at_start.double()).long()
    keep = torch.clamp(torch.minimum(scheduled, unknown_now - 1), min=1)
    return torch.minimum(keep, unknown_now)


def _per_image_generators(
    generator: torch.Generator | Sequence[torch.Generator] | None, batch: int
) -> list[torch.Generator | None]:
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * batch
    if len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
    return list(generator)


def _uniform(gens: list[torch.Generator | None], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) uniforms in (0, 1), row i drawn from generator i (on CPU)."""
    rows = [torch.rand(shape, generator=g, dtype=torch.float64) for g in gens]
    return torch.stack(rows).clamp(1e-20, 1.0 - 1e-16)


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    gens: list[torch.Generator | None],
) -> torch.Tensor:
    """Sample one id per position from logits (B, N, K) -> (B, N); argmax at temperature 0."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    cdf = scaled.softmax(dim=-1).double().cumsum(dim=-1)  # (B, N, K)
    u = _uniform(gens, tuple(scaled.shape[1:2])).to(cdf.device) * cdf[..., -1]
    ids = torch.searchsorted(cdf, u[..., None]).squeeze(-1)
    return ids.clamp(max=scaled.shape[-1] - 1)


def decode(
    tokens: torch.Tensor,
    unknown: torch.Tensor,
    logits_fn: LogitsFn,
    mask_token_id: int,
    options: DecodingOptions | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    record_steps: bool = False,
    on_step: StepCallback | None = None,
    **changes: Any,
) -> tuple[torch.Tensor, list[DecodeStep]]:
    """Fill the unknown tokens of `tokens` (B, N) where `unknown` (B, N) is True.

    `options` (default DEFAULT_DECODING) with keyword `changes` (field names of
    DecodingOptions, e.g. steps=12) say how; `options.seed` is not used here (pass
    `generator`: one per image makes results independent of the batching).
    `on_step(DecodeStep)` is called after every step run (e.g. for progress).
    Returns the completed tokens (B, N) (no [MASK] left; known tokens unchanged) and, when
    `record_steps`, one DecodeStep per step run.
    """
    options = resolve(options, **changes)
    steps, last_step = options.steps, options.steps_to_run - 1
    batch, num_tokens = tokens.shape
    gens = _per_image_generators(generator, batch)
    unknown = unknown.bool().clone()
    current = torch.where(unknown, torch.full_like(tokens, mask_token_id), tokens)
    unknown_at_start = unknown.sum(dim=1).cpu()  # (B,)
    records: list[DecodeStep] = []
    for step in range(last_step + 1):
        if not unknown.any():
            break
        logits = logits_fn(current)  # (B, N, K)
        sampled = sample_tokens(logits, options.temperature, options.top_k, gens)
        sampled = torch.where(unknown, sampled, current)  # (B, N)
        log_probs = logits.float().log_softmax(dim=-1)
        confidence = log_probs.gather(-1, sampled[..., None]).squeeze(-1).double()
        noise_scale = options.choice_temperature * (1.0 - (step + 1) / steps)
        if noise_scale > 0.0:
            gumbel = -torch.log(-torch.log(_uniform(gens, (num_tokens,))))
            confidence = confidence + noise_scale * gumbel.to(confidence.device)
        confidence = torch.where(unknown, confidence, CONFIDENCE_OF_KNOWN_TOKENS)
        keep = tokens_to_keep_masked(
            unknown_at_start,
            unknown.sum(dim=1).cpu(),
            step,
            steps,
            last_step,
            options.schedule,
            num_tokens,
        ).to(tokens.device)
        ranks = confidence.argsort(dim=1, stable=True).argsort(dim=1)  # 0 = least confident
        unknown = ranks < keep[:, None]
        current = torch.where(unknown, torch.full_like(sampled, mask_token_id), sampled)
        if record_steps or on_step is not None:
            record = DecodeStep(step, unknown.cpu(), current.cpu(), sampled.cpu())
            if record_steps:
                records.append(record)
            if on_step is not None:
                on_step(record)
    return current, records
