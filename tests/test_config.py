"""Presets, YAML files and --set overrides; errors name the key and the valid keys."""

from __future__ import annotations

import dataclasses

import pytest

from maskgit.config import (
    PRESETS,
    ConfigError,
    Preset,
    TokenizerConfig,
    TrainingConfig,
    TransformerConfig,
    apply_overrides,
    from_dict,
    get_preset,
    load_config,
    to_dict,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    preset = get_preset(name)
    assert isinstance(preset, Preset)
    preset.validate()
    assert preset.transformer.codebook_size == preset.tokenizer.codebook_size
    assert preset.transformer.num_tokens == preset.tokenizer.token_grid**2


def test_expected_presets_exist():
    assert {"lab-64", "emoji-demo", "cpu-64", "tiny"} <= set(PRESETS)


def test_get_preset_returns_fresh_copies():
    a = get_preset("tiny")
    a.transformer.depth = 99
    assert get_preset("tiny").transformer.depth == 2


def test_lab64_preset_matches_the_lab():
    p = get_preset("lab-64")
    assert p.tokenizer.image_size == 64 and p.tokenizer.token_grid == 16
    assert p.tokenizer.downsample == 4
    assert p.tokenizer.codebook_size == 1024 and p.tokenizer.latent_dim == 256
    assert p.tokenizer.beta == pytest.approx(0.25)


def test_tiny_preset_shape():
    p = get_preset("tiny")
    assert p.tokenizer.image_size == 16 and p.tokenizer.token_grid == 4
    assert p.transformer.num_tokens == 16 and p.transformer.codebook_size == 16
    assert p.transformer.mask_token_id == 16


def test_unknown_preset_lists_names():
    with pytest.raises(ConfigError) as info:
        get_preset("huge")
    for name in PRESETS:
        assert name in str(info.value)
    assert "huge" in str(info.value)


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_base_preset_and_overrides(tmp_path):
    path = _write(
        tmp_path,
        "preset: tiny\n"
        "transformer:\n  depth: 3\n  norm: post\n"
        "transformer_training:\n  lr: 0.002\n  betas: [0.8, 0.9]\n"
        "tokenizer:\n  channel_mult: [1, 2, 2]\n",
    )
    p = load_config(path)
    tiny = get_preset("tiny")
    assert p.transformer.depth == 3 and p.transformer.norm == "post"
    assert p.transformer.dim == tiny.transformer.dim  # rest comes from the base preset
    assert p.transformer_training.lr == pytest.approx(0.002)
    assert p.transformer_training.betas == (0.8, 0.9)
    assert p.tokenizer.channel_mult == (1, 2, 2)
    assert p.tokenizer_training == tiny.tokenizer_training


def test_yaml_scientific_notation_float(tmp_path):
    """PyYAML reads `1e-4` as a string; a float field still accepts it."""
    path = _write(tmp_path, "preset: tiny\ntransformer_training:\n  lr: 1e-4\n  min_lr: 2E-6\n")
    p = load_config(path)
    assert p.transformer_training.lr == pytest.approx(1e-4)
    assert p.transformer_training.min_lr == pytest.approx(2e-6)


def test_yaml_without_preset_uses_default_base(tmp_path):
    path = _write(tmp_path, "transformer:\n  depth: 2\n")
    p = load_config(path)
    assert p.transformer.depth == 2
    assert p.transformer.dim == get_preset("emoji-demo").transformer.dim


def test_empty_yaml_is_the_default_preset(tmp_path):
    assert load_config(_write(tmp_path, "")) == get_preset("emoji-demo")


def test_load_config_preset_name():
    assert load_config("tiny") == get_preset("tiny")
    p = load_config("tiny", ["transformer.depth=4"])
    assert p.transformer.depth == 4


def test_yaml_unknown_key_names_key_and_valid_keys(tmp_path):
    path = _write(tmp_path, "preset: tiny\ntransformer:\n  layers: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "layers" in message
    assert str(path) in message
    for valid in ("depth", "heads", "mlp_dim", "attn_dropout"):
        assert valid in message


def test_yaml_unknown_section(tmp_path):
    path = _write(tmp_path, "preset: tiny\ntraining:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="transformer_training"):
        load_config(path)


def test_yaml_unknown_base_preset(tmp_path):
    with pytest.raises(ConfigError, match="tiny"):
        load_config(_write(tmp_path, "preset: nope\n"))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('transformer:\n  depth: "abc"\n', "transformer.depth"),
        ("transformer:\n  depth: 2.5\n", "transformer.depth"),
        ("transformer:\n  depth: true\n", "transformer.depth"),
        ("tokenizer:\n  l2_normalize: 1\n", "tokenizer.l2_normalize"),
        ("transformer_training:\n  lr: fast\n", "transformer_training.lr"),
        ("transformer_training:\n  betas: [0.9]\n", "transformer_training.betas"),
        ("transformer:\n  norm: 3\n", "transformer.norm"),
        ("tokenizer:\n  channel_mult: 2\n", "tokenizer.channel_mult"),
    ],
)
def test_yaml_wrong_type(tmp_path, text, key):
    path = _write(tmp_path, "preset: tiny\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("transformer:\n  heads: 5\n", "divisible"),
        ("transformer:\n  norm: middle\n", "norm"),
        ("transformer:\n  num_tokens: 32\n", "num_tokens"),
        ("transformer:\n  codebook_size: 32\n", "codebook_size"),
        ("transformer_training:\n  rec_loss: l3\n", "rec_loss"),
        ("tokenizer:\n  image_size: 18\n", "divisible"),
        ("transformer:\n  depth: 0\n", "depth"),
        ("transformer_training:\n  region_mask_fraction: 1.5\n", "region_mask_fraction"),
    ],
)
def test_yaml_invalid_values(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, "preset: tiny\n" + text))


def test_yaml_not_a_mapping_or_invalid(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="YAML"):
        load_config(_write(tmp_path, "transformer: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "transformer: 3\n"))
    with pytest.raises(ConfigError, match="nor an existing file"):
        load_config(tmp_path / "missing.yaml")


def test_apply_overrides():
    p = apply_overrides(
        get_preset("tiny"),
        [
            "transformer.depth=3",
            "transformer.norm=post",
            "transformer_training.lr=1e-4",
            "transformer_training.mask_schedule=lab-cosine",
            "tokenizer.l2_normalize=true",
            "tokenizer.channel_mult=[1, 2, 2]",
            "transformer_training.betas=[0.9, 0.95]",
        ],
    )
    assert p.transformer.depth == 3 and p.transformer.norm == "post"
    assert p.transformer_training.lr == pytest.approx(1e-4)
    assert p.transformer_training.mask_schedule == "lab-cosine"
    assert p.tokenizer.l2_normalize is True
    assert p.transformer_training.betas == (0.9, 0.95)
    assert apply_overrides(get_preset("tiny"), []) == get_preset("tiny")


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("transformer.layers=3", "layers"),
        ("training.lr=0.1", "section"),
        ("depth=3", "section"),
        ("transformer.depth", "key=value"),
        ("transformer.depth=abc", "transformer.depth"),
        ("transformer.heads=5", "divisible"),
        ("a.b.c=1", "section"),
    ],
)
def test_apply_overrides_rejects_bad(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(get_preset("tiny"), [override])


def test_unknown_key_message_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        apply_overrides(get_preset("tiny"), ["transformer.layers=3"])
    message = str(info.value)
    for f in dataclasses.fields(TransformerConfig):
        assert f"transformer.{f.name}" in message


@pytest.mark.parametrize("cls", [TokenizerConfig, TransformerConfig, TrainingConfig, Preset])
def test_to_dict_from_dict_round_trip(cls):
    cfg = cls()
    assert from_dict(cls, to_dict(cfg)) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trip(name):
    preset = get_preset(name)
    data = to_dict(preset)
    assert isinstance(data["tokenizer"]["channel_mult"], list)
    assert from_dict(Preset, data) == preset


def test_from_dict_rejects_unknown_and_non_mapping():
    with pytest.raises(ConfigError, match="'bogus'"):
        from_dict(TransformerConfig, {"bogus": 1})
    with pytest.raises(ConfigError, match="mapping"):
        from_dict(TransformerConfig, [1, 2])
    assert from_dict(TransformerConfig, None) == TransformerConfig()


def test_int_accepted_for_float_field():
    cfg = from_dict(TrainingConfig, {"lr": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_imported_layout_options_are_checked():
    from maskgit.config import ConfigError, TokenizerConfig, TransformerConfig

    ok = TokenizerConfig(
        image_size=16,
        base_channels=8,
        encoder_layers=("res:8", "down", "attn"),
        decoder_layers=("res:8", "up"),
    )
    ok.validate()
    assert ok.downsample == 2 and ok.token_grid == 8
    bad = [
        {"encoder_layers": ("res:8", "sideways"), "decoder_layers": ("res:8",)},
        {"encoder_layers": ("res:8", "down"), "decoder_layers": ("res:8",)},  # no "up"
        {"encoder_layers": ("res:8",)},  # no decoder list
        {"downsample_conv": "k5"},
        {"encoder_out_kernel": 2},
        {"image_mean": (0.5, 0.5), "image_std": (0.5, 0.5)},  # 3 channels
        {"image_mean": (0.5, 0.5, 0.5)},  # no std
    ]
    for options in bad:
        with pytest.raises(ConfigError):
            TokenizerConfig(image_size=16, base_channels=8, **options).validate()
    for options in ({"logit_bias": "per-token"}, {"layer_norm_eps": 0.0}):
        with pytest.raises(ConfigError):
            TransformerConfig(**options).validate()
