"""prepare-data on iconify emoji sets: rasterised SVG, split by code point, licences checked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from extras import require_extra
from maskgit.data import DataError, split_of
from maskgit.prepare import iconify_code_points, prepare_emoji

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
    assert sum(counts.values()) == 2  # the unknown name is left out
    written = {p.name for p in (tmp_path / "out").rglob("testset-*.png")}
    assert written == {"testset-1f600.png", "testset-1f44b-1f3ff.png"}  # named by code points
    for key in ("1f600", "1f44b-1f3ff"):
        split = split_of(key, 0.05, 0.1)
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
