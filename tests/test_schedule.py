"""Mask schedules gamma(r): exact ends, monotone, in [0, 1], the named curves."""

from __future__ import annotations

import math

import pytest
import torch

from maskgit.schedule import SCHEDULE_NAMES, gamma, validate_schedule

ALL_SCHEDULES = ["linear", "cosine", "lab-cosine", "square", "power-2", "power-3.5", "log", "exp"]


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_ends_are_exact(name):
    assert gamma(name, 0.0).item() == 1.0
    assert gamma(name, 1.0).item() == 0.0
    assert gamma(name, torch.tensor([0.0, 1.0])).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("name", ALL_SCHEDULES)
@pytest.mark.parametrize("num_tokens", [16, 256])
def test_non_increasing_and_in_unit_interval(name, num_tokens):
    r = torch.linspace(0.0, 1.0, 10001, dtype=torch.float64)
    g = gamma(name, r, num_tokens)
    assert g.shape == r.shape
    assert g.dtype == torch.float64
    assert torch.all(g >= 0.0) and torch.all(g <= 1.0)
    assert torch.all(g[1:] <= g[:-1]), "schedule increases somewhere"
    # Not constant: it really goes from 1 to 0.
    assert g[len(g) // 2] < 1.0


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_out_of_range_r_is_clamped(name):
    assert gamma(name, -0.5).item() == 1.0
    assert gamma(name, 1.5).item() == 0.0


@pytest.mark.parametrize("r", [0.1, 0.25, 0.5, 0.7, 0.9])
def test_named_curves(r):
    assert gamma("linear", r).item() == pytest.approx(1 - r, abs=1e-12)
    assert gamma("cosine", r).item() == pytest.approx(math.cos(math.pi * r / 2), abs=1e-12)
    assert gamma("lab-cosine", r).item() == pytest.approx(
        (math.cos(math.pi * r) + 1) / 2, abs=1e-12
    )
    assert gamma("square", r).item() == pytest.approx(1 - r**2, abs=1e-12)
    assert gamma("power-2", r).item() == pytest.approx(1 - r**2, abs=1e-12)
    assert gamma("power-3.5", r).item() == pytest.approx(1 - r**3.5, abs=1e-12)
    n = 256
    assert gamma("log", r, n).item() == pytest.approx(
        min(1.0, max(0.0, -math.log2(r) / math.log2(n))), abs=1e-12
    )
    assert gamma("exp", r, n).item() == pytest.approx(
        (1 - 2 ** (-math.log2(n) * (1 - r))) / (1 - 1 / n), abs=1e-12
    )


def test_cosine_and_lab_cosine_are_different_curves():
    for r in (0.25, 0.5, 0.75):
        assert abs(gamma("cosine", r).item() - gamma("lab-cosine", r).item()) > 0.05
    # cos(pi/4) ~ 0.707 vs (cos(pi/2)+1)/2 = 0.5 at the midpoint.
    assert gamma("lab-cosine", 0.5).item() == pytest.approx(0.5)
    assert gamma("cosine", 0.5).item() == pytest.approx(math.sqrt(0.5))


def test_log_and_exp_depend_on_token_count():
    assert gamma("log", 0.3, 16).item() != pytest.approx(gamma("log", 0.3, 256).item())
    assert gamma("exp", 0.3, 16).item() != pytest.approx(gamma("exp", 0.3, 256).item())


@pytest.mark.parametrize(
    "bad", ["cosin", "power-K", "power-0", "power--1", "power-x", "", "Linear"]
)
def test_unknown_name_lists_valid_names(bad):
    with pytest.raises(ValueError) as info:
        gamma(bad, 0.5)
    message = str(info.value)
    for name in SCHEDULE_NAMES:
        assert name in message
    with pytest.raises(ValueError):
        validate_schedule(bad)


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_validate_returns_name(name):
    assert validate_schedule(name) == name
