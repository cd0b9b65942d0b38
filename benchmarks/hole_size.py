"""FID by hole size: where does each method win? Scores the images `maskgit evaluate` wrote.

`maskgit evaluate --out RUN --baselines white telea ...` writes one folder of results per
method (RUN/maskgit, RUN/telea, ...). This script splits the test set by the share of the
image the mask covers (default buckets 10-20 %, 20-40 %, 40-60 %) and scores every method's
results in each bucket against the ground truth: FID and KID (TF-Inception pool3; FID on
small buckets is biased upwards, so compare methods within a bucket, not buckets) and PSNR
inside the mask. Prints a markdown table.

PYTHONPATH=src python benchmarks/hole_size.py --run runs/eval-google \\
    --images data/emoji-google/test/images --masks data/emoji-google/test/masks
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from maskgit.evaluate import Scorer, TestSet, load_test_set
from maskgit.fid import InceptionFeatures
from maskgit.reader import read_image


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", required=True, help="output folder of `maskgit evaluate`")
    p.add_argument("--images", required=True, help="the test images evaluate was given")
    p.add_argument("--masks", required=True, help="their masks (white = repaint)")
    p.add_argument("--size", type=int, default=64, help="image side (default 64)")
    p.add_argument(
        "--edges",
        type=float,
        nargs="+",
        default=[0.1, 0.2, 0.4, 0.6],
        help="bucket edges as fractions of the image (default 0.1 0.2 0.4 0.6)",
    )
    return p.parse_args()


def subset(test: TestSet, keep: np.ndarray) -> TestSet:
    index = torch.from_numpy(np.flatnonzero(keep))
    names = [test.names[i] for i in index.tolist()]
    return TestSet(names, test.images[index], test.masks[index], test.truth[index])


def read_results(folder: Path, names: list[str], size: int) -> torch.Tensor:
    """uint8 (N, 3, S, S): the method's result for each test image, by file stem."""
    arrays = [read_image(folder / (Path(name).stem + ".png"), size) for name in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def main() -> None:
    args = parse_args()
    run = Path(args.run)
    methods = sorted(p.name for p in run.iterdir() if p.is_dir())
    if not methods:
        raise SystemExit(f"{run}: no method folders (run `maskgit evaluate --out {run}` first)")
    test = load_test_set(args.images, args.masks, None, args.size)
    share = test.masks.flatten(1).float().mean(1).numpy()  # (N,) hole share of the image
    inception = InceptionFeatures(progress=False)
    results = {m: read_results(run / m, test.names, args.size) for m in methods}
    print("| hole share | N | " + " | ".join(f"{m} FID / KIDx1000 / PSNR" for m in methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for lo, hi in zip(args.edges[:-1], args.edges[1:], strict=True):
        keep = (share >= lo) & (share < hi)
        if keep.sum() < 2:
            print(f"| {lo:.0%}-{hi:.0%} | {int(keep.sum())} | (too few images) |")
            continue
        part = subset(test, keep)
        scorer = Scorer(part, inception, kid_subset_size=min(100, int(keep.sum())))
        cells = []
        for method in methods:
            s = scorer.score(results[method][torch.from_numpy(np.flatnonzero(keep))])
            cells.append(f"{s['fid']:.2f} / {s['kid_mean'] * 1000:.2f} / {s['psnr']:.2f}")
        print(f"| {lo:.0%}-{hi:.0%} | {int(keep.sum())} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
