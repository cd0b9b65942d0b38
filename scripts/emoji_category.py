"""One emoji category of an unpacked emoji-datasource package as a plain image folder.

A real folder nobody tuned for, for the CPU recipe (docs/train-on-a-cpu.md): every image of
one category (skin-tone variants included) at 64x64 on white, split by `sibling_key` so that
tone siblings never straddle train and test:
    OUT/train/*.png, OUT/test/images/*.png, OUT/test/masks/*.png (white = repaint)

    python scripts/emoji_category.py data/npm/twitter "People & Body" data/people-twitter
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from maskgit.data import load_image, split_of
from maskgit.prepare import name_seed, random_mask, sibling_key


def category_keys(package: Path, category: str) -> list[str]:
    """File stems (lower-case code points) of every image of `category` in the package."""
    vendor = next((package / "img").iterdir()).name
    keys = []
    for entry in json.loads((package / "emoji.json").read_text()):
        if entry["category"] != category:
            continue
        variants = [entry, *(entry.get("skin_variations") or {}).values()]
        keys += [v["image"][:-4] for v in variants if v.get(f"has_img_{vendor}")]
    if not keys:
        raise SystemExit(f"{package}/emoji.json: no images in category {category!r}")
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", type=Path, help="unpacked emoji-datasource-<vendor> package")
    parser.add_argument("category", help='category in emoji.json, e.g. "People & Body"')
    parser.add_argument("out", type=Path, help="output folder (must not exist)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share held out")
    args = parser.parse_args()
    folder = next((args.package / "img").iterdir()) / "64"
    counts = {"train": 0, "test": 0}
    for key in category_keys(args.package, args.category):
        split = "test" if split_of(sibling_key(key), 0.0, args.test_fraction) == "test" else "train"
        target = args.out / ("test/images" if split == "test" else "train")
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(load_image(folder / f"{key}.png", 64)).save(target / f"{key}.png")
        if split == "test":
            (args.out / "test/masks").mkdir(parents=True, exist_ok=True)
            mask = random_mask(64, name_seed(f"{key}.png"))
            Image.fromarray(mask).save(args.out / "test/masks" / f"{key}.png")
        counts[split] += 1
    print(f"wrote {counts} to {args.out}")


if __name__ == "__main__":
    main()
