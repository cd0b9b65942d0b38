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
That is `options.rule == "paper"` (Chang et al., google-research/maskgit). Two other rules:

  "lab" (the course lab's report), at step t = 0 .. S-1:
  1. logits = logits_fn(current tokens); prediction = sample (argmax at temperature 0, the
     lab's setting); confidence = softmax(logits / choice_temperature) at the prediction
     (its max under argmax; choice_temperature 0 is taken as 1), no noise
  2. every position outside the original known region takes the new prediction (tokens
     decided earlier are re-predicted); original known tokens are restored
  3. re-mask the min(int(gamma(t/T) * N), unknown_now) lowest-confidence positions among
     those still unknown, N = ALL tokens of the image (not U0), ratio t/T (not (t+1)/T)
  After step S-1 the output is that step's prediction everywhere outside the known region.
  Nothing is decided until gamma(t/T) N drops below the unknown count.

  "halton": the unknown positions are revealed in a fixed Halton order (2-D, bases 2 and 3:
  quasi-random and spatially spread, cf. valeoai's Halton-MaskGIT), as many per step as the
  paper's rule reveals; decided tokens are fixed; no confidence is used.
Randomness for image i comes only from its own generator, so results do not depend on
how images are batched.
"""

from __future__ import annotations

import functools
import math
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
    Returns the completed tokens (B, N) (known tokens unchanged) and, when `record_steps`,
    one DecodeStep per step run.

    No [MASK] is left only because every id drawn is an index into `logits_fn`'s last
    dimension: maskgit's transformer returns K = `mask_token_id` logits, over the real codes
    0..K-1 (its tied head has no [MASK] row), so it never predicts [MASK] and id K cannot be
    drawn. `decode` does not check this: a `logits_fn` returning K + 1 logits, [MASK]
    included, as the lab report's model does (its argmax runs over all K + 1), could leave
    [MASK] in the output.
    """
    options = resolve(options, **changes)
    batch, num_tokens = tokens.shape
    gens = _per_image_generators(generator, batch)
    unknown = unknown.bool().clone()
    current = torch.where(unknown, torch.full_like(tokens, mask_token_id), tokens)
    records: list[DecodeStep] = []
    if options.rule == "lab":
        step_fn = _lab_step
    elif options.rule == "halton":
        step_fn = _halton_step
    else:
        step_fn = _paper_step
    state = _State(
        options=options,
        tokens=tokens,
        known=~unknown,
        unknown_at_start=unknown.sum(dim=1).cpu(),
        mask_token_id=mask_token_id,
        gens=gens,
    )
    for step in range(options.steps_to_run):
        # The lab rule re-predicts every generated token until S, even when none is masked.
        if not unknown.any() and (options.rule != "lab" or step == 0):
            break
        logits = logits_fn(current)  # (B, N, K)
        unknown, current, sampled = step_fn(state, step, logits, unknown, current)
        if record_steps or on_step is not None:
            record = DecodeStep(step, unknown.cpu(), current.cpu(), sampled.cpu())
            if record_steps:
                records.append(record)
            if on_step is not None:
                on_step(record)
    if options.rule == "lab" and state.prediction is not None:
        current = state.prediction  # the lab decodes its last prediction
    return current, records


@dataclass
class _State:
    """What every step of one `decode` call shares."""

    options: DecodingOptions
    tokens: torch.Tensor  # (B, N) the input tokens (valid where known)
    known: torch.Tensor  # (B, N) bool, the original known region
    unknown_at_start: torch.Tensor  # (B,) on CPU
    mask_token_id: int
    gens: list[torch.Generator | None]
    prediction: torch.Tensor | None = None  # lab rule: the last step's prediction


def _keep(state: _State, unknown: torch.Tensor, step: int) -> torch.Tensor:
    """The paper's count of tokens still masked after `step`, (B,) on the tokens' device."""
    options = state.options
    return tokens_to_keep_masked(
        state.unknown_at_start,
        unknown.sum(dim=1).cpu(),
        step,
        options.steps,
        options.steps_to_run - 1,
        options.schedule,
        unknown.shape[1],
    ).to(unknown.device)


def _remask_lowest(
    confidence: torch.Tensor, keep: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """(B, N) bool: the `keep` (B,) lowest-confidence candidates of each row."""
    confidence = torch.where(candidates, confidence, CONFIDENCE_OF_KNOWN_TOKENS)
    ranks = confidence.argsort(dim=1, stable=True).argsort(dim=1)  # 0 = least confident
    return (ranks < keep[:, None]) & candidates


def _masked(state: _State, unknown: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.where(unknown, torch.full_like(values, state.mask_token_id), values)


def _paper_step(state: _State, step: int, logits, unknown, current):
    options = state.options
    sampled = sample_tokens(logits, options.temperature, options.top_k, state.gens)
    sampled = torch.where(unknown, sampled, current)  # (B, N)
    log_probs = logits.float().log_softmax(dim=-1)
    confidence = log_probs.gather(-1, sampled[..., None]).squeeze(-1).double()
    noise_scale = options.choice_temperature * (1.0 - (step + 1) / options.steps)
    if noise_scale > 0.0:
        gumbel = -torch.log(-torch.log(_uniform(state.gens, (unknown.shape[1],))))
        confidence = confidence + noise_scale * gumbel.to(confidence.device)
    unknown = _remask_lowest(confidence, _keep(state, unknown, step), unknown)
    return unknown, _masked(state, unknown, sampled), sampled


def _lab_step(state: _State, step: int, logits, unknown, current):
    options = state.options
    prediction = sample_tokens(logits, options.temperature, options.top_k, state.gens)
    prediction = torch.where(state.known, state.tokens, prediction)  # restore the known
    temperature = options.choice_temperature if options.choice_temperature > 0 else 1.0
    # log of the softmax, in float64: the same order as the probabilities, without the ties
    # float32 makes when a sharp softmax rounds to 1
    log_probs = (logits.double() / temperature).log_softmax(dim=-1)
    confidence = log_probs.gather(-1, prediction[..., None]).squeeze(-1)
    ratio = gamma(options.schedule, step / options.steps, unknown.shape[1]).item()
    count = int(ratio * unknown.shape[1])  # of ALL tokens
    keep = torch.clamp(unknown.sum(dim=1), max=count)
    unknown = _remask_lowest(confidence, keep, unknown)
    state.prediction = prediction
    return unknown, _masked(state, unknown, prediction), prediction


def halton_sequence(index: int, base: int) -> float:
    """The `index`-th (1-based) element of the van der Corput sequence in `base`."""
    out, fraction = 0.0, 1.0
    while index > 0:
        fraction /= base
        index, digit = divmod(index, base)
        out += digit * fraction
    return out


@functools.lru_cache(maxsize=8)
def halton_order(num_tokens: int) -> torch.Tensor:
    """(num_tokens,) a permutation of the positions in 2-D Halton order (bases 2 and 3).

    Points of the Halton sequence are mapped to cells of the side x side token grid; the
    first point landing in a cell gives that cell its rank. A grid that is not square falls
    back to the 1-D van der Corput order in base 2.
    """
    side = math.isqrt(num_tokens)
    order: list[int] = []
    seen: set[int] = set()
    index = 1
    while len(order) < num_tokens:
        if side * side == num_tokens:
            row = int(halton_sequence(index, 2) * side)
            col = int(halton_sequence(index, 3) * side)
            cell = row * side + col
        else:
            cell = int(halton_sequence(index, 2) * num_tokens)
        if cell not in seen:
            seen.add(cell)
            order.append(cell)
        index += 1
    return torch.tensor(order, dtype=torch.long)


def _halton_step(state: _State, step: int, logits, unknown, current):
    options = state.options
    sampled = sample_tokens(logits, options.temperature, options.top_k, state.gens)
    sampled = torch.where(unknown, sampled, current)
    num_tokens = unknown.shape[1]
    rank = torch.empty(num_tokens, dtype=torch.double)
    rank[halton_order(num_tokens)] = torch.arange(num_tokens, dtype=torch.double)
    # Late in the Halton order = "least confident": those stay masked.
    confidence = -rank.to(unknown.device).expand_as(unknown)
    unknown = _remask_lowest(confidence, _keep(state, unknown, step), unknown)
    return unknown, _masked(state, unknown, sampled), sampled
