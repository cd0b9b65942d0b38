"""Mask schedules gamma(r): the fraction of tokens still masked at progress r in [0, 1].

Every schedule satisfies gamma(0) = 1, gamma(1) = 0, is non-increasing and stays in [0, 1].
One implementation serves training (how many tokens to mask) and decoding (how many tokens
stay masked after each step). The names and their check live in maskgit.options (which
needs no torch); nothing else of the package is imported.

Names:
    linear       1 - r
    cosine       cos(pi r / 2)                       (the official MaskGIT cosine)
    lab-cosine   (cos(pi r) + 1) / 2                 (the course lab's "cosine": another curve)
    square       1 - r^2
    power-K      1 - r^K for any K > 0, e.g. power-3
    log          -log2(r) / log2(N), clipped to [0, 1]          (official "log")
    exp          (1 - 2^(-log2(N) (1 - r))) / (1 - 1/N)          (official "exp", rescaled so
                                                                  that gamma(0) is exactly 1)
N is the number of tokens (default 256) for the two schedules that depend on it.
"""

from __future__ import annotations

import math

import torch

from maskgit.options import POWER_PATTERN, SCHEDULE_NAMES, validate_schedule

__all__ = ["SCHEDULE_NAMES", "gamma", "validate_schedule"]


def gamma(name: str, r: torch.Tensor | float, num_tokens: int = 256) -> torch.Tensor:
    """Mask ratio gamma(r) of schedule `name` at progress `r` (tensor or float in [0, 1])."""
    validate_schedule(name)
    r = torch.as_tensor(r, dtype=torch.float64).clamp(0.0, 1.0)
    if name == "linear":
        out = 1.0 - r
    elif name == "cosine":
        out = torch.cos(math.pi / 2.0 * r)
    elif name == "lab-cosine":
        out = (torch.cos(math.pi * r) + 1.0) / 2.0
    elif name == "square":
        out = 1.0 - r**2
    elif name == "log":
        out = -torch.log2(r) / math.log2(max(num_tokens, 2))
    elif name == "exp":
        n = max(num_tokens, 2)
        out = (1.0 - torch.exp2(-math.log2(n) * (1.0 - r))) / (1.0 - 1.0 / n)
    else:
        exponent = float(POWER_PATTERN.match(name).group(1))
        out = 1.0 - r**exponent
    # Exact ends: cos(pi/2) is 6e-17 in floating point, not 0.
    out = torch.where(r >= 1.0, torch.zeros_like(out), out)
    out = torch.where(r <= 0.0, torch.ones_like(out), out)
    return out.clamp(0.0, 1.0)
