"""Data-set preparation: the emoji data set of the embedded default, and test masks.

`prepare_emoji` turns the npm packages `emoji-datasource-<vendor>` (unpacked) into
    OUT/train/*.png, OUT/val/*.png        64x64 RGB, alpha composited on white
    OUT/test/images/*.png                 test images
    OUT/test/masks/*.png                  their masks, white = repaint, same names
    OUT/ATTRIBUTION.md, OUT/LICENSE-<vendor>
Splits hash the emoji's code point name (not the vendor), so one emoji never lands in two
splits, even across vendors.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from maskgit.data import DataError, load_image, split_of

VENDOR_LICENCES = {
    "google": "Apache-2.0 (Noto Emoji, Google)",
    "twitter": "CC-BY-4.0 (Twemoji, Twitter/X Corp.)",
    "apple": "proprietary (do not redistribute)",
    "facebook": "proprietary (do not redistribute)",
}


def random_mask(size: int, seed: int, min_area: float = 0.1, max_area: float = 0.6) -> np.ndarray:
    """A lab-style mask (free-form strokes or a box) covering min_area..max_area of the image.

    Returns uint8 (size, size), 255 = repaint. Deterministic for a given seed.
    """
    rng = np.random.default_rng(seed)
    for _ in range(100):
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        if rng.random() < 0.5:
            w, h = (rng.uniform(0.3, 0.8, 2) * size).astype(int)
            x, y = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
            draw.rectangle([int(x), int(y), int(x + w - 1), int(y + h - 1)], fill=255)
        else:
            for _ in range(int(rng.integers(1, 4))):
                points = [tuple(int(v) for v in rng.integers(0, size, 2))]
                for _ in range(int(rng.integers(2, 6))):
                    points.append(tuple(int(v) for v in rng.integers(0, size, 2)))
                width = int(rng.integers(size // 12, size // 5))
                draw.line(points, fill=255, width=width, joint="curve")
                for px, py in points:
                    r = width // 2
                    draw.ellipse([px - r, py - r, px + r, py + r], fill=255)
        mask = np.asarray(img)
        if min_area <= (mask > 127).mean() <= max_area:
            return mask
    raise RuntimeError(f"could not draw a mask with area in [{min_area}, {max_area}]")


def name_seed(name: str) -> int:
    """A stable 32-bit seed from a file name."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)


def _vendor_images(source: Path) -> tuple[str, Path, Path | None]:
    """(vendor, image folder, licence file) of an unpacked emoji-datasource package."""
    img_root = source / "img"
    vendors = sorted(p.name for p in img_root.iterdir()) if img_root.is_dir() else []
    vendors = [v for v in vendors if (img_root / v / "64").is_dir()]
    if len(vendors) != 1:
        raise DataError(
            f"{source}: expected an unpacked emoji-datasource-<vendor> package with "
            f"img/<vendor>/64/ (found {vendors or 'no img/*/64 folder'})"
        )
    licence = source / "LICENSE"
    return vendors[0], img_root / vendors[0] / "64", licence if licence.is_file() else None


def prepare_emoji(
    sources: list[str | Path],
    out: str | Path,
    size: int = 64,
    val_fraction: float = 0.05,
    test_fraction: float = 0.1,
    progress: bool = True,
) -> dict[str, int]:
    """Build the emoji data set from unpacked npm packages; returns image counts per split."""
    out = Path(out)
    counts = {"train": 0, "val": 0, "test": 0}
    attributions = []
    for source in map(Path, sources):
        vendor, folder, licence = _vendor_images(source)
        attributions.append((vendor, source))
        if licence is not None:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(licence, out / f"LICENSE-{vendor}")
        files = sorted(folder.glob("*.png"))
        for path in tqdm(files, desc=f"emoji {vendor}", disable=not progress):
            split = split_of(path.stem, val_fraction, test_fraction)
            name = f"{vendor}-{path.name}"
            image = Image.fromarray(load_image(path, size))
            target = out / ("test/images" if split == "test" else split)
            target.mkdir(parents=True, exist_ok=True)
            image.save(target / name)
            if split == "test":
                (out / "test/masks").mkdir(parents=True, exist_ok=True)
                Image.fromarray(random_mask(size, name_seed(name))).save(out / "test/masks" / name)
            counts[split] += 1
    _write_attribution(out, attributions, counts)
    return counts


def _write_attribution(out: Path, attributions: list[tuple[str, Path]], counts: dict) -> None:
    lines = ["# Emoji data set: sources and licences", ""]
    for vendor, source in attributions:
        meta = source / "package.json"
        version = json.loads(meta.read_text())["version"] if meta.is_file() else "unknown"
        lines.append(
            f"- {vendor}: npm emoji-datasource-{vendor}@{version}, images "
            f"{VENDOR_LICENCES.get(vendor, 'see the package licence')}; "
            f"licence text in LICENSE-{vendor}."
        )
    lines += [
        "",
        "Images were resized to 64x64 and composited on white by `maskgit prepare-data emoji`.",
        "",
        f"Counts: {counts}.",
        "",
    ]
    (out / "ATTRIBUTION.md").write_text("\n".join(lines))
