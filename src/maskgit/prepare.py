"""Data-set preparation: the emoji data set of the embedded default, and test masks.

`prepare_emoji` turns the npm packages `emoji-datasource-<vendor>` (unpacked), and emoji sets
packed as `@iconify-json/<set>` (unpacked; SVG, rasterised with cairosvg), into
    OUT/train/*.png, OUT/val/*.png        64x64 RGB, alpha composited on white
    OUT/test/images/*.png                 test images
    OUT/test/masks/*.png                  their masks, white = repaint, same names
    OUT/ATTRIBUTION.md, OUT/LICENSE-<vendor>
Splits hash the emoji's code points without skin-tone modifiers and FE0F (`sibling_key`), so
one emoji and all its tone siblings land in one split, across vendors too. An iconify icon is
named in words ("grinning-face"): its code points are looked up by CLDR name (the `emoji`
package); an icon whose code points are not found is left out, since its split could not be
checked against the other styles.

Up to v3.2 the key held the tone modifier, so "farmer, medium-dark skin" could be in test while
its four tone siblings were in train. To keep the models trained on those splits comparable, a
test image is kept only if no tone sibling of it was in the earlier key's training split
(`earlier_keys`); the others are dropped from every split and counted.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from maskgit.data import DataError, load_image, split_of
from maskgit.reader import image_array

VENDOR_LICENCES = {
    "google": "Apache-2.0 (Noto Emoji, Google)",
    "twitter": "CC-BY-4.0 (Twemoji, Twitter/X Corp.)",
    "apple": "proprietary (do not redistribute)",
    "facebook": "proprietary (do not redistribute)",
}
# iconify sets whose licence allows training and shipping weights (no share-alike, no OpenMoji)
ICONIFY_ALLOWED_LICENCES = {"MIT", "Apache-2.0", "CC-BY-4.0"}
ICONIFY_RESERVED = {"openmoji"}  # the project's outside check of unseen styles: never trained on
TONE_MODIFIERS = frozenset({"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"})
VARIATION_SELECTOR = "fe0f"
SKIN_TONES = {  # iconify name suffix -> emoji modifier code point
    "medium-dark": "1f3fe",
    "medium-light": "1f3fc",
    "medium": "1f3fd",
    "dark": "1f3ff",
    "light": "1f3fb",
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


def sibling_key(key: str) -> str:
    """The split key of an emoji: its code points without skin-tone modifiers and FE0F, shared
    by all its tone siblings ("1f468-1f3fd-200d-1f33e" -> "1f468-200d-1f33e")."""
    parts = key.lower().split("-")
    return "-".join(p for p in parts if p not in TONE_MODIFIERS and p != VARIATION_SELECTOR)


def earlier_keys(keys: list[str]) -> set[str]:
    """Every split key that one tone-sibling group had up to v3.2 (the full code points), in
    emoji-datasource's form (the group's own `keys`) and in the form prepare-data gave iconify
    tone variants (the untoned sequence without a trailing FE0F, then the modifier), for a
    group that has tone variants."""
    untoned = [k for k in keys if not TONE_MODIFIERS.intersection(k.split("-"))]
    if len(untoned) == len(keys):
        return set(keys)
    bases = {u.removesuffix("-" + VARIATION_SELECTOR) for u in untoned}
    return set(keys) | {f"{base}-{tone}" for base in bases for tone in TONE_MODIFIERS}


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


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def _code_point_names() -> dict[str, str]:
    """Squashed CLDR name or alias -> code points as emoji-datasource names its files."""
    try:
        import emoji
    except ImportError as exc:
        raise DataError(
            "iconify sources need the `emoji` package: pip install -e '.[data]'"
        ) from exc
    names: dict[str, str] = {}
    for chars, data in emoji.EMOJI_DATA.items():
        if data.get("status") != emoji.STATUS["fully_qualified"]:
            continue
        code = "-".join(f"{ord(c):04x}" for c in chars)
        for name in [data["en"], *data.get("alias", [])]:
            names.setdefault(_squash(name), code)
    return names


def iconify_code_points(icon: str, names: dict[str, str]) -> str | None:
    """The split key (code points) of an iconify icon name, or None when it is not found."""
    if _squash(icon) in names:
        return names[_squash(icon)]
    for suffix, tone in SKIN_TONES.items():
        base = icon.removesuffix(f"-{suffix}")
        if base != icon and _squash(base) in names:
            return f"{names[_squash(base)].removesuffix('-fe0f')}-{tone}"
    return None


def _iconify_svgs(source: Path) -> Iterator[tuple[str, str]]:
    """(icon name, whole SVG document) of an unpacked @iconify-json package."""
    icons = json.loads((source / "icons.json").read_text())
    width, height = icons.get("width", 16), icons.get("height", 16)
    for name, icon in sorted(icons["icons"].items()):
        w, h = icon.get("width", width), icon.get("height", height)
        yield (
            name,
            (
                f'<svg xmlns="http://www.w3.org/2000/svg" '
                f'xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="{icon.get("left", 0)} '
                f'{icon.get("top", 0)} {w} {h}">{icon["body"]}</svg>'
            ),
        )


def _iconify_licence(source: Path) -> tuple[str, str]:
    """(set prefix, SPDX licence) of an iconify package; refuses reserved or unfit sets."""
    info = json.loads((source / "info.json").read_text())
    prefix = info.get("prefix") or json.loads((source / "icons.json").read_text())["prefix"]
    spdx = info.get("license", {}).get("spdx", "unknown")
    if prefix in ICONIFY_RESERVED:
        raise DataError(
            f"{source}: the {prefix} set is reserved as an outside check, never trained on"
        )
    if spdx not in ICONIFY_ALLOWED_LICENCES:
        raise DataError(
            f"{source}: licence {spdx} of the {prefix} set is not one of "
            f"{sorted(ICONIFY_ALLOWED_LICENCES)} (share-alike or unknown terms)"
        )
    return prefix, spdx


def _render_svg(svg: str, size: int) -> Image.Image:
    try:
        import cairosvg
    except ImportError as exc:
        raise DataError("iconify sources need cairosvg: pip install -e '.[data]'") from exc
    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=size, output_height=size)
    return Image.open(io.BytesIO(png))


def _source_images(source: Path, size: int) -> tuple[str, str, list, Path | None]:
    """(vendor, licence, [(split key, file name, image loader)], licence file) of a source."""
    if (source / "icons.json").is_file():
        vendor, spdx = _iconify_licence(source)
        names = _code_point_names()
        items = []
        for icon, svg in _iconify_svgs(source):
            key = iconify_code_points(icon, names)
            if key is not None:
                items.append(
                    (
                        key,
                        f"{key}.png",
                        lambda svg=svg: Image.fromarray(image_array(_render_svg(svg, size))),
                    )
                )
        licence = source / "LICENSE"
        return vendor, spdx, items, licence if licence.is_file() else None
    vendor, folder, licence = _vendor_images(source)
    items = [
        (path.stem, path.name, lambda path=path: Image.fromarray(load_image(path, size)))
        for path in sorted(folder.glob("*.png"))
    ]
    return vendor, VENDOR_LICENCES.get(vendor, "see the package licence"), items, licence


def prepare_emoji(
    sources: list[str | Path],
    out: str | Path,
    size: int = 64,
    val_fraction: float = 0.05,
    test_fraction: float = 0.1,
    progress: bool = True,
) -> dict[str, int]:
    """Build the emoji data set from unpacked npm packages; returns image counts per split and
    `dropped`, the test images left out because a tone sibling was in an earlier training split
    (module docstring)."""
    out = Path(out)
    counts = {"train": 0, "val": 0, "test": 0, "dropped": 0}
    attributions = []
    loaded = [_source_images(source, size) for source in map(Path, sources)]
    groups: dict[str, list[str]] = {}
    for _, _, items, _ in loaded:
        for key, _, _ in items:
            groups.setdefault(sibling_key(key), []).append(key)
    seen_in_training = {
        group
        for group, keys in groups.items()
        if any(split_of(k, val_fraction, test_fraction) == "train" for k in earlier_keys(keys))
    }
    for source, (vendor, spdx, items, licence) in zip(sources, loaded, strict=True):
        attributions.append((vendor, spdx, Path(source), len(items)))
        if licence is not None:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(licence, out / f"LICENSE-{vendor}")
        for key, file_name, read in tqdm(items, desc=f"emoji {vendor}", disable=not progress):
            split = split_of(sibling_key(key), val_fraction, test_fraction)
            if split == "test" and sibling_key(key) in seen_in_training:
                counts["dropped"] += 1
                continue
            name = f"{vendor}-{file_name}"
            image = read()
            target = out / ("test/images" if split == "test" else split)
            target.mkdir(parents=True, exist_ok=True)
            image.save(target / name)
            if split == "test":
                (out / "test/masks").mkdir(parents=True, exist_ok=True)
                Image.fromarray(random_mask(size, name_seed(name))).save(out / "test/masks" / name)
            counts[split] += 1
    _write_attribution(out, attributions, counts)
    return counts


def _write_attribution(out: Path, attributions: list[tuple], counts: dict) -> None:
    lines = ["# Emoji data set: sources and licences", ""]
    for vendor, licence, source, n_images in attributions:
        meta = source / "package.json"
        package = json.loads(meta.read_text()) if meta.is_file() else {}
        lines.append(
            f"- {vendor}: npm {package.get('name', source.name)}@{package.get('version', '?')}, "
            f"{n_images} images, licence {licence}; licence text in LICENSE-{vendor} "
            f"(or the package's info.json)."
        )
    lines += [
        "",
        "Images were resized to 64x64 and composited on white by `maskgit prepare-data emoji`.",
        "Split key: the code points without skin-tone modifiers and FE0F; test images with a",
        "tone sibling in the earlier key's training split are dropped (`dropped`).",
        "",
        f"Counts: {counts}.",
        "",
    ]
    (out / "ATTRIBUTION.md").write_text("\n".join(lines))
