"""FID / KID maths and masked-region metrics (maskgit.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from extras import require_extra
from maskgit.metrics import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    masked_l1,
    masked_psnr,
    masked_ssim,
    ssim_map,
)

torch.set_num_threads(1)

METHODS = ("sqrtm", "eigh")


def diagonal_closed_form(mu1, s1, mu2, s2):
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2)))


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_diagonal_closed_form(method):
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert got == pytest.approx(diagonal_closed_form(mu1, s1, mu2, s2), rel=1e-9)


def test_frechet_distance_one_dimensional():
    # d^2 = (m1 - m2)^2 + (sqrt(v1) - sqrt(v2))^2
    got = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert got == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_fid_of_gaussian_samples_matches_closed_form():
    rng = np.random.default_rng(1)
    d, n = 4, 200_000
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 2.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.0, 0.5, 0.5, 3.0])
    f1 = mu1 + rng.normal(size=(n, d)) * np.sqrt(s1)
    f2 = mu2 + rng.normal(size=(n, d)) * np.sqrt(s2)
    expected = diagonal_closed_form(mu1, s1, mu2, s2)
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("method", METHODS)
def test_fid_agrees_with_direct_scipy(method):
    rng = np.random.default_rng(2)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    direct = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(direct, rel=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_fid_of_a_set_with_itself_is_zero(method):
    rng = np.random.default_rng(3)
    f = rng.normal(size=(500, 64)) ** 2
    assert abs(fid_from_features(f, f, method=method)) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_fid_of_a_rank_deficient_set_with_itself_is_zero_to_rounding(method):
    # n < d: sigma is singular, and the square roots of the ~1e-13 rounding noise in its
    # null space add up; the result stays within 1e-7 of tr(sigma).
    rng = np.random.default_rng(3)
    f = rng.normal(size=(20, 64)) ** 2
    _, sigma = feature_statistics(f)
    assert abs(fid_from_features(f, f, method=method)) < 1e-7 * np.trace(sigma)


def test_fid_does_not_depend_on_sample_order():
    rng = np.random.default_rng(4)
    f1, f2 = rng.normal(size=(300, 24)), rng.normal(size=(250, 24)) + 0.3
    base = fid_from_features(f1, f2)
    shuffled = fid_from_features(f1[rng.permutation(300)], f2[rng.permutation(250)])
    assert shuffled == pytest.approx(base, rel=1e-9)
    assert fid_from_features(f2, f1) == pytest.approx(base, rel=1e-7)  # symmetric
    assert base > 0


def test_fid_accepts_torch_and_rank_deficient_features():
    rng = np.random.default_rng(5)
    f1 = torch.from_numpy(rng.normal(size=(10, 128)).astype(np.float32))
    f2 = torch.from_numpy(rng.normal(size=(12, 128)).astype(np.float32) + 1.0)
    fid = fid_from_features(f1, f2)
    assert np.isfinite(fid) and fid > 100  # mean shift alone contributes 128
    assert fid == pytest.approx(fid_from_features(f1, f2, method="eigh"), rel=1e-5)


def test_feature_statistics_shapes_and_values():
    f = np.arange(12.0).reshape(4, 3)
    mu, sigma = feature_statistics(f)
    assert mu.shape == (3,) and sigma.shape == (3, 3)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False))


def test_fid_input_errors():
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        feature_statistics(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="valid: sqrtm, eigh"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# --------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------


def reference_kid(x, y):
    """clean-fid's formula for one subset holding all rows (m = n)."""
    m, d = x.shape
    a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
    b = (x @ y.T / d + 1) ** 3
    return ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m


def test_kid_matches_reference_formula():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 16)), rng.normal(size=(40, 16)) + 0.5
    mean, std = kid_from_features(x, y, subsets=3, subset_size=1000)
    # subset size is clipped to n = 40, so every subset is a permutation of the whole sets
    assert mean == pytest.approx(reference_kid(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_same_distribution_near_zero_and_shift_positive():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same_mean, same_std = kid_from_features(a, b, subsets=20, subset_size=200, seed=0)
    shift_mean, shift_std = kid_from_features(a, b + 0.5, subsets=20, subset_size=200, seed=0)
    assert abs(same_mean) < 0.01
    assert shift_mean > 0.1 and shift_mean > 10 * shift_std
    assert shift_mean > 10 * abs(same_mean)
    # a set against itself reuses rows on both sides: unbiased MMD^2 = 2 (off - diag) / m <= 0
    self_mean, _ = kid_from_features(a, a, subsets=1, subset_size=400)
    k = (a @ a.T / 32 + 1) ** 3
    off = (k.sum() - np.trace(k)) / (400 * 399)
    assert self_mean == pytest.approx(2 * (off - np.trace(k) / 400) / 400, rel=1e-9)
    assert abs(self_mean) < 0.05 * shift_mean


def test_kid_is_seeded():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(50, 8)) + 0.2
    assert kid_from_features(a, b, 5, 20, seed=1) == kid_from_features(a, b, 5, 20, seed=1)
    assert kid_from_features(a, b, 5, 20, seed=1) != kid_from_features(a, b, 5, 20, seed=2)
    with pytest.raises(ValueError, match="same D"):
        kid_from_features(a, np.zeros((5, 3)))


# --------------------------------------------------------------------------------------------
# Masked-region metrics
# --------------------------------------------------------------------------------------------


def image_and_mask(seed=0, size=32):
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.2, 0.8, size=(3, size, size))
    mask = np.zeros((size, size), dtype=bool)
    mask[2:10, 4:14] = True  # repainted region
    return img, mask


def test_identical_images():
    img, mask = image_and_mask()
    assert masked_psnr(img, img, mask) == float("inf")
    assert masked_l1(img, img, mask) == 0.0
    assert masked_ssim(img, img, mask) == pytest.approx(1.0, abs=1e-12)


def test_differences_outside_mask_are_ignored():
    img, mask = image_and_mask()
    result = img.copy()
    result[:, 8:12, 6:10] += 0.1  # inside the mask (partly) ...
    far = result.copy()
    far[:, 20:, :] = 0.0  # ... and more than the SSIM window radius (5 px) away from it
    far[:, :, 24:] = 1.0
    for fn in (masked_psnr, masked_l1, masked_ssim):
        assert fn(far, img, mask) == fn(result, img, mask), fn.__name__


def test_differences_inside_mask_count():
    img, mask = image_and_mask()
    result = img.copy()
    result[:, mask] += 0.1  # a constant error of 0.1 on every repainted pixel
    assert masked_l1(result, img, mask) == pytest.approx(0.1)
    assert masked_psnr(result, img, mask) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert masked_ssim(result, img, mask) < 0.999
    noisy = img.copy()
    noisy[:, mask] = np.random.default_rng(1).uniform(0, 1, size=(3, int(mask.sum())))
    assert masked_ssim(noisy, img, mask) < 0.5


def test_ssim_map_matches_scikit_image():
    skimage_metrics = require_extra("skimage.metrics")
    rng = np.random.default_rng(9)
    x = rng.uniform(0, 1, size=(3, 24, 20))
    y = np.clip(x + rng.normal(0, 0.1, size=x.shape), 0, 1)
    _, full = skimage_metrics.structural_similarity(
        x,
        y,
        data_range=1.0,
        channel_axis=0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )
    np.testing.assert_allclose(ssim_map(x, y)[0], full.mean(axis=0), rtol=1e-10, atol=1e-12)


def test_masked_metrics_batches_and_tensors():
    img0, mask = image_and_mask(0)
    img1, _ = image_and_mask(1)
    target = np.stack([img0, img1])
    result = target.copy()
    result[0, :, mask] += 0.1
    result[1, :, mask] += 0.2
    per_image = masked_l1(result, target, mask, reduction="none")
    np.testing.assert_allclose(per_image, [0.1, 0.2])
    assert masked_l1(result, target, mask) == pytest.approx(0.15)
    # torch tensors, a (N, 1, H, W) mask, float32
    t_res, t_tgt = torch.from_numpy(result).float(), torch.from_numpy(target).float()
    t_mask = torch.from_numpy(np.stack([mask, mask]))[:, None]
    psnr = masked_psnr(t_res, t_tgt, t_mask, reduction="none")
    np.testing.assert_allclose(psnr, [20.0, 10 * np.log10(1 / 0.04)], rtol=1e-5)
    ssim = masked_ssim(t_res, t_tgt, t_mask, reduction="none")
    assert ssim.shape == (2,) and (ssim < 1).all()


def test_masked_metric_errors():
    img, mask = image_and_mask()
    with pytest.raises(ValueError, match="boolean"):
        masked_l1(img, img, mask.astype(np.float32))
    with pytest.raises(ValueError, match="no pixels"):
        masked_psnr(img, img, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shapes differ"):
        masked_ssim(img, img[:, :16], mask)
    with pytest.raises(ValueError, match="does not fit"):
        masked_l1(img, img, mask[:16])
    with pytest.raises(ValueError, match="valid: mean, none"):
        masked_l1(img, img, mask, reduction="sum")
