"""The lab rule (token for token against a reference written from issue #18's description)
and the Halton rule (every unknown token revealed exactly once, known tokens untouched)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskgit.decoding import decode, halton_order
from maskgit.options import DecodingOptions

K = 16
MASK = K
N = 64  # an 8 x 8 token grid


class LinearLogits:
    """logits = onehot(tokens) @ W + b, one image at a time (batch independent)."""

    def __init__(self, seed=0, n=N, k=K):
        g = torch.Generator().manual_seed(seed)
        self.n, self.k = n, k
        self.weight = torch.randn(n * (k + 1), n * k, generator=g)
        self.bias = torch.randn(n * k, generator=g)
        self.inputs: list[torch.Tensor] = []

    def __call__(self, tokens):
        self.inputs.append(tokens.clone())
        rows = [
            F.one_hot(row, self.k + 1).float().flatten() @ self.weight + self.bias for row in tokens
        ]
        return torch.stack(rows).reshape(len(tokens), self.n, self.k)


def _problem(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (batch, N), generator=g)
    unknown = torch.zeros(batch, N, dtype=torch.bool)
    for i in range(batch):
        count = [N, N // 2, 10, 1, 40][i % 5]
        unknown[i, torch.randperm(N, generator=g)[:count]] = True
    return tokens, unknown


def _lab_gamma(name, r):
    return {
        "linear": 1.0 - r,
        "cosine": math.cos(math.pi * r / 2.0),
        "lab-cosine": (math.cos(math.pi * r) + 1.0) / 2.0,
        "square": 1.0 - r * r,
    }[name]


def lab_reference(tokens, unknown, logits_fn, schedule, steps, sweet_spot, choice_temperature):
    """The lab's rule, one image at a time, in plain Python, from the issue's text."""
    out = []
    for b in range(len(tokens)):
        known = [not bool(u) for u in unknown[b]]
        original = [int(x) for x in tokens[b]]
        masked = [not k for k in known]  # still unknown
        current = [MASK if masked[i] else original[i] for i in range(N)]
        prediction = list(current)
        for t in range(sweet_spot):
            logits = logits_fn(torch.tensor([current]))[0].double()
            # log of max softmax (same order; float64 logs avoid ties where softmax rounds to 1)
            probs = torch.log_softmax(logits / choice_temperature, dim=-1)
            confidence = [float(probs[i].max()) for i in range(N)]
            prediction = [original[i] if known[i] else int(probs[i].argmax()) for i in range(N)]
            count = int(_lab_gamma(schedule, t / steps) * N)
            candidates = [i for i in range(N) if masked[i]]
            candidates.sort(key=lambda i: confidence[i])
            remask = set(candidates[:count])
            masked = [i in remask for i in range(N)]
            current = [MASK if masked[i] else prediction[i] for i in range(N)]
        out.append(prediction)
    return torch.tensor(out)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "lab-cosine", "square"])
@pytest.mark.parametrize(
    ("steps", "sweet_spot", "batch"),
    [(1, None, 2), (4, None, 5), (8, 6, 3), (12, None, 1), (16, 10, 5), (20, -2, 4)],
)
def test_lab_rule_equals_reference(schedule, steps, sweet_spot, batch):
    tokens, unknown = _problem(batch, seed=steps)
    fn = LinearLogits(seed=steps)
    options = DecodingOptions(
        rule="lab", schedule=schedule, steps=steps, sweet_spot=sweet_spot, choice_temperature=1.0
    )
    got, _ = decode(tokens, unknown, fn, MASK, options)
    want = lab_reference(
        tokens, unknown, fn, schedule, steps, options.steps_to_run, choice_temperature=1.0
    )
    assert torch.equal(got, want)


@pytest.mark.parametrize("choice_temperature", [0.3, 4.5])
def test_lab_rule_confidence_uses_choice_temperature(choice_temperature):
    tokens, unknown = _problem(5, seed=3)
    fn = LinearLogits(seed=3)
    options = DecodingOptions(
        rule="lab", schedule="linear", steps=8, choice_temperature=choice_temperature
    )
    got, _ = decode(tokens, unknown, fn, MASK, options)
    want = lab_reference(tokens, unknown, fn, "linear", 8, 8, choice_temperature)
    assert torch.equal(got, want)


def test_lab_rule_batch_does_not_matter():
    tokens, unknown = _problem(5, seed=1)
    fn = LinearLogits(seed=1)
    options = DecodingOptions(rule="lab", schedule="lab-cosine", steps=12)
    together, _ = decode(tokens, unknown, fn, MASK, options)
    alone = torch.cat(
        [decode(tokens[i : i + 1], unknown[i : i + 1], fn, MASK, options)[0] for i in range(5)]
    )
    assert torch.equal(together, alone)


def test_lab_rule_decides_nothing_until_the_count_falls_below_the_unknown():
    """Step 0 re-masks int(gamma(0) N) = N tokens: every unknown stays masked."""
    tokens, unknown = _problem(2, seed=0)
    fn = LinearLogits(seed=0)
    _, records = decode(
        tokens, unknown, fn, MASK, rule="lab", schedule="cosine", steps=8, record_steps=True
    )
    assert torch.equal(records[0].unknown, unknown)
    # known tokens are what the model sees at every step
    for seen in fn.inputs:
        assert torch.equal(seen[~unknown], tokens[~unknown])


def test_halton_order_is_a_spread_permutation():
    order = halton_order(256)
    assert sorted(order.tolist()) == list(range(256))
    rows, cols = order[:16] // 16, order[:16] % 16
    assert len(set(rows.tolist())) == 16  # the first 16 reveals cover every row
    assert len(set((rows // 4 * 4 + cols // 4).tolist())) >= 12  # and most 4x4 blocks


@pytest.mark.parametrize("schedule", ["linear", "cosine", "square"])
@pytest.mark.parametrize(("steps", "sweet_spot"), [(1, None), (5, None), (8, 3), (12, -4)])
def test_halton_reveals_every_unknown_once_and_never_touches_known(schedule, steps, sweet_spot):
    tokens, unknown = _problem(5, seed=steps)
    fn = LinearLogits(seed=steps)
    options = DecodingOptions(rule="halton", schedule=schedule, steps=steps, sweet_spot=sweet_spot)
    final, records = decode(tokens, unknown, fn, MASK, options, record_steps=True)
    assert torch.equal(final[~unknown], tokens[~unknown])
    assert (final != MASK).all()
    revealed = torch.zeros_like(unknown, dtype=torch.long)
    before = unknown.clone()
    for record in records:
        newly = before & ~record.unknown
        assert not (record.unknown & ~before).any()  # nothing is masked again
        assert torch.equal(record.tokens[~unknown], tokens[~unknown])
        # a revealed token keeps its value to the end
        assert torch.equal(record.tokens[newly], final[newly])
        revealed += newly.long()
        before = record.unknown
    assert torch.equal(revealed, unknown.long())  # each unknown exactly once
    assert len(records) <= options.steps_to_run


def test_halton_reveals_in_halton_order():
    tokens = torch.zeros(1, N, dtype=torch.long)
    unknown = torch.ones(1, N, dtype=torch.bool)
    _, records = decode(
        tokens, unknown, LinearLogits(), MASK, rule="halton", steps=4, record_steps=True
    )
    order = halton_order(N).tolist()
    first = (~records[0].unknown[0]).nonzero().flatten().tolist()
    assert sorted(first) == sorted(order[: len(first)])


def test_sweet_spot_relative_to_steps():
    assert DecodingOptions(steps=10, sweet_spot=-2).steps_to_run == 8
    assert DecodingOptions(steps=10, sweet_spot=-9).steps_to_run == 1
    for bad in (0, -10, 11):
        with pytest.raises(ValueError, match="sweet_spot"):
            DecodingOptions(steps=10, sweet_spot=bad)
    with pytest.raises(ValueError, match="rule"):
        DecodingOptions(rule="nope")


def _load_benchmark(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("schedule", ["lab-cosine", "cosine", "linear", "square"])
def test_lab_onset_benchmark_agrees_with_the_decoder(schedule):
    onset = _load_benchmark("lab_decision_onset")
    tokens, unknown = _problem(5)
    steps = 12
    options = DecodingOptions(rule="lab", schedule=schedule, steps=steps, temperature=0.0)
    _, records = decode(tokens, unknown, LinearLogits(), MASK, options, record_steps=True)
    firsts = []
    for i in range(len(tokens)):
        start = int(unknown[i].sum())
        first = next((r.step for r in records if int(r.unknown[i].sum()) < start), steps)
        assert first == onset.first_deciding_step(start, schedule, steps, N), (i, start)
        firsts.append(first)
    assert len(set(firsts)) > 1  # holes of other sizes start deciding at other steps
