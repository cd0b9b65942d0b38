"""Iterative decoding rules (model-free): schedule of reveals, known tokens, determinism,
and token-for-token agreement with an independent reference implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskgit.decoding import (
    CONFIDENCE_OF_KNOWN_TOKENS,
    decode,
    tokens_to_keep_masked,
)
from maskgit.options import DecodingOptions
from maskgit.schedule import gamma

K = 16  # codebook size
MASK = K  # [MASK] id
N = 16  # tokens per image
SCHEDULES = ["linear", "cosine", "lab-cosine", "square", "power-2", "power-3.5", "log", "exp"]


class RandomLinearLogits:
    """logits = onehot(tokens) @ W: every position's logits depend on every token.

    Rows are computed one image at a time so the output of an image never depends on the batch.
    """

    def __init__(self, seed=0, n=N, k=K, scale=1.0):
        g = torch.Generator().manual_seed(seed)
        self.n, self.k = n, k
        self.weight = torch.randn(n * (k + 1), n * k, generator=g) * scale
        self.bias = torch.randn(n * k, generator=g) * scale
        self.calls = 0

    def __call__(self, tokens):
        self.calls += 1
        assert tokens.dtype == torch.int64 and tokens.shape[1] == self.n
        assert tokens.min() >= 0 and tokens.max() <= self.k
        rows = []
        for row in tokens:
            x = F.one_hot(row, self.k + 1).float().flatten()
            rows.append((x @ self.weight + self.bias).reshape(self.n, self.k))
        return torch.stack(rows)


def _problem(batch=3, seed=0, fractions=(1.0, 0.5, 0.25)):
    """Random tokens and per-image unknown masks of different sizes."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (batch, N), generator=g)
    unknown = torch.zeros(batch, N, dtype=torch.bool)
    for i in range(batch):
        count = max(1, round(fractions[i % len(fractions)] * N))
        unknown[i, torch.randperm(N, generator=g)[:count]] = True
    return tokens, unknown


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# --------------------------------------------------------------------------- reference


def reference_decode(
    tokens,
    unknown,
    logits_fn,
    steps,
    sweet_spot,
    schedule,
    temperature,
    choice_temperature,
    top_k,
    seeds,
):
    """A plain per-image loop of the rule in ALGORITHM.md, drawing noise as decode does:
    per step, N uniforms for sampling (only when temperature > 0), then N for the Gumbel
    noise (only when its scale is > 0), float64 from the image's own generator."""
    runs = sweet_spot if sweet_spot is not None else steps
    results = []
    for i in range(tokens.shape[0]):
        gen = torch.Generator().manual_seed(seeds[i])
        tok = [MASK if unknown[i, j] else int(tokens[i, j]) for j in range(N)]
        is_unknown = [bool(unknown[i, j]) for j in range(N)]
        u0 = sum(is_unknown)
        for t in range(runs):
            if not any(is_unknown):
                break
            logits = logits_fn(torch.tensor([tok]))[0].float()  # (N, K)
            # 1. sample
            if temperature > 0:
                u = torch.rand(N, generator=gen, dtype=torch.float64).clamp(1e-20, 1 - 1e-16)
                scaled = logits / temperature
                if top_k is not None and top_k < K:
                    kth = scaled.sort(dim=-1, descending=True).values[:, top_k - 1 : top_k]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                probs = scaled.softmax(dim=-1).double().tolist()
                sampled = []
                for j in range(N):
                    total = 0.0
                    cums = []
                    for p in probs[j]:
                        total += p
                        cums.append(total)
                    target = float(u[j]) * total
                    sampled.append(next((k for k, c in enumerate(cums) if c >= target), K - 1))
            else:
                sampled = [
                    int(max(range(K), key=lambda k, j=j: (logits[j, k], -k))) for j in range(N)
                ]
            # 2. confidence
            log_p = torch.log_softmax(logits, dim=-1)
            scale = choice_temperature * (1.0 - (t + 1) / steps)
            if scale > 0:
                uu = torch.rand(N, generator=gen, dtype=torch.float64).clamp(1e-20, 1 - 1e-16)
                gumbel = (-torch.log(-torch.log(uu))).tolist()
            else:
                gumbel = [0.0] * N
            conf = {}
            for j in range(N):
                if is_unknown[j]:
                    c = float(log_p[j, sampled[j]].double())
                    if scale > 0:
                        c = c + scale * gumbel[j]
                    conf[j] = c
            # 3. how many stay masked
            unknown_now = len(conf)
            if t == runs - 1:
                keep = 0
            else:
                ratio = float(gamma(schedule, (t + 1) / steps, N))
                keep = max(1, min(math.floor(ratio * u0), unknown_now - 1))
            # 4. re-mask the least confident, fix the others
            order = sorted(conf, key=lambda j: (conf[j], j))
            remask = set(order[:keep])
            for j in conf:
                if j in remask:
                    tok[j] = MASK
                else:
                    tok[j] = sampled[j]
                    is_unknown[j] = False
        results.append(tok)
    return torch.tensor(results)


def assert_matches_reference(
    tokens, unknown, fn, seeds, *, steps, schedule, temperature, choice_temperature, **extra
) -> list:
    """decode() == reference_decode() for these settings; returns decode's step records."""
    sweet_spot, top_k = extra.get("sweet_spot"), extra.get("top_k")
    got, records = decode(
        tokens,
        unknown,
        fn,
        MASK,
        steps=steps,
        sweet_spot=sweet_spot,
        schedule=schedule,
        temperature=temperature,
        choice_temperature=choice_temperature,
        top_k=top_k,
        generator=_gens(seeds),
        record_steps=True,
    )
    want = reference_decode(
        tokens,
        unknown,
        fn,
        steps,
        sweet_spot,
        schedule,
        temperature,
        choice_temperature,
        top_k,
        seeds,
    )
    assert torch.equal(got, want)
    return records


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 3, 8, 20])
def test_reference_agrees_argmax(schedule, steps):
    fn = RandomLinearLogits(seed=steps)
    tokens, unknown = _problem(seed=steps)
    seeds = [11, 12, 13]
    assert_matches_reference(
        tokens,
        unknown,
        fn,
        seeds,
        steps=steps,
        schedule=schedule,
        temperature=0.0,
        choice_temperature=4.5,
    )


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.7, 5), (2.0, 1)])
def test_reference_agrees_sampling(schedule, temperature, top_k):
    fn = RandomLinearLogits(seed=3, scale=0.5)
    tokens, unknown = _problem(seed=4, fractions=(1.0, 0.75, 0.1))
    seeds = [5, 6, 7]
    assert_matches_reference(
        tokens,
        unknown,
        fn,
        seeds,
        steps=6,
        schedule=schedule,
        temperature=temperature,
        choice_temperature=2.0,
        top_k=top_k,
    )


@pytest.mark.parametrize("schedule", ["cosine", "linear", "lab-cosine"])
@pytest.mark.parametrize(("steps", "sweet_spot"), [(10, 4), (12, 1), (8, 8)])
def test_reference_agrees_sweet_spot(schedule, steps, sweet_spot):
    fn = RandomLinearLogits(seed=9)
    tokens, unknown = _problem(seed=10)
    seeds = [1, 2, 3]
    records = assert_matches_reference(
        tokens,
        unknown,
        fn,
        seeds,
        steps=steps,
        schedule=schedule,
        temperature=1.0,
        choice_temperature=4.5,
        sweet_spot=sweet_spot,
    )
    assert len(records) == sweet_spot


def test_reference_agrees_no_choice_noise():
    """choice_temperature 0: pure confidence ranking, no Gumbel draws at all."""
    fn = RandomLinearLogits(seed=21)
    tokens, unknown = _problem(seed=22)
    seeds = [0, 1, 2]
    assert_matches_reference(
        tokens,
        unknown,
        fn,
        seeds,
        steps=5,
        schedule="cosine",
        temperature=1.0,
        choice_temperature=0.0,
    )


def test_reference_agrees_with_transformer_logits(tiny_transformer):
    tokens, unknown = _problem(seed=30)
    seeds = [4, 5, 6]

    def fn(x):
        with torch.no_grad():
            return torch.cat([tiny_transformer(row[None]) for row in x])

    assert_matches_reference(
        tokens,
        unknown,
        fn,
        seeds,
        steps=7,
        schedule="cosine",
        temperature=1.0,
        choice_temperature=4.5,
    )


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_known_tokens_never_change(schedule, temperature):
    fn = RandomLinearLogits(seed=1)
    tokens, unknown = _problem(seed=2)
    out, records = decode(
        tokens,
        unknown,
        fn,
        MASK,
        steps=6,
        schedule=schedule,
        temperature=temperature,
        generator=_gens([1, 2, 3]),
        record_steps=True,
    )
    assert torch.equal(out[~unknown], tokens[~unknown])
    for rec in records:
        assert torch.equal(rec.tokens[~unknown], tokens[~unknown])
        assert not rec.unknown[~unknown].any()
    assert out.min() >= 0 and out.max() < K  # no [MASK] left
    assert tokens.shape == out.shape


def test_known_tokens_kept_even_when_the_model_disagrees():
    """A model that always predicts code 0 with certainty does not overwrite known tokens."""

    def fn(x):
        logits = torch.full((*x.shape, K), -50.0)
        logits[..., 0] = 50.0
        return logits

    tokens = torch.full((2, N), 7)
    unknown = torch.zeros(2, N, dtype=torch.bool)
    unknown[:, ::2] = True
    out, _ = decode(tokens, unknown, fn, MASK, steps=4, generator=_gens([0, 1]))
    assert torch.all(out[:, 1::2] == 7)
    assert torch.all(out[:, ::2] == 0)


def test_masked_input_fed_to_model_uses_mask_id():
    seen = []

    def fn(x):
        seen.append(x.clone())
        return torch.zeros(*x.shape, K)

    tokens = torch.full((1, N), 3)
    unknown = torch.zeros(1, N, dtype=torch.bool)
    unknown[0, :5] = True
    decode(tokens, unknown, fn, MASK, steps=3, generator=_gens([0]))
    first = seen[0][0]
    assert torch.all(first[:5] == MASK) and torch.all(first[5:] == 3)
    assert len(seen) == 3


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("steps", [2, 5, 12])
def test_reveals_follow_the_schedule(schedule, steps):
    fn = RandomLinearLogits(seed=5)
    tokens, unknown = _problem(seed=6, fractions=(1.0, 0.5, 0.0625))
    out, records = decode(
        tokens,
        unknown,
        fn,
        MASK,
        steps=steps,
        schedule=schedule,
        temperature=1.0,
        generator=_gens([7, 8, 9]),
        record_steps=True,
    )
    assert len(records) == steps
    u0 = unknown.sum(dim=1)
    prev = unknown
    for t, rec in enumerate(records):
        assert rec.step == t
        now = rec.unknown
        # Unknown sets only shrink.
        assert not (now & ~prev).any()
        expected = tokens_to_keep_masked(u0, prev.sum(dim=1), t, steps, steps - 1, schedule, N)
        assert now.sum(dim=1).tolist() == expected.tolist()
        for i in range(tokens.shape[0]):
            before = int(prev[i].sum())
            if t == steps - 1:
                want = 0
            else:
                scheduled = math.floor(float(gamma(schedule, (t + 1) / steps, N)) * int(u0[i]))
                want = max(1, min(scheduled, before - 1))
            assert int(now[i].sum()) == want, (i, t)
        # [MASK] exactly at the still-unknown positions.
        assert torch.equal(rec.tokens == MASK, now)
        assert torch.equal(rec.tokens[~now], rec.sampled[~now])
        prev = now
    assert not records[-1].unknown.any()
    assert torch.equal(records[-1].tokens, out)


def test_keeps_full_budget_of_steps_when_few_unknown():
    """U0 = 1 with many steps: the token stays masked until the last step (clamp to >= 1)."""
    fn = RandomLinearLogits(seed=0)
    tokens = torch.zeros(1, N, dtype=torch.long)
    unknown = torch.zeros(1, N, dtype=torch.bool)
    unknown[0, 4] = True
    out, records = decode(
        tokens, unknown, fn, MASK, steps=5, generator=_gens([0]), record_steps=True
    )
    assert [int(r.unknown.sum()) for r in records] == [1, 1, 1, 1, 0]
    assert out[0, 4] != MASK


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sweet_spot_stops_early_and_fills_everything(schedule):
    fn = RandomLinearLogits(seed=2)
    tokens, unknown = _problem(seed=3)
    steps, sweet = 12, 5
    out, records = decode(
        tokens,
        unknown,
        fn,
        MASK,
        steps=steps,
        sweet_spot=sweet,
        schedule=schedule,
        generator=_gens([1, 2, 3]),
        record_steps=True,
    )
    assert len(records) == sweet
    assert fn.calls == sweet
    assert not records[-1].unknown.any()
    assert (out != MASK).all() and out.max() < K
    # Before the sweet spot, the counts follow the T-step schedule, not an S-step one.
    u0 = unknown.sum(dim=1)
    for t in range(sweet - 1):
        ratio = float(gamma(schedule, (t + 1) / steps, N))
        prev = unknown if t == 0 else records[t - 1].unknown
        for i in range(3):
            want = max(1, min(math.floor(ratio * int(u0[i])), int(prev[i].sum()) - 1))
            assert int(records[t].unknown[i].sum()) == want


def test_no_mask_left_and_model_called_steps_times():
    fn = RandomLinearLogits(seed=4)
    tokens, unknown = _problem(seed=5)
    out, records = decode(tokens, unknown, fn, MASK, steps=9, generator=_gens([0, 1, 2]))
    assert records == []
    assert (out != MASK).all()
    assert fn.calls == 9


def test_nothing_unknown_returns_input_without_calling_model():
    fn = RandomLinearLogits()
    tokens, _ = _problem()
    out, records = decode(
        tokens,
        torch.zeros_like(tokens, dtype=torch.bool),
        fn,
        MASK,
        steps=4,
        record_steps=True,
    )
    assert torch.equal(out, tokens)
    assert fn.calls == 0 and records == []


def test_fully_known_image_in_a_batch():
    fn = RandomLinearLogits(seed=8)
    tokens, unknown = _problem(seed=9)
    unknown[1] = False
    out, _ = decode(tokens, unknown, fn, MASK, steps=6, generator=_gens([1, 2, 3]))
    assert torch.equal(out[1], tokens[1])
    assert (out != MASK).all()


def test_same_seed_same_output_different_seed_differs():
    fn = RandomLinearLogits(seed=6, scale=0.3)
    tokens, unknown = _problem(seed=7, fractions=(1.0,))
    kwargs = dict(steps=8, schedule="cosine", temperature=1.0)
    a, _ = decode(tokens, unknown, fn, MASK, generator=torch.Generator().manual_seed(3), **kwargs)
    b, _ = decode(tokens, unknown, fn, MASK, generator=torch.Generator().manual_seed(3), **kwargs)
    c, _ = decode(tokens, unknown, fn, MASK, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(5)
    d, _ = decode(tokens, unknown, fn, MASK, **kwargs)
    torch.manual_seed(5)
    e, _ = decode(tokens, unknown, fn, MASK, **kwargs)
    assert torch.equal(d, e)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_per_image_generators_make_results_batch_independent(temperature):
    fn = RandomLinearLogits(seed=11, scale=0.5)
    tokens, unknown = _problem(seed=12)
    seeds = [100, 200, 300]
    kwargs = dict(steps=7, schedule="cosine", temperature=temperature, choice_temperature=4.5)
    batch, _ = decode(tokens, unknown, fn, MASK, generator=_gens(seeds), **kwargs)
    for i in range(3):
        alone, _ = decode(
            tokens[i : i + 1], unknown[i : i + 1], fn, MASK, generator=_gens([seeds[i]]), **kwargs
        )
        assert torch.equal(alone[0], batch[i]), f"image {i} depends on its batch"
    # Reordering the batch (with its generators) permutes the result.
    perm = [2, 0, 1]
    shuffled, _ = decode(
        tokens[perm], unknown[perm], fn, MASK, generator=_gens([seeds[p] for p in perm]), **kwargs
    )
    assert torch.equal(shuffled, batch[perm])


def test_generator_count_must_match_batch():
    tokens, unknown = _problem()
    with pytest.raises(ValueError, match="generators"):
        decode(tokens, unknown, RandomLinearLogits(), MASK, generator=_gens([1, 2]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(steps=0), "steps"),
        (dict(steps=-3), "steps"),
        (dict(steps=5, sweet_spot=6), "sweet_spot"),
        (dict(steps=5, sweet_spot=0), "sweet_spot"),
        (dict(steps=5, schedule="cosine2"), "valid"),
        (dict(steps=5, schedule="power-K"), "valid"),
    ],
)
def test_invalid_arguments(kwargs, match):
    tokens, unknown = _problem()
    fn = RandomLinearLogits()
    with pytest.raises(ValueError, match=match):
        decode(tokens, unknown, fn, MASK, **kwargs)
    assert fn.calls == 0
    with pytest.raises(ValueError, match=match):
        DecodingOptions(**kwargs)


def test_options_say_how_many_steps_run():
    assert DecodingOptions(steps=12, schedule="cosine").steps_to_run == 12
    assert DecodingOptions(steps=12, sweet_spot=5, schedule="linear").steps_to_run == 5
    assert DecodingOptions(steps=1, sweet_spot=1, schedule="exp").steps_to_run == 1


def test_tokens_to_keep_masked():
    u0 = torch.tensor([256, 10, 1, 0])
    # cosine at (0+1)/8: floor(cos(pi/16) * U0)
    now = u0.clone()
    keep = tokens_to_keep_masked(u0, now, 0, 8, 7, "cosine", 256)
    ratio = math.cos(math.pi / 16)
    assert keep.tolist() == [math.floor(ratio * 256), math.floor(ratio * 10), 1, 0]
    # Clamped to unknown_now - 1 (always reveal one) and at least 1.
    keep = tokens_to_keep_masked(u0, torch.tensor([3, 2, 1, 0]), 0, 8, 7, "cosine", 256)
    assert keep.tolist() == [2, 1, 1, 0]
    keep = tokens_to_keep_masked(u0, torch.tensor([200, 9, 1, 0]), 6, 8, 7, "linear", 256)
    assert keep.tolist() == [math.floor(0.125 * 256), 1, 1, 0]
    # Last step (or past it): nothing stays masked.
    assert tokens_to_keep_masked(u0, u0, 7, 8, 7, "cosine", 256).tolist() == [0, 0, 0, 0]
    assert tokens_to_keep_masked(u0, u0, 3, 8, 3, "cosine", 256).tolist() == [0, 0, 0, 0]
    assert keep.dtype == torch.int64


def test_known_tokens_have_infinite_confidence():
    assert math.isinf(CONFIDENCE_OF_KNOWN_TOKENS) and CONFIDENCE_OF_KNOWN_TOKENS > 0


def test_argmax_picks_the_most_likely_code():
    target = torch.arange(N) % K

    def fn(x):
        return F.one_hot(target, K).float().expand(x.shape[0], N, K) * 5.0

    tokens = torch.zeros(2, N, dtype=torch.long)
    unknown = torch.ones(2, N, dtype=torch.bool)
    out, _ = decode(tokens, unknown, fn, MASK, steps=4, temperature=0.0, generator=_gens([0, 1]))
    assert torch.equal(out, target.expand(2, N))


def test_top_k_one_is_argmax():
    # No choice noise: sampling draws uniforms that argmax does not, so the Gumbel noise of
    # the two runs would differ.
    fn = RandomLinearLogits(seed=13)
    tokens, unknown = _problem(seed=14)
    kwargs = dict(steps=5, choice_temperature=0.0)
    a, _ = decode(tokens, unknown, fn, MASK, temperature=1.0, top_k=1, **kwargs)
    b, _ = decode(tokens, unknown, fn, MASK, temperature=0.0, **kwargs)
    assert torch.equal(a, b)


def test_sampling_follows_the_distribution():
    """One unknown token, one step: sampled codes match softmax(logits / temperature)."""
    probs = torch.tensor([0.5, 0.3, 0.2] + [0.0] * (K - 3))
    logits = probs.clamp_min(1e-12).log()

    def fn(x):
        return logits.expand(x.shape[0], N, K)

    batch = 3000
    tokens = torch.zeros(batch, N, dtype=torch.long)
    unknown = torch.zeros(batch, N, dtype=torch.bool)
    unknown[:, 0] = True
    out, _ = decode(
        tokens,
        unknown,
        fn,
        MASK,
        steps=1,
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    freq = torch.bincount(out[:, 0], minlength=K).double() / batch
    assert torch.allclose(freq[:3], probs[:3].double(), atol=0.03)
    assert freq[3:].sum() == 0


def test_transformer_logits_fn(tiny_transformer):
    tokens, unknown = _problem(seed=40)
    seeds = [1, 2, 3]

    def fn(x):
        with torch.no_grad():
            return tiny_transformer(x)

    out, records = decode(
        tokens, unknown, fn, MASK, steps=6, generator=_gens(seeds), record_steps=True
    )
    assert torch.equal(out[~unknown], tokens[~unknown])
    assert (out != MASK).all() and len(records) == 6
