"""The warm-up / stable / decay schedule: a run that goes on leg after leg, decaying last."""

from __future__ import annotations

import math

import pytest
import torch

from maskgit.checkpoint import load_state
from maskgit.config import ConfigError, TrainingConfig, get_preset
from maskgit.train import lr_at, train_transformer


def test_wsd_holds_the_lr_until_decay_start_then_anneals_to_min_lr():
    cfg = TrainingConfig(lr=1.0, min_lr=0.1, warmup_steps=2, lr_schedule="wsd")
    assert [lr_at(s, 10, cfg) for s in (0, 1)] == [0.5, 1.0]  # the warm-up as before
    assert lr_at(9, 10, cfg) == lr_at(10_000, 10, cfg) == 1.0  # no decay_start: held
    cfg.decay_start = 6
    assert lr_at(5, 10, cfg) == lr_at(6, 10, cfg) == 1.0
    assert lr_at(8, 10, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert lr_at(10, 10, cfg) == pytest.approx(0.1)
    cosine = TrainingConfig(lr=1.0, min_lr=0.1, warmup_steps=2)
    assert lr_at(6, 10, cosine) < 1.0  # the default anneals from the warm-up's end


def test_wsd_values_are_checked():
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainingConfig(lr_schedule="step").validate()
    with pytest.raises(ConfigError, match="decay_start=-1"):
        TrainingConfig(lr_schedule="wsd", decay_start=-1).validate()


def last_lr(run) -> tuple[int, float]:
    state = load_state(run / "latest.state.pt")
    return state["position"]["step"], state["optimizer"]["param_groups"][0]["lr"]


def test_a_wsd_run_continues_at_its_lr_and_decays_in_its_last_leg(tmp_path):
    tokens = torch.randint(0, 16, (64, 4, 4), generator=torch.Generator().manual_seed(0))
    names = [f"img{i}.png" for i in range(64)]
    preset = get_preset("tiny")
    preset.transformer_training.lr_schedule = "wsd"
    preset.transformer_training.epochs = 1
    preset.transformer_training.min_lr = 1e-5
    run = tmp_path / "run"
    train_transformer(preset, tokens, names, run, device="cpu", progress=False)
    step, lr = last_lr(run)
    assert lr == preset.transformer_training.lr  # leg 1 ended at the held lr, ready to go on
    preset.transformer_training.epochs = 3  # the last leg: two more epochs, decaying
    preset.transformer_training.decay_start = step
    train_transformer(preset, tokens, names, run, resume=True, device="cpu", progress=False)
    end, lr = last_lr(run)
    assert end == 3 * step and lr < 0.1 * preset.transformer_training.lr  # annealed
