"""Configuration dataclasses, presets, YAML files and `key=value` overrides.

One dataclass per model (TokenizerConfig, TransformerConfig) travels inside every checkpoint;
TrainingConfig describes one training loop. An unknown key or a value of the wrong type is an
error that names the key and the valid keys. This module imports nothing from the package.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


@dataclass
class TokenizerConfig:
    """VQGAN tokenizer: conv encoder -> vector quantiser -> conv decoder."""

    image_size: int = 64
    in_channels: int = 3
    base_channels: int = 64
    # One entry per resolution; the encoder halves the resolution between entries, so the
    # downsample factor is 2 ** (len(channel_mult) - 1).
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    latent_dim: int = 256  # encoder output channels
    codebook_size: int = 1024
    code_dim: int = 256  # quantiser lookup dimension (low-dim lookup when < latent_dim)
    l2_normalize: bool = False  # cosine-similarity lookup on the unit sphere
    beta: float = 0.25  # commitment weight, on the encoder side
    dead_code_steps: int = 0  # re-seed a code unused for this many training steps (0 = off)
    # Imported models (maskgit import-lab; the defaults are maskgit's own layout).
    # An explicit layer list between the input conv and the output norm, overriding
    # base_channels / channel_mult / num_res_blocks: "res:W" (residual block to width W),
    # "attn" (single-head spatial self-attention), "down" (encoder) or "up" (decoder).
    # The encoder's input conv has base_channels outputs; the decoder's has the width of the
    # first "res:W" of decoder_layers.
    encoder_layers: tuple[str, ...] = ()
    decoder_layers: tuple[str, ...] = ()
    downsample_conv: str = "k4"  # "k4": conv 4x4 stride 2 pad 1; "pad-k3": pad right/bottom, 3x3
    encoder_out_kernel: int = 1  # kernel of the encoder's last conv (to latent_dim)
    decoder_out_act: bool = True  # SiLU between the decoder's last norm and last conv
    # Per-channel normalisation the weights were trained with: the model sees
    # ((x + 1) / 2 - mean) / std for images x in [-1, 1]; empty = x itself.
    image_mean: tuple[float, ...] = ()
    image_std: tuple[float, ...] = ()

    @property
    def downsample(self) -> int:
        if self.encoder_layers:
            return 2 ** sum(1 for layer in self.encoder_layers if layer == "down")
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def token_grid(self) -> int:
        return self.image_size // self.downsample

    def validate(self) -> None:
        if not self.channel_mult:
            raise ConfigError("tokenizer.channel_mult: expected at least one entry")
        if self.image_size % self.downsample:
            raise ConfigError(
                f"tokenizer.image_size={self.image_size} is not divisible by the downsample "
                f"factor {self.downsample} (from channel_mult={list(self.channel_mult)})"
            )
        _positive(self, "image_size", "base_channels", "latent_dim", "codebook_size", "code_dim")
        _choice(self, "downsample_conv", ("k4", "pad-k3"))
        if self.encoder_out_kernel not in (1, 3):
            raise ConfigError(f"encoder_out_kernel={self.encoder_out_kernel}: expected 1 or 3")
        _layer_list(self, "encoder_layers", "down")
        _layer_list(self, "decoder_layers", "up")
        ups = sum(1 for layer in self.decoder_layers if layer == "up")
        if bool(self.encoder_layers) != bool(self.decoder_layers) or (
            self.encoder_layers and 2**ups != self.downsample
        ):
            raise ConfigError(
                "tokenizer.encoder_layers / decoder_layers: give both, with as many 'up' as 'down'"
            )
        if self.decoder_layers and not any(x.startswith("res:") for x in self.decoder_layers):
            raise ConfigError("tokenizer.decoder_layers: expected at least one 'res:W' entry")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if values and len(values) != self.in_channels:
                raise ConfigError(
                    f"tokenizer.{name}: expected {self.in_channels} values (one per channel), "
                    f"got {len(values)}"
                )
        if bool(self.image_mean) != bool(self.image_std) or any(v <= 0 for v in self.image_std):
            raise ConfigError("tokenizer.image_mean / image_std: give both, std > 0")


def _layer_list(cfg: Any, name: str, resample: str) -> None:
    for entry in getattr(cfg, name):
        width = entry[4:] if entry.startswith("res:") else ""
        if entry not in ("attn", resample) and not (width.isdigit() and int(width) > 0):
            raise ConfigError(
                f"tokenizer.{name}: {entry!r} is not a layer; expected 'res:WIDTH', 'attn' "
                f"or {resample!r}"
            )


@dataclass
class TransformerConfig:
    """Bidirectional transformer over a grid of tokens; id `codebook_size` is [MASK]."""

    codebook_size: int = 1024
    num_tokens: int = 256
    dim: int = 768
    depth: int = 15
    heads: int = 16
    mlp_dim: int = 1536
    dropout: float = 0.1
    attn_dropout: float = 0.1
    norm: str = "pre"  # "pre" (default) or "post" (the course lab)
    attention: str = "fused"  # "fused" (F.scaled_dot_product_attention) or "manual"
    layer_norm_eps: float = 1e-5  # every LayerNorm (the course lab: 1e-12)
    # "shared": one output bias per code; "per-position": one per token position and code
    # (the course lab's (num_tokens, codes) bias)
    logit_bias: str = "shared"

    @property
    def mask_token_id(self) -> int:
        return self.codebook_size

    def validate(self) -> None:
        _positive(self, "codebook_size", "num_tokens", "dim", "depth", "heads", "mlp_dim")
        if self.dim % self.heads:
            raise ConfigError(f"transformer.dim={self.dim} is not divisible by heads={self.heads}")
        _choice(self, "norm", ("pre", "post"))
        _choice(self, "attention", ("fused", "manual"))
        _choice(self, "logit_bias", ("shared", "per-position"))
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"transformer.layer_norm_eps={self.layer_norm_eps}: expected > 0")


@dataclass
class TrainingConfig:
    """One training loop (tokenizer or transformer)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    min_lr: float = 1e-6  # cosine annealing floor
    # "cosine": warm-up, then cosine to min_lr over the whole run; "wsd" (warm-up, stable,
    # decay): lr held after the warm-up until step decay_start (0 = no decay yet), then cosine
    # to min_lr at the run's end. A wsd run continues leg after leg (more epochs on --resume)
    # and decays in its last leg (--resume --set ...decay_start=STEP).
    lr_schedule: str = "cosine"
    decay_start: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_accum: int = 1
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.0  # 0 = no EMA weights
    seed: int = 0
    compile: bool = False
    save_every: int = 1  # epochs
    val_fraction: float = 0.05
    hflip: bool = False
    max_steps: int = 0  # stop after this many optimiser steps (0 = no limit)
    # Transformer only
    mask_schedule: str = "cosine"
    label_smoothing: float = 0.0
    # fraction of training images masked as one contiguous region (masking.region_token_mask)
    # instead of at uniform positions; inpainting holes are regions, so this trains for them
    region_mask_fraction: float = 0.0
    # Tokenizer only
    rec_loss: str = "l1"  # "l1" or "l2"
    disc_weight: float = 0.8
    disc_start: int = 2000  # optimiser steps before the GAN loss switches on
    disc_channels: int = 64
    disc_layers: int = 3
    perceptual_weight: float = 0.0
    perceptual_weights: str = ""  # path to a user-supplied TorchScript feature network
    # train the decoder side only (post-quant projection + decoder): the encoder, its projection
    # and the codebook stay frozen, so the tokens, and a transformer trained on them, stay valid
    decoder_only: bool = False

    def validate(self) -> None:
        _positive(self, "epochs", "batch_size", "grad_accum", "save_every")
        _choice(self, "rec_loss", ("l1", "l2"))
        _choice(self, "lr_schedule", ("cosine", "wsd"))
        if self.decay_start < 0:
            raise ConfigError(f"training.decay_start={self.decay_start}: expected >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"training.val_fraction={self.val_fraction}: expected [0, 1)")
        if not 0.0 <= self.region_mask_fraction <= 1.0:
            raise ConfigError(
                f"training.region_mask_fraction={self.region_mask_fraction}: expected [0, 1]"
            )


@dataclass
class Preset:
    """A named bundle of both model configs and both training loops."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    tokenizer_training: TrainingConfig = field(default_factory=TrainingConfig)
    transformer_training: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self) -> None:
        for part in (
            self.tokenizer,
            self.transformer,
            self.tokenizer_training,
            self.transformer_training,
        ):
            part.validate()
        tok, tr = self.tokenizer, self.transformer
        if tr.codebook_size != tok.codebook_size:
            raise ConfigError(
                f"transformer.codebook_size={tr.codebook_size} differs from "
                f"tokenizer.codebook_size={tok.codebook_size}"
            )
        if tr.num_tokens != tok.token_grid**2:
            raise ConfigError(
                f"transformer.num_tokens={tr.num_tokens} differs from the tokenizer's "
                f"{tok.token_grid}x{tok.token_grid} grid"
            )


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}={getattr(cfg, name)}: expected a positive number")


def _choice(cfg: Any, name: str, valid: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in valid:
        raise ConfigError(f"{name}={getattr(cfg, name)!r}: expected one of {', '.join(valid)}")


# --------------------------------------------------------------------------- dict <-> dataclass


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0]
        if (len(args) != 2 or args[1] is not Ellipsis) and len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-4 as a string, not a float
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, prefix=f"{key}.")
    raise ConfigError(f"{key}: unsupported type {annotation!r}")  # pragma: no cover


# Keys that older config files (run folders, the shipped model's config.yaml) still hold and
# that no code reads any more: accepted and ignored.
RETIRED_KEYS = {"TrainingConfig": ("num_workers",)}


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass `cls` from a dict; unknown keys and wrong types raise ConfigError."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    data = {k: v for k, v in data.items() if k not in RETIRED_KEYS.get(cls.__name__, ())}
    unknown = sorted(set(data) - set(valid), key=str)  # YAML keys may be numbers too
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!r}; valid keys: "
            + ", ".join(prefix + v for v in valid)
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-friendly dict of a config dataclass (tuples become lists)."""

    def convert(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(dataclasses.asdict(cfg))


# --------------------------------------------------------------------------- presets


def _lab64() -> Preset:
    """The course lab: 64x64 -> 16x16 tokens, 1024 codes, latent 256; 15-layer transformer.

    The lab's GPU architecture (a 15 x 768 transformer): on a CPU use cpu-64.

    The transformer's defaults are the lab's; presets list only what differs from the
    dataclass defaults."""
    return Preset(
        tokenizer=TokenizerConfig(
            base_channels=128,
            channel_mult=(1, 1, 2),
            num_res_blocks=2,
            latent_dim=256,
            codebook_size=1024,
            code_dim=256,
        ),
        transformer=TransformerConfig(norm="post"),
        tokenizer_training=TrainingConfig(epochs=100, batch_size=32, disc_start=10000),
        transformer_training=TrainingConfig(epochs=300, batch_size=10, grad_clip=0.0),
    )


def _emoji_demo() -> Preset:
    """Small CPU preset for the embedded default: 64x64 emoji -> 16x16 tokens, 512 codes.

    Sized so both stages train in about 1.5 hours on 2 CPU cores (docs/model-history.md).
    """
    return Preset(
        tokenizer=TokenizerConfig(
            base_channels=32,
            num_res_blocks=1,
            latent_dim=64,
            codebook_size=512,
            code_dim=16,
            l2_normalize=True,
            dead_code_steps=100,
        ),
        transformer=TransformerConfig(
            codebook_size=512,
            dim=192,
            depth=5,
            heads=6,
            mlp_dim=768,
            attn_dropout=0.0,
        ),
        tokenizer_training=TrainingConfig(
            batch_size=32,
            lr=4e-4,
            min_lr=2e-5,
            warmup_steps=100,
            disc_start=500,
            disc_weight=0.5,
            disc_channels=32,
        ),
        transformer_training=TrainingConfig(
            epochs=14,
            batch_size=32,
            lr=6e-4,
            min_lr=2e-5,
            warmup_steps=200,
            weight_decay=0.05,
            betas=(0.9, 0.95),
            ema_decay=0.998,
            label_smoothing=0.1,
            region_mask_fraction=0.5,
        ),
    )


def _cpu64() -> Preset:
    """Your own 64x64 images on a CPU: 8x8 tokens (downsample 8), 1024 codes.

    8x8 tokens cost the transformer about a quarter of 16x16 per image, so it sees four times
    the images in the same hour; at equal reconstruction the one-hour probe on emoji beat the
    16x16 default (docs/train-on-a-cpu.md has the per-stage cost and an hour's result).
    """
    preset = _emoji_demo()
    preset.tokenizer.base_channels = 48
    preset.tokenizer.channel_mult = (1, 2, 2, 4)
    preset.tokenizer.codebook_size = 1024
    preset.tokenizer_training.epochs = 12
    preset.transformer = TransformerConfig(
        codebook_size=1024,
        num_tokens=64,
        dim=256,
        depth=6,
        heads=8,
        mlp_dim=1024,
        attn_dropout=0.0,
    )
    preset.transformer_training.epochs = 60
    return preset


def _tiny() -> Preset:
    """A few-thousand-parameter preset for tests: 16x16 images -> 4x4 tokens, 16 codes."""
    return Preset(
        tokenizer=TokenizerConfig(
            image_size=16,
            base_channels=8,
            num_res_blocks=1,
            latent_dim=16,
            codebook_size=16,
            code_dim=8,
        ),
        transformer=TransformerConfig(
            codebook_size=16,
            num_tokens=16,
            dim=32,
            depth=2,
            heads=4,
            mlp_dim=64,
            dropout=0.0,
            attn_dropout=0.0,
        ),
        tokenizer_training=TrainingConfig(
            epochs=2,
            batch_size=8,
            lr=1e-3,
            disc_start=4,
            disc_channels=8,
            disc_layers=2,
            val_fraction=0.2,
        ),
        transformer_training=TrainingConfig(epochs=2, batch_size=8, lr=1e-3, val_fraction=0.2),
    )


PRESETS = {"lab-64": _lab64, "emoji-demo": _emoji_demo, "cpu-64": _cpu64, "tiny": _tiny}


def get_preset(name: str) -> Preset:
    """A fresh copy of preset `name`; an unknown name raises ConfigError listing the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]()


def apply_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """Apply `section.key=value` strings (values parsed as YAML) and re-validate."""
    data = to_dict(preset)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"--set {item!r}: expected section.key=value, e.g. transformer_training.lr=1e-4"
            )
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or parts[0] not in data:
            raise ConfigError(
                f"--set {key!r}: expected section.key with section one of {', '.join(data)}"
            )
        try:
            data[parts[0]][parts[1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = _yaml_problem(exc)
            raise ConfigError(f"--set {item!r}: not a valid YAML value ({problem})") from exc
    result = from_dict(Preset, data)
    result.validate()
    return result


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line (PyYAML's own message spans several, with a caret drawing)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(exc, "problem", None) or " ".join(str(exc).split()))


def load_config(source: str | Path, overrides: list[str] | None = None) -> Preset:
    """Load a preset name or a YAML file (optionally `preset: NAME` as a base) plus overrides.

    A YAML file has up to four sections (tokenizer, transformer, tokenizer_training,
    transformer_training) whose keys override the base preset.
    """
    source = str(source)
    if source in PRESETS:
        preset = get_preset(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(
                f"config {source!r}: not a preset ({', '.join(PRESETS)}) nor an existing file"
            )
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {path}: not valid YAML ({_yaml_problem(exc)})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path}: expected a mapping of sections")
        base_name = data.pop("preset", "emoji-demo")
        if not isinstance(base_name, str) or base_name not in PRESETS:
            raise ConfigError(f"config {path}: preset {base_name!r}; valid: {', '.join(PRESETS)}")
        base = get_preset(base_name)
        merged = to_dict(base)
        for section, values in data.items():
            if section not in merged:
                raise ConfigError(
                    f"config {path}: unknown section {section!r}; valid: {', '.join(merged)}"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"config {path}: section {section!r} must be a mapping")
            merged[section].update(values)
        try:
            preset = from_dict(Preset, merged)
        except ConfigError as exc:
            raise ConfigError(f"config {path}: {exc}") from exc
    preset = apply_overrides(preset, overrides or [])
    return preset
