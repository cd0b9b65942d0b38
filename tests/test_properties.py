"""Property tests (hypothesis): schedules, training masks, pixel -> token masks, configs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskgit.config import (
    ConfigError,
    Preset,
    TokenizerConfig,
    TrainingConfig,
    TransformerConfig,
    from_dict,
    to_dict,
)
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
