"""Decoding options: one frozen dataclass, validated once where it is built.

Every entry point (the Python API, the CLI, the web API, evaluate/sweep, the demo) builds a
`DecodingOptions` and passes it down to `maskgit.decoding.decode`; nothing below the edge
checks the values again. `DEFAULT_DECODING` is the setting that scored best for the shipped
model (docs/model-card.md: linear schedule, 8 steps, argmax sampling, choice temperature 1.0,
Telea pre-fill, seamless blend); a test holds the card's command and this object together.

Adding an option: add a field here (with its `help`) and its check in `validate`, read it in
`decode`, and give it a control in the web page (src/maskgit/web/index.html, an element with
`data-option="<name>"`). The CLI flags (`--<name>`), the web form fields, the recorded
settings of evaluate/sweep all come from the fields.

This module imports nothing of the package and no torch, so `maskgit --help` stays fast.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

SCHEDULE_NAMES = ("linear", "cosine", "lab-cosine", "square", "power-K", "log", "exp")
POWER_PATTERN = re.compile(r"^power-(\d+(?:\.\d+)?)$")
# What the encoder sees in the hole before encoding: a classical fill or plain white. The
# encoder's receptive field spans several tokens, so the hole's content changes the *known*
# tokens around it, which the transformer only ever saw computed from whole real images.
PREFILLS = ("telea", "white")
# How the decoded hole meets the known pixels around it (which always stay exact):
#   seamless  the decoder's colour error on the known pixels at the hole's edge is carried into
#             the hole, fading inwards (a harmonic function: Poisson blending, Perez et al.
#             2003), so no seam of colour is left where the model's pixels meet the image's
#   none      the decoder's pixels as they are
BLENDS = ("seamless", "none")
# How `decode` chooses which tokens to reveal (maskgit.decoding explains each):
#   paper   Chang et al. / google-research/maskgit: keep floor(gamma((t+1)/T) U0) masked, the
#           lowest log p + annealed Gumbel noise; decided tokens stay fixed
#   lab     the course lab's report: re-mask int(gamma(t/T) N) of the still-unknown positions
#           (N = all tokens), confidence max softmax(logits / choice_temperature); every
#           generated position takes the new prediction at every step
#   halton  reveal in a fixed quasi-random, spatially spread (Halton, bases 2 and 3) order, as
#           many per step as the paper's rule; decided tokens stay fixed
RULES = ("paper", "lab", "halton")
# A temperature this small samples like argmax anyway, and logits / temperature would
# overflow (1e-320 is 0 in float32): it is taken as 0, i.e. argmax.
MIN_TEMPERATURE = 1e-30
MAX_SEED = 2**62  # seed + image index must stay a valid 64-bit generator seed


def validate_schedule(name: str) -> str:
    """Return `name` if it names a schedule, else raise ValueError listing the valid names."""
    if name in SCHEDULE_NAMES and name != "power-K":
        return name
    match = POWER_PATTERN.match(str(name))
    if match and float(match.group(1)) > 0:
        return name
    raise ValueError(
        f"unknown mask schedule {name!r}; valid: {', '.join(SCHEDULE_NAMES)} "
        "(power-K with a number K > 0, e.g. power-3)"
    )


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DecodingOptions:
    """How `decode` fills unknown tokens (see maskgit.decoding for the rule).

    Building one validates it (`validate`): an instance is always valid.
    """

    schedule: str = _option(
        "linear", "mask schedule: linear, cosine, lab-cosine, square, power-K, log, exp"
    )
    steps: int = _option(8, "decoding steps T")
    sweet_spot: int | None = _option(
        None,
        "stop after S <= T steps and fill the rest with the prediction; "
        "S < 0 counts from T (-2 = T-2)",
    )
    temperature: float = _option(0.0, "sampling temperature (0 = argmax)")
    choice_temperature: float = _option(
        1.0, "Gumbel noise on the confidence, annealed to 0 over the steps"
    )
    top_k: int | None = _option(None, "sample among the K most likely codes")
    seed: int = _option(0, "image i uses seed + i")
    prefill: str = _option(
        "telea", "what the tokenizer sees in the hole before encoding: telea or white"
    )
    blend: str = _option(
        "seamless",
        "how the hole meets the known pixels: seamless (the decoder's colour error at the "
        "hole's edge is carried into the hole) or none",
    )
    rule: str = _option(
        "paper",
        "which tokens each step reveals: paper (MaskGIT), lab (the course lab's report), "
        "halton (a spatially spread quasi-random order)",
    )

    def __post_init__(self) -> None:
        self.validate()
        for name in ("temperature", "choice_temperature"):
            if 0.0 < getattr(self, name) < MIN_TEMPERATURE:  # underflows: argmax / no noise
                object.__setattr__(self, name, 0.0)

    def validate(self) -> DecodingOptions:
        """ValueError, one line naming the option, unless every value is usable."""
        _check_int("steps", self.steps, 1)
        if self.sweet_spot is not None:
            _check_int("sweet_spot", self.sweet_spot, -self.steps + 1)
            if self.sweet_spot == 0 or self.sweet_spot > self.steps:
                raise ValueError(
                    f"sweet_spot={self.sweet_spot}: expected 1 <= sweet_spot <= "
                    f"steps={self.steps}, or -{self.steps - 1} <= sweet_spot <= -1 "
                    "(counted from steps)"
                )
        validate_schedule(self.schedule)
        for name in ("temperature", "choice_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}={value!r}: expected a number")
            if not math.isfinite(value):
                raise ValueError(f"{name}={value!r}: expected a finite number")
            if value < 0:
                raise ValueError(f"{name}={value}: expected >= 0 (0 = argmax / no noise)")
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1)
        _check_int("seed", self.seed, 0)
        if self.seed >= MAX_SEED:
            raise ValueError(f"seed={self.seed}: expected 0 <= seed < 2^62")
        if self.prefill not in PREFILLS:
            raise ValueError(f"prefill={self.prefill!r}: expected one of {', '.join(PREFILLS)}")
        if self.blend not in BLENDS:
            raise ValueError(f"blend={self.blend!r}: expected one of {', '.join(BLENDS)}")
        if self.rule not in RULES:
            raise ValueError(f"rule={self.rule!r}: expected one of {', '.join(RULES)}")
        return self

    @property
    def steps_to_run(self) -> int:
        """S: the steps actually run (the sweet spot when set, else T; S < 0 means T + S)."""
        if self.sweet_spot is None:
            return self.steps
        return self.sweet_spot if self.sweet_spot > 0 else self.steps + self.sweet_spot

    def replace(self, **changes: Any) -> DecodingOptions:
        """A copy with `changes` (field names; an unknown name is an error naming it)."""
        unknown = sorted(set(changes) - set(option_names()))
        if unknown:
            raise TypeError(
                f"unknown decoding option(s) {', '.join(unknown)}; valid: "
                f"{', '.join(option_names())}"
            )
        return replace(self, **changes)

    def with_text(self, values: Mapping[str, str | None]) -> DecodingOptions:
        """A copy with option values given as text (CLI, web form); empty/None = unchanged.

        An optional field (sweet_spot, top_k) is cleared by "none". Errors name the option.
        """
        changes: dict[str, Any] = {}
        kinds = {f.name: f.type for f in fields(self)}
        for name, text in values.items():
            if name not in kinds or text is None or str(text).strip() == "":
                continue
            changes[name] = _parse(name, str(text).strip(), str(kinds[name]))
        return self.replace(**changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def option_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(DecodingOptions))


def option_help(name: str) -> str:
    return next(f.metadata["help"] for f in fields(DecodingOptions) if f.name == name)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r}: expected a whole number")
    if value < minimum:
        raise ValueError(f"{name}={value}: expected at least {minimum}")


def _parse(name: str, text: str, kind: str) -> Any:
    if "None" in kind and text.lower() == "none":
        return None
    if kind.startswith("int"):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r}: expected a whole number") from None
    if kind.startswith("float"):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name}={text!r}: expected a number") from None
    return text


def resolve(options: DecodingOptions | None = None, **changes: Any) -> DecodingOptions:
    """`options` (default DEFAULT_DECODING) with keyword `changes`, validated."""
    base = DEFAULT_DECODING if options is None else options
    return base.replace(**changes) if changes else base


# The shipped model's best setting (docs/model-card.md); every entry point starts from it.
DEFAULT_DECODING = DecodingOptions()
