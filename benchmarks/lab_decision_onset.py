"""When does the lab's decoding rule decide its first token? No model: the masks only.

Under `--rule lab` step t (0-based) of T keeps min(int(gamma(t/T) * N), unknown) tokens
masked, N = all tokens of the image: nothing is decided while int(gamma(t/T) * N) is at least
the hole's token count U0, and every step until then re-predicts the same all-masked hole.
This prints, per schedule, the first deciding step t* over a mask folder (median and
quartiles), and the first sweet spot S = t* + 2 whose output can differ from the one-shot
prediction (step t*'s decisions are first seen by step t* + 1). Under `--rule paper` every
step decides from step 0.

PYTHONPATH=src python benchmarks/lab_decision_onset.py \\
    --images data/emoji-google/test/images --masks data/emoji-google/test/masks --limit 64
"""

from __future__ import annotations

import argparse

import numpy as np

from maskgit.evaluate import load_test_set
from maskgit.masking import pixel_to_token_mask
from maskgit.schedule import gamma


def first_deciding_step(unknown: int, schedule: str, steps: int, num_tokens: int) -> int:
    """The first step t at which the lab rule decides a token (`steps` when it never does)."""
    for t in range(steps):
        if int(gamma(schedule, t / steps, num_tokens).item() * num_tokens) < unknown:
            return t
    return steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", required=True, help="test images (for the file pairing)")
    p.add_argument("--masks", required=True, help="masks, white = repaint")
    p.add_argument("--limit", type=int, default=0, help="N evenly spaced images, as sweep")
    p.add_argument("--size", type=int, default=64, help="model image size (default 64)")
    p.add_argument("--downsample", type=int, default=4, help="pixels per token side")
    p.add_argument("--steps", type=int, default=32, help="T (default 32)")
    p.add_argument("--schedules", nargs="+", default=["lab-cosine", "cosine", "linear", "square"])
    args = p.parse_args()
    test = load_test_set(args.images, args.masks, None, args.size, limit=args.limit)
    token_masks = pixel_to_token_mask(test.masks, args.downsample)  # (B, h, w)
    num_tokens = token_masks[0].numel()
    unknown = token_masks.flatten(1).sum(dim=1).tolist()
    share = np.array(unknown) / num_tokens
    print(
        f"{len(unknown)} masks, hole share of tokens: median {np.median(share):.2f} "
        f"(quartiles {np.quantile(share, 0.25):.2f}-{np.quantile(share, 0.75):.2f}), T={args.steps}"
    )
    print("| schedule | first deciding step t* (median) | quartiles | first S that differs |")
    print("|---|---|---|---|")
    for schedule in args.schedules:
        onset = np.array(
            [first_deciding_step(u, schedule, args.steps, num_tokens) for u in unknown]
        )
        q1, med, q3 = np.quantile(onset, [0.25, 0.5, 0.75])
        print(f"| {schedule} | {med:.0f} | {q1:.0f}-{q3:.0f} | {med + 2:.0f} |")


if __name__ == "__main__":
    main()
