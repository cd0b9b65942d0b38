"""maskgit.options: one frozen, validated DecodingOptions; DEFAULT_DECODING = the model card."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
import torch

from maskgit.cli import build_parser, decoding_options
from maskgit.decoding import DecodeStep, decode
from maskgit.options import DEFAULT_DECODING, DecodingOptions, option_names

ROOT = Path(__file__).parents[1]


def test_frozen_and_valid_on_construction():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_DECODING.steps = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="steps=0"):
        DecodingOptions(steps=0)
    assert DEFAULT_DECODING.replace(steps=3).steps == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps=0: expected at least 1"),
        ({"steps": 4, "sweet_spot": 5}, "sweet_spot=5: expected 1 <= sweet_spot <= steps=4"),
        ({"schedule": "cosine2"}, "unknown mask schedule 'cosine2'"),
        ({"temperature": -1.0}, "temperature=-1.0: expected >= 0"),
        ({"temperature": float("nan")}, "temperature=nan: expected a finite number"),
        ({"temperature": float("inf")}, "temperature=inf: expected a finite number"),
        ({"choice_temperature": float("nan")}, "choice_temperature=nan"),
        ({"choice_temperature": float("-inf")}, "choice_temperature=-inf"),
        ({"top_k": 0}, "top_k=0: expected at least 1"),
        ({"seed": -1}, "seed=-1"),
        ({"seed": 2**62}, "seed="),
        ({"prefill": "blur"}, "prefill='blur': expected one of telea, white"),
        ({"blend": "poisson"}, "blend='poisson': expected one of seamless, none"),
        ({"steps": 2.5}, "steps=2.5: expected a whole number"),
    ],
)
def test_validate_gives_one_line_naming_the_option(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        DEFAULT_DECODING.replace(**changes)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("tiny", [1e-320, 5e-324, 1e-45, 1e-38, 1e-31])
def test_a_temperature_that_underflows_is_argmax(tiny):
    options = DecodingOptions(temperature=tiny, choice_temperature=tiny)
    assert options.temperature == 0.0 and options.choice_temperature == 0.0
    # and decoding with it equals argmax decoding
    logits = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(0))
    tokens, unknown = torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.bool)
    got, _ = decode(tokens, unknown, lambda _: logits, 5, options)
    want, _ = decode(tokens, unknown, lambda _: logits, 5, options.replace(temperature=0.0))
    assert torch.equal(got, want) and (got < 5).all()


def test_text_values_name_the_option():
    assert DEFAULT_DECODING.with_text({"steps": "12", "top_k": "", "sweet_spot": None}).steps == 12
    assert DEFAULT_DECODING.with_text({"temperature": "1e-320"}).temperature == 0.0
    assert DecodingOptions(top_k=3).with_text({"top_k": "none"}).top_k is None
    with pytest.raises(ValueError, match="steps='many': expected a whole number"):
        DEFAULT_DECODING.with_text({"steps": "many"})
    with pytest.raises(ValueError, match="temperature=nan: expected a finite number"):
        DEFAULT_DECODING.with_text({"temperature": "nan"})
    with pytest.raises(TypeError, match="unknown decoding option"):
        DEFAULT_DECODING.replace(stepz=3)


def test_default_is_the_model_cards_command():
    card = (ROOT / "docs/model-card.md").read_text()
    block = re.search(r"```bash\n(maskgit evaluate .*?)\n```", card, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))[1:]
    assert decoding_options(build_parser().parse_args(argv)) == DEFAULT_DECODING
    assert DEFAULT_DECODING.schedule == "linear" and DEFAULT_DECODING.steps == 8
    assert DEFAULT_DECODING.temperature == 0.0 and DEFAULT_DECODING.choice_temperature == 1.0
    assert DEFAULT_DECODING.prefill == "telea" and DEFAULT_DECODING.blend == "seamless"


@pytest.mark.parametrize("command", ["inpaint", "outpaint", "generate", "demo", "evaluate"])
def test_every_option_is_a_flag_with_the_default(command):
    parser = build_parser()
    required = {
        "inpaint": ["--images", "i", "--masks", "m", "--out", "o"],
        "outpaint": ["--images", "i", "--out", "o"],
        "generate": ["--n", "1", "--out", "o"],
        "demo": [],
        "evaluate": ["--images", "i", "--masks", "m", "--out", "o"],
    }[command]
    args = parser.parse_args([command, *required])
    assert decoding_options(args) == DEFAULT_DECODING
    for name in option_names():
        assert hasattr(args, name), f"{command} has no --{name.replace('_', '-')}"


def test_the_page_has_a_control_for_every_option():
    html = (ROOT / "src/maskgit/web/index.html").read_text()
    controls = set(re.findall(r'data-option="([a-z_]+)"', html))
    assert controls == set(option_names())


def test_on_step_sees_every_step():
    logits = torch.randn(1, 16, 7, generator=torch.Generator().manual_seed(1))
    tokens, unknown = torch.zeros(1, 16, dtype=torch.long), torch.ones(1, 16, dtype=torch.bool)
    seen: list[DecodeStep] = []
    _, records = decode(
        tokens,
        unknown,
        lambda _: logits,
        7,
        DecodingOptions(steps=5),
        on_step=seen.append,
        record_steps=True,
    )
    assert [s.step for s in seen] == [0, 1, 2, 3, 4]
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(seen, records, strict=True))
    assert seen[-1].unknown.sum() == 0


def test_the_package_root_exports_the_pipeline_and_its_options():
    import maskgit
    from maskgit.pipeline import MaskGIT

    assert maskgit.MaskGIT is MaskGIT
    assert maskgit.DEFAULT_DECODING is DEFAULT_DECODING
    assert maskgit.DecodingOptions is DecodingOptions
