"""prepare-data on iconify emoji sets: rasterised SVG, split by code point, licences checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from extras import require_extra
from maskgit.data import DataError, split_of
from maskgit.prepare import (
    TONE_MODIFIERS,
    earlier_keys,
    iconify_code_points,
    prepare_emoji,
    sibling_key,
)

RED_SQUARE = '<rect x="2" y="2" width="12" height="12" fill="#ff0000"/>'


def iconify_package(folder, prefix="testset", spdx="MIT", icons=None):
    folder.mkdir(parents=True)
    icons = icons or {
        "grinning-face": {"body": RED_SQUARE},
        "waving-hand-dark": {"body": RED_SQUARE},
        "no-such-emoji-anywhere": {"body": RED_SQUARE},
    }
    (folder / "icons.json").write_text(
        json.dumps({"prefix": prefix, "width": 16, "height": 16, "icons": icons})
    )
    (folder / "info.json").write_text(json.dumps({"prefix": prefix, "license": {"spdx": spdx}}))
    (folder / "package.json").write_text(json.dumps({"name": f"@iconify-json/{prefix}"}))
    return folder


def test_icon_names_map_to_the_code_points_of_emoji_datasource_files():
    require_extra("emoji")
    from maskgit.prepare import _code_point_names

    names = _code_point_names()
    assert iconify_code_points("grinning-face", names) == "1f600"
    assert iconify_code_points("red-heart", names) == "2764-fe0f"
    assert iconify_code_points("waving-hand-dark", names) == "1f44b-1f3ff"
    assert iconify_code_points("no-such-emoji-anywhere", names) is None


def test_an_iconify_set_is_rasterised_and_split_by_code_point(tmp_path):
    require_extra("cairosvg")
    require_extra("emoji")
    source = iconify_package(tmp_path / "pkg")
    counts = prepare_emoji([source], tmp_path / "out", size=16, progress=False)
    assert counts["train"] + counts["val"] + counts["test"] == 2  # the unknown name is left out
    written = {p.name for p in (tmp_path / "out").rglob("testset-*.png")}
    assert written == {"testset-1f600.png", "testset-1f44b-1f3ff.png"}  # named by code points
    for key in ("1f600", "1f44b-1f3ff"):
        split = split_of(sibling_key(key), 0.05, 0.1)
        folder = "test/images" if split == "test" else split
        image = np.asarray(Image.open(tmp_path / "out" / folder / f"testset-{key}.png"))
        assert image.shape == (16, 16, 3)
        assert (image[8, 8] == [255, 0, 0]).all() and (image[0, 0] == 255).all()
    attribution = (tmp_path / "out" / "ATTRIBUTION.md").read_text()
    assert "@iconify-json/testset" in attribution and "MIT" in attribution


@pytest.mark.parametrize(
    ("prefix", "spdx", "message"),
    [("openmoji", "CC-BY-SA-4.0", "reserved"), ("emojione-v1", "CC-BY-SA-4.0", "licence")],
)
def test_reserved_or_share_alike_sets_are_refused(tmp_path, prefix, spdx, message):
    source = iconify_package(tmp_path / prefix, prefix=prefix, spdx=spdx)
    with pytest.raises(DataError, match=message):
        prepare_emoji([source], tmp_path / "out", size=16, progress=False)
    assert not (tmp_path / "out").exists()


TONES = sorted(TONE_MODIFIERS)


def datasource_package(folder, keys):
    """An unpacked emoji-datasource-google package with a plain 4x4 PNG per code-point key."""
    images = folder / "img" / "google" / "64"
    images.mkdir(parents=True)
    for i, key in enumerate(keys):
        Image.new("RGB", (4, 4), (i * 7 % 256, 100, 200)).save(images / f"{key}.png")
    return folder


def test_sibling_key_drops_tone_modifiers_and_fe0f():
    assert sibling_key("1f468-1f3fd-200d-1f33e") == "1f468-200d-1f33e"
    assert sibling_key("26F9-FE0F") == sibling_key("26f9-1f3fb") == "26f9"
    assert sibling_key("1f9d1-1f3fb-200d-1f91d-200d-1f9d1-1f3ff") == "1f9d1-200d-1f91d-200d-1f9d1"
    # the iconify form of a toned emoji (modifier appended) is a sibling of the datasource form
    assert "1f468-200d-1f33e-1f3fd" in earlier_keys(["1f468-200d-1f33e", "1f468-1f3fd-200d-1f33e"])


def _group(base, split, earlier_train):
    """A tone group (base + its five toned keys) whose new split is `split` and whose earlier
    keys include (or not) one in the training split."""
    keys = [base] + [f"{base}-{tone}" for tone in TONES]
    if split_of(sibling_key(base), 0.05, 0.1) != split:
        return None
    trained = any(split_of(k, 0.05, 0.1) == "train" for k in earlier_keys(keys))
    return keys if trained == earlier_train else None


def test_tone_siblings_share_one_split_and_earlier_trained_siblings_leave_test(tmp_path):
    candidates = [f"1f{i:03x}" for i in range(0x300, 0xFFF)]
    leaky = next(g for b in candidates if (g := _group(b, "test", earlier_train=True)))
    trained = next(g for b in candidates if (g := _group(b, "train", earlier_train=True)))
    # a test emoji without tones whose key is unchanged: its only earlier key was test
    clean = next(
        b
        for b in candidates
        if b not in leaky and sibling_key(b) == b and split_of(b, 0.05, 0.1) == "test"
    )
    source = datasource_package(tmp_path / "pkg", [*leaky, *trained, clean])
    counts = prepare_emoji([source], tmp_path / "out", size=16, progress=False)
    assert counts == {"train": len(trained), "val": 0, "test": 1, "dropped": len(leaky)}
    assert {p.name for p in (tmp_path / "out" / "test" / "images").iterdir()} == {
        f"google-{clean}.png"
    }
    assert {p.name for p in (tmp_path / "out" / "train").iterdir()} == {
        f"google-{k}.png" for k in trained
    }
    assert (tmp_path / "out" / "test" / "masks" / f"google-{clean}.png").is_file()
