"""Property tests (hypothesis): schedules, training masks, pixel -> token masks, configs,
decoding invariants and fuzzed YAML configs / --set overrides."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskgit.config import (
    ConfigError,
    Preset,
    TokenizerConfig,
    TrainingConfig,
    TransformerConfig,
    from_dict,
    load_config,
    to_dict,
)
from maskgit.decoding import decode, tokens_to_keep_masked
from maskgit.masking import pixel_to_token_mask, random_token_mask
from maskgit.schedule import gamma

SCHEDULES = ["linear", "cosine", "lab-cosine", "square", "power-2", "power-3.5", "log", "exp"]
FAST = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@FAST
@given(r1=unit, r2=unit, name=st.sampled_from(SCHEDULES), n=st.integers(2, 1024))
def test_schedule_monotone(r1, r2, name, n):
    lo, hi = min(r1, r2), max(r1, r2)
    g_lo, g_hi = gamma(name, lo, n).item(), gamma(name, hi, n).item()
    assert g_lo >= g_hi
    assert 0.0 <= g_hi <= g_lo <= 1.0


@FAST
@given(
    batch=st.integers(1, 8),
    n=st.integers(1, 64),
    name=st.sampled_from(SCHEDULES),
    seed=st.integers(0, 2**31 - 1),
)
def test_training_mask_counts(batch, n, name, seed):
    mask = random_token_mask(batch, n, name, generator=torch.Generator().manual_seed(seed))
    assert mask.shape == (batch, n) and mask.dtype == torch.bool
    r = torch.rand(batch, generator=torch.Generator().manual_seed(seed))
    for b in range(batch):
        want = min(n, max(1, math.ceil(gamma(name, r[b].item(), n).item() * n)))
        assert int(mask[b].sum()) == want


@FAST
@given(n=st.integers(2, 32), seed=st.integers(0, 2**31 - 1))
def test_training_mask_positions_are_a_permutation_prefix(n, seed):
    """Positions come from a random permutation: different seeds give different position sets."""
    masks = random_token_mask(64, n, "linear", generator=torch.Generator().manual_seed(seed))
    # With 64 images, the masked position sets are not all the same prefix 0..k-1.
    prefixes = [bool(m[: int(m.sum())].all()) for m in masks]
    assert not all(prefixes)


@st.composite
def pixel_masks(draw):
    ds = draw(st.sampled_from([1, 2, 4, 8]))
    h = draw(st.integers(1, 4)) * ds
    w = draw(st.integers(1, 4)) * ds
    batch = draw(st.integers(1, 3))
    density = draw(st.sampled_from([0.0, 0.02, 0.2, 0.8, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    mask = torch.rand(batch, h, w, generator=torch.Generator().manual_seed(seed)) < density
    return mask, ds


@FAST
@given(case=pixel_masks())
def test_pixel_to_token_any_repaint_pixel(case):
    pixel, ds = case
    tokens = pixel_to_token_mask(pixel, ds)
    b, h, w = pixel.shape
    assert tokens.shape == (b, h // ds, w // ds)
    for i in range(b):
        for y in range(h // ds):
            for x in range(w // ds):
                patch = pixel[i, y * ds : (y + 1) * ds, x * ds : (x + 1) * ds]
                assert bool(tokens[i, y, x]) == bool(patch.any())


# --------------------------------------------------------------------------- configs

small_int = st.integers(1, 512)
prob = st.floats(0.0, 0.9, allow_nan=False)
names = st.text(min_size=0, max_size=10)

tokenizer_cfgs = st.builds(
    TokenizerConfig,
    image_size=small_int,
    base_channels=small_int,
    channel_mult=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    num_res_blocks=st.integers(0, 3),
    latent_dim=small_int,
    codebook_size=small_int,
    code_dim=small_int,
    l2_normalize=st.booleans(),
    beta=prob,
    dead_code_steps=st.integers(0, 1000),
)
transformer_cfgs = st.builds(
    TransformerConfig,
    codebook_size=small_int,
    num_tokens=small_int,
    dim=small_int,
    depth=small_int,
    heads=small_int,
    mlp_dim=small_int,
    dropout=prob,
    attn_dropout=prob,
    norm=st.sampled_from(["pre", "post"]),
    attention=st.sampled_from(["fused", "manual"]),
)
training_cfgs = st.builds(
    TrainingConfig,
    epochs=small_int,
    lr=st.floats(1e-8, 1.0),
    betas=st.tuples(prob, prob),
    mask_schedule=st.sampled_from(SCHEDULES),
    compile=st.booleans(),
    perceptual_weights=names,
)
presets = st.builds(
    Preset,
    tokenizer=tokenizer_cfgs,
    transformer=transformer_cfgs,
    tokenizer_training=training_cfgs,
    transformer_training=training_cfgs,
)


@FAST
@given(cfg=st.one_of(tokenizer_cfgs, transformer_cfgs, training_cfgs, presets))
def test_config_round_trip(cfg):
    data = to_dict(cfg)
    assert from_dict(type(cfg), data) == cfg


@FAST
@given(
    cls=st.sampled_from([TokenizerConfig, TransformerConfig, TrainingConfig, Preset]),
    key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
)
def test_config_unknown_keys_rejected(cls, key):
    data = to_dict(cls())
    if key in data:
        return
    data[key] = 1
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data)
    assert repr(key) in str(info.value)


# --------------------------------------------------------------------------- decoding

FUZZ = settings(max_examples=40, deadline=None, database=None)


@st.composite
def decode_problems(draw):
    """A tiny random model (logits = onehot(tokens) @ W), tokens, unknown masks (empty, full
    or random per image), steps 1..10, a sweet spot <= steps and random sampling options."""
    batch = draw(st.integers(1, 3))
    n = draw(st.integers(1, 12))
    k = draw(st.integers(2, 6))
    masks = st.one_of(
        st.just([False] * n), st.just([True] * n), st.lists(st.booleans(), min_size=n, max_size=n)
    )
    unknown = torch.tensor([draw(masks) for _ in range(batch)], dtype=torch.bool)
    steps = draw(st.integers(1, 10))
    sweet_spot = draw(st.one_of(st.none(), st.integers(1, steps)))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, k, (batch, n), generator=g)
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    weight = torch.randn(n * (k + 1), n * k, generator=g) * scale
    options = {
        "schedule": draw(st.sampled_from(SCHEDULES)),
        "temperature": draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        "choice_temperature": draw(st.sampled_from([0.0, 1.0, 4.5])),
        "top_k": draw(st.one_of(st.none(), st.integers(1, k))),
    }
    return tokens, unknown, weight, k, steps, sweet_spot, seed, options


@FUZZ
@given(problem=decode_problems())
def test_decoding_invariants(problem):
    """Known tokens fixed, no [MASK] left, each step keeps exactly `tokens_to_keep_masked`
    unknown, revealed tokens never change again, and decoding ends within S steps."""
    tokens, unknown, weight, k, steps, sweet_spot, seed, options = problem
    batch, n = tokens.shape
    seen = []  # the [MASK] positions of each input the model gets

    def logits_fn(current):
        assert current.shape == (batch, n) and int(current.min()) >= 0 and int(current.max()) <= k
        seen.append((current == k).clone())
        onehot = torch.nn.functional.one_hot(current, k + 1).float().flatten(1)
        return (onehot @ weight).reshape(batch, n, k)

    gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    final, records = decode(
        tokens,
        unknown,
        logits_fn,
        k,
        steps=steps,
        sweet_spot=sweet_spot,
        generator=gens,
        record_steps=True,
        **options,
    )
    planned = sweet_spot or steps
    assert final.shape == (batch, n) and bool((final >= 0).all()) and bool((final < k).all())
    assert torch.equal(final[~unknown], tokens[~unknown])  # known tokens never change
    assert len(records) == (planned if unknown.any() else 0)  # exactly S steps, or none
    assert len(seen) == len(records)
    at_start, before = unknown.sum(1), unknown
    for record, mask_seen in zip(records, seen, strict=True):
        assert torch.equal(mask_seen, before)  # [MASK] exactly at the still-unknown positions
        keep = tokens_to_keep_masked(
            at_start, before.sum(1), record.step, steps, planned - 1, options["schedule"], n
        )
        assert torch.equal(record.unknown.sum(1), keep)
        assert not bool((record.unknown & ~before).any())  # a revealed token stays revealed
        revealed = ~record.unknown
        assert torch.equal(record.tokens[revealed], final[revealed])  # ... and never changes
        assert bool((record.tokens[record.unknown] == k).all())
        before = record.unknown
    if records:
        assert not bool(records[-1].unknown.any())


# --------------------------------------------------------------------------- YAML overrides

SECTIONS = ["tokenizer", "transformer", "tokenizer_training", "transformer_training"]
KNOWN = {section: set(keys) for section, keys in to_dict(Preset()).items()}
yaml_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(alphabet="abcxyz019 ._-[]{}:,#'\"", max_size=8)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet="abc", max_size=3), inner, max_size=2)
    ),
    max_leaves=5,
)
config_keys = st.one_of(
    st.sampled_from(sorted(set().union(*KNOWN.values()))),  # known in some section
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
)
sections = st.one_of(st.sampled_from(SECTIONS), st.sampled_from(["training", "model", "x"]))


@FUZZ
@given(section=sections, key=config_keys, value=yaml_values)
def test_set_overrides_fuzzed(section, key, value):
    """`--set section.key=<random YAML>`: an unknown section or key is always rejected naming
    it; otherwise the value is taken as given or refused, always as a one-line ConfigError."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("...").strip()  # safe_dump ends a bare scalar with "..."
    known = section in KNOWN and key in KNOWN[section]
    try:
        preset = load_config("tiny", [f"{section}.{key}={text}"])
    except ConfigError as exc:
        assert "\n" not in str(exc)
        if not known:
            assert repr(key) in str(exc) or repr(f"{section}.{key}") in str(exc)
        return
    assert known, f"unknown key {section}.{key} accepted"
    got = to_dict(preset)[section][key]
    assert got == value or float(got) == float(value)  # ints/strings read as floats


@FUZZ
@given(
    content=st.dictionaries(
        sections,
        st.dictionaries(config_keys | st.integers(0, 3), yaml_values, max_size=3),  # YAML: 1: x
        max_size=2,
    ),
    garbage=st.sampled_from(["", "\n: : [", "\n\t- x", "\npreset: [1]", "\npreset: nope"]),
)
def test_yaml_config_files_fuzzed(content, garbage):
    """Random YAML config files: an unknown section or key is always rejected, any problem is
    a one-line ConfigError naming the file, never another exception."""
    text = yaml.safe_dump({"preset": "tiny", **content}) + garbage
    unknown = [
        f"{section}.{key}"
        for section, keys in content.items()
        for key in (keys if section in KNOWN else ["*"])
        if section not in KNOWN or key not in KNOWN[section]
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            return
    assert not unknown, f"unknown keys accepted: {unknown}\n{text}"
    assert garbage == "", f"broken YAML accepted:\n{text}"
