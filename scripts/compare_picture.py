"""Side-by-side picture of inpainting results: one row per test image, one column per method.

Columns come from `maskgit evaluate` output folders (runs/NAME/<method>/), matched by file
name. Used for docs/img/inpaint-compare.png:

    python scripts/compare_picture.py --images data/emoji-google/test/images \\
        --masks data/emoji-google/test/masks --count 10 --out docs/img/inpaint-compare.png \\
        --column truth=data/emoji-google/test/images \\
        --column Telea=runs/v4-leg4/eval-google/telea \\
        --column "white fill=runs/v4-leg4/eval-google/white" \\
        --column "v3.2 plain=runs/v4-leg4/eval-google/maskgit" \\
        --column "v3.2 seamless=runs/v32-seamless/eval-google/maskgit"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from maskgit.data import list_images
from maskgit.visualize import labelled, masked_preview, save_png, upscale

SCALE = 2  # 64x64 emoji -> 128x128 tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="the images given to the model")
    parser.add_argument("--masks", required=True, help="masks with the same names (white = hole)")
    parser.add_argument("--column", action="append", required=True, metavar="LABEL=FOLDER")
    parser.add_argument("--count", type=int, default=10, help="evenly spaced test images")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()

    images = list_images(args.images)
    picked = [images[i * len(images) // args.count] for i in range(args.count)]
    columns = [spec.split("=", 1) for spec in args.column]
    for label, folder in columns:
        if not Path(folder).is_dir():
            parser.error(f"--column {label}={folder}: no such folder")
    rows = []
    for path in picked:
        mask = np.asarray(Image.open(Path(args.masks) / path.name).convert("L")) >= 128
        tiles = [masked_preview(Image.open(path).convert("RGB"), mask)]
        tiles += [Image.open(Path(folder) / path.name).convert("RGB") for _, folder in columns]
        rows.append([upscale(tile, SCALE) for tile in tiles])
    labels = ["input", *(label for label, _ in columns)]
    width, height = rows[0][0].size
    pad = 2
    canvas = Image.new(
        "RGB",
        (len(labels) * (width + pad) + pad, len(rows) * (height + pad) + pad + 14),
        (255, 255, 255),
    )
    for c, label in enumerate(labels):
        canvas.paste(labelled(Image.new("RGB", (width, 0)), label), (pad + c * (width + pad), 0))
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            canvas.paste(tile, (pad + c * (width + pad), 14 + pad + r * (height + pad)))
    save_png(canvas, args.out)
    print(f"wrote {args.out} ({len(rows)} images x {len(labels)} columns)")


if __name__ == "__main__":
    main()
