"""Checkpoints: round trips, config inside the file, clear errors that name the file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from maskgit.checkpoint import (
    CheckpointError,
    atomic_write,
    load_model,
    load_state,
    load_weights,
    read_metadata,
    save_model,
    save_state,
)
from maskgit.config import TokenizerConfig, TransformerConfig, get_preset, to_dict
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer


def _transformer(cfg=None, seed=0):
    torch.manual_seed(seed)
    return BidirectionalTransformer(cfg or get_preset("tiny").transformer).eval()


def _vqgan(cfg=None, seed=0):
    torch.manual_seed(seed)
    return VQGAN(cfg or get_preset("tiny").tokenizer).eval()


def _run(model):
    torch.manual_seed(1)
    if isinstance(model, VQGAN):
        x = torch.rand(2, 3, 16, 16) * 2 - 1
        with torch.no_grad():
            return model(x)[0], model.encode(x)
    tokens = torch.randint(0, model.cfg.codebook_size + 1, (2, model.cfg.num_tokens))
    with torch.no_grad():
        return (model(tokens),)


@pytest.mark.parametrize(("kind", "make"), [("tokenizer", _vqgan), ("transformer", _transformer)])
def test_round_trip_identical_outputs(tmp_path, kind, make):
    model = make()
    path = tmp_path / f"{kind}.safetensors"
    save_model(model, path)
    loaded = load_model(path)  # nothing but the path
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.cfg == model.cfg
    for a, b in zip(_run(model), _run(loaded), strict=True):
        assert torch.equal(a, b)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert load_model(path, expected_kind=kind).cfg == model.cfg


def test_config_travels_in_the_file(tmp_path):
    cfg = dataclasses.replace(get_preset("tiny").transformer, depth=3, norm="post", dim=48, heads=3)
    model = _transformer(cfg)
    path = tmp_path / "t.safetensors"
    save_model(model, path, extra={"note": "hello"})
    metadata = read_metadata(path)
    assert metadata["kind"] == "transformer"
    assert json.loads(metadata["config"]) == to_dict(cfg)
    assert metadata["note"] == "hello"
    loaded = load_model(path)
    assert isinstance(loaded.cfg, TransformerConfig)
    assert loaded.cfg == cfg and len(loaded.blocks) == 3


def test_tokenizer_config_tuple_survives(tmp_path):
    model = _vqgan()
    path = tmp_path / "v.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert isinstance(loaded.cfg, TokenizerConfig)
    assert loaded.cfg.channel_mult == (1, 2, 2)  # a tuple again, not a list


def test_fp16_save_loads_as_fp32(tmp_path):
    model = _transformer()
    path = tmp_path / "half.safetensors"
    save_model(model, path, dtype=torch.float16)
    stored = load_file(str(path))
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    loaded = load_model(path)
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == torch.float32, name
        torch.testing.assert_close(tensor, model.state_dict()[name], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(_run(loaded)[0], _run(model)[0], atol=5e-2, rtol=5e-2)
    assert path.stat().st_size < 0.6 * _fp32_size(model, tmp_path)


def _fp32_size(model, tmp_path):
    path = tmp_path / "full.safetensors"
    save_model(model, path)
    return path.stat().st_size


def test_vqgan_buffer_int_kept(tmp_path):
    model = _vqgan()
    model.quantizer.steps_unused.fill_(7)
    path = tmp_path / "v.safetensors"
    save_model(model, path, dtype=torch.float16)
    loaded = load_model(path)
    assert loaded.quantizer.steps_unused.dtype == torch.long
    assert loaded.quantizer.steps_unused.tolist() == [7] * 16


def _assert_error_names(path, fn, match=None):
    with pytest.raises(CheckpointError) as info:
        fn()
    assert str(path) in str(info.value)
    if match:
        assert match in str(info.value)
    return str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    _assert_error_names(path, lambda: load_model(path), "not found")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _assert_error_names(path, lambda: load_model(path), "empty")


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.01])
def test_truncated_file(tmp_path, fraction):
    full = tmp_path / "full.safetensors"
    save_model(_transformer(), full)
    data = full.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: int(len(data) * fraction)])
    _assert_error_names(path, lambda: load_model(path))


def test_garbage_and_foreign_safetensors(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(os.urandom(1000))
    _assert_error_names(path, lambda: load_model(path))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))  # no maskgit metadata
    _assert_error_names(foreign, lambda: load_model(foreign), "metadata")


def test_file_of_another_kind(tmp_path):
    path = tmp_path / "tok.safetensors"
    save_model(_vqgan(), path)
    message = _assert_error_names(path, lambda: load_model(path, expected_kind="transformer"))
    assert "tokenizer" in message and "transformer" in message


def test_invalid_config_in_file(tmp_path):
    model = _transformer()
    path = tmp_path / "bad.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = to_dict(model.cfg)
    config["heads"] = 5  # dim 32 is not divisible by 5
    save_file(state, str(path), metadata={"kind": "transformer", "config": json.dumps(config)})
    _assert_error_names(path, lambda: load_model(path), "config")
    config = {**to_dict(model.cfg), "bogus": 1}
    save_file(state, str(path), metadata={"kind": "transformer", "config": json.dumps(config)})
    _assert_error_names(path, lambda: load_model(path), "bogus")


def test_weights_not_matching_their_config(tmp_path):
    """The config in the metadata says one shape, the tensors another."""
    model = _transformer()
    path = tmp_path / "mismatch.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = {**to_dict(model.cfg), "dim": 64, "mlp_dim": 128}
    save_file(state, str(path), metadata={"kind": "transformer", "config": json.dumps(config)})
    _assert_error_names(path, lambda: load_model(path), "shape")


def test_other_preset_against_different_config(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(_transformer(), path)
    state = load_file(str(path))
    wider = dataclasses.replace(get_preset("tiny").transformer, dim=64, heads=4, mlp_dim=128)
    _assert_error_names(path, lambda: load_weights(_transformer(wider), state, path), "shape")
    deeper = dataclasses.replace(get_preset("tiny").transformer, depth=3)
    _assert_error_names(path, lambda: load_weights(_transformer(deeper), state, path), "missing")
    shallower = dataclasses.replace(get_preset("tiny").transformer, depth=1)
    _assert_error_names(
        path, lambda: load_weights(_transformer(shallower), state, path), "unexpected"
    )
    # A checkpoint of another preset against that preset's config.
    other = BidirectionalTransformer(get_preset("emoji-demo").transformer)
    _assert_error_names(path, lambda: load_weights(other, state, path), "do not match")
    # A tokenizer state against a transformer.
    tok_path = tmp_path / "tok.safetensors"
    save_model(_vqgan(), tok_path)
    tok_state = load_file(str(tok_path))
    _assert_error_names(tok_path, lambda: load_weights(_transformer(), tok_state, tok_path))


def test_save_model_rejects_other_modules(tmp_path):
    with pytest.raises(TypeError):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_save_model_overwrites_and_creates_dirs(tmp_path):
    path = tmp_path / "a" / "b" / "m.safetensors"
    save_model(_transformer(seed=0), path)
    save_model(_transformer(seed=1), path)
    loaded = load_model(path)
    assert torch.equal(loaded.logit_bias, _transformer(seed=1).logit_bias)
    assert torch.equal(loaded.token_embedding.weight, _transformer(seed=1).token_embedding.weight)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]


# --------------------------------------------------------------------------- atomic_write


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"hello"))
    assert target.read_bytes() == b"hello"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def writer(tmp):
        tmp.write_bytes(b"half-written")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_failure_without_old_file(tmp_path):
    target = tmp_path / "new.bin"

    def writer(tmp):
        raise OSError("nope")

    with pytest.raises(OSError):
        atomic_write(target, writer)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- training state


def test_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "step": 12,
        "epoch": 3,
        "name": "run",
        "losses": [1.5, 0.5],
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "nested": {"a": torch.arange(3)},
    }
    path = tmp_path / "train.state.pt"
    save_state(state, path)
    loaded = load_state(path)
    assert loaded["step"] == 12 and loaded["epoch"] == 3 and loaded["name"] == "run"
    assert loaded["losses"] == [1.5, 0.5]
    assert torch.equal(loaded["rng"], state["rng"])
    assert torch.equal(loaded["nested"]["a"], torch.arange(3))
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert [p.name for p in tmp_path.iterdir()] == ["train.state.pt"]


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", os.urandom(256)])
def test_load_state_garbage(tmp_path, content):
    path = tmp_path / "bad.state.pt"
    path.write_bytes(content)
    _assert_error_names(path, lambda: load_state(path))


def test_load_state_missing_and_truncated(tmp_path):
    path = tmp_path / "missing.state.pt"
    _assert_error_names(path, lambda: load_state(path), "not found")
    good = tmp_path / "good.state.pt"
    save_state({"w": torch.randn(100)}, good)
    cut = tmp_path / "cut.state.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _assert_error_names(cut, lambda: load_state(cut))


def test_load_state_refuses_code(tmp_path):
    """weights_only: a pickle that would build an arbitrary object is refused."""
    path = tmp_path / "evil.state.pt"
    torch.save({"obj": argparse.Namespace(x=1)}, path)
    _assert_error_names(path, lambda: load_state(path))


def test_tokenizer_of_another_preset(tmp_path):
    path = tmp_path / "tiny-tok.safetensors"
    save_model(_vqgan(), path)
    state = load_file(str(path))
    other = VQGAN(get_preset("emoji-demo").tokenizer)
    _assert_error_names(path, lambda: load_weights(other, state, path))
