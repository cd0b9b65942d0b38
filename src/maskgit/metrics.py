"""Image-quality metrics: FID and KID maths on feature arrays, masked-region PSNR / L1 / SSIM.

Pure: imports numpy, scipy and torch only, nothing of the package. Feature extraction (the
Inception network) lives in `maskgit.fid`; this module only does the arithmetic.

Conventions
    features   float array (N, D): one row per image (D = 2048 for Inception pool3).
    images     float in [0, 1], channel-first: (C, H, W) or a batch (N, C, H, W);
               numpy arrays or torch tensors.
    mask       bool, True = repainted (the region the model generated), the package's pixel-mask
               convention: (H, W), (N, H, W), (1, H, W) or (N, 1, H, W).

Small sets bias FID upwards (the covariance of N < D samples is rank-deficient), so always
report N beside it, and KID (unbiased) with its standard deviation over subsets.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch

FID_METHODS = ("sqrtm", "eigh")
REDUCTIONS = ("mean", "none")

# SSIM constants of Wang et al. (2004), as in scikit-image's `gaussian_weights=True` mode.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5, an 11 x 11 window
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# The largest imaginary part tolerated on the diagonal of sqrtm(sigma1 @ sigma2) (pytorch-fid).
_MAX_IMAG = 1e-3


def _as_numpy(x: np.ndarray | torch.Tensor, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


# --------------------------------------------------------------------------------------------
# FID / KID
# --------------------------------------------------------------------------------------------


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64.

    The covariance is the unbiased sample covariance (`np.cov`, ddof=1), as in pytorch-fid and
    the TTUR reference. Needs N >= 2.
    """
    f = _as_numpy(features)
    if f.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinity")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) the pytorch-fid way: scipy sqrtm, eps offset if singular."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    bad = not np.isfinite(covmean).all() or (
        np.iscomplexobj(covmean) and np.abs(np.diagonal(covmean).imag).max() > _MAX_IMAG
    )
    if bad:
        # Near-singular product: offset both diagonals (pytorch-fid / TTUR).
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if not np.isfinite(covmean).all():
        raise ValueError("sqrtm(sigma1 @ sigma2) is not finite even with the eps offset")
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > _MAX_IMAG:
            raise ValueError(
                f"sqrtm(sigma1 @ sigma2) has an imaginary component {imag:.3g} > {_MAX_IMAG}; "
                "the covariances are numerically unstable (try method='eigh')"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    eigval, eigvec = np.linalg.eigh(sigma)
    return (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) = sum sqrt(eig(S1^1/2 S2 S1^1/2)): symmetric, always real."""
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigval = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigval, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    method: str = "sqrtm",
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

        d^2 = ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))

    mu1, mu2: (D,); sigma1, sigma2: (D, D) covariances.
    method "sqrtm" (default) follows pytorch-fid exactly: scipy.linalg.sqrtm of the product,
    retried with `eps` added to both diagonals when the result is not finite or has a large
    imaginary part; a small imaginary residue is dropped. Method "eigh" computes the same
    trace through symmetric eigendecompositions (about 3x faster at D = 2048 and never
    complex); the two agree to ~1e-5 relative.
    """
    if method not in FID_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(FID_METHODS)}")
    mu1, mu2 = np.atleast_1d(_as_numpy(mu1)), np.atleast_1d(_as_numpy(mu2))
    sigma1, sigma2 = np.atleast_2d(_as_numpy(sigma1)), np.atleast_2d(_as_numpy(sigma2))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mean vectors must be (D,) of equal length, got {mu1.shape}, {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
    else:
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(
    features1: np.ndarray | torch.Tensor,
    features2: np.ndarray | torch.Tensor,
    eps: float = 1e-6,
    method: str = "sqrtm",
) -> float:
    """FID between two feature sets (N1, D) and (N2, D); see `frechet_distance`."""
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    return frechet_distance(mu1, sigma1, mu2, sigma2, eps=eps, method=method)


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / D + 1)^3; x, y: (m, D), same m."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    sum_xx = k_xx.sum() - np.trace(k_xx)
    sum_yy = k_yy.sum() - np.trace(k_yy)
    return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid_from_features(
    features1: np.ndarray | torch.Tensor,
    features2: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) of the unbiased polynomial-kernel MMD^2.

    features1 (N1, D), features2 (N2, D). Each of `subsets` rounds draws
    m = min(subset_size, N1, N2) rows without replacement from each set and evaluates the
    unbiased MMD^2 with k(a, b) = (a.b / D + 1)^3 (Binkowski et al. 2018; the torch-fidelity
    and clean-fid estimator). Unbiased means it can be slightly negative; it is only ~0 for
    *independent* samples of one distribution (a set against itself reuses the same rows on
    both sides and comes out slightly negative).
    """
    f1, f2 = _as_numpy(features1), _as_numpy(features2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {f1.shape}, {f2.shape}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got subset size {m}")
    rng = np.random.default_rng(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        mmds[i] = _polynomial_mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())


# --------------------------------------------------------------------------------------------
# Masked-region metrics
# --------------------------------------------------------------------------------------------


def _image_batches(
    result: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """-> result, target as float64 arrays (N, C, H, W) of equal shape, or ValueError."""
    x, y = _as_numpy(result), _as_numpy(target)
    if x.shape != y.shape:
        raise ValueError(f"result and target shapes differ: {x.shape} vs {y.shape}")
    if x.ndim == 3:
        x, y = x[None], y[None]
    if x.ndim != 4:
        raise ValueError(f"images must be (C, H, W) or (N, C, H, W), got shape {x.shape}")
    return x, y


def _prepare_masked(
    result: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> result, target (N, C, H, W) float64 and mask (N, H, W) bool."""
    x, y = _image_batches(result, target)
    n, _, h, w = x.shape
    mk = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if mk.dtype != np.bool_:
        raise ValueError(f"mask must be boolean (True = repainted), got dtype {mk.dtype}")
    if mk.ndim == 4:
        if mk.shape[1] != 1:
            raise ValueError(f"a 4-D mask must be (N, 1, H, W), got {mk.shape}")
        mk = mk[:, 0]
    if mk.ndim == 2:
        mk = mk[None]
    if mk.ndim != 3 or mk.shape[1:] != (h, w) or mk.shape[0] not in (1, n):
        raise ValueError(f"mask shape {mask.shape} does not fit images of shape {tuple(x.shape)}")
    mk = np.broadcast_to(mk, (n, h, w))
    counts = mk.reshape(n, -1).sum(axis=1)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"mask selects no pixels for image(s) {empty}")
    return x, y, mk


def _reduce(values: np.ndarray, reduction: str) -> float | np.ndarray:
    if reduction == "mean":
        return float(values.mean())
    return values


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")


def _masked_mean(per_pixel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """per_pixel (N, H, W), mask (N, H, W) -> (N,) mean over the True pixels of each image."""
    return (per_pixel * mask).reshape(len(mask), -1).sum(1) / mask.reshape(len(mask), -1).sum(1)


def masked_l1(result, target, mask, reduction: str = "mean") -> float | np.ndarray:
    """Mean absolute error over the repainted pixels (all channels).

    result, target: (C, H, W) or (N, C, H, W) in [0, 1]; mask: bool, True = repainted.
    Returns the mean of the per-image values, or (N,) values with reduction="none".
    """
    _check_reduction(reduction)
    x, y, mk = _prepare_masked(result, target, mask)
    per_pixel = np.abs(x - y).mean(axis=1)
    return _reduce(_masked_mean(per_pixel, mk), reduction)


def masked_psnr(
    result, target, mask, data_range: float = 1.0, reduction: str = "mean"
) -> float | np.ndarray:
    """PSNR in dB over the repainted pixels: 10 log10(data_range^2 / MSE_masked).

    result, target: (C, H, W) or (N, C, H, W) in [0, data_range]; mask: bool, True = repainted.
    Identical images give inf. Returns the mean of the per-image PSNRs (so one identical image
    makes the mean inf), or (N,) values with reduction="none".
    """
    _check_reduction(reduction)
    x, y, mk = _prepare_masked(result, target, mask)
    mse = _masked_mean(((x - y) ** 2).mean(axis=1), mk)
    with np.errstate(divide="ignore"):
        psnr = 10.0 * np.log10(data_range**2 / mse)
    return _reduce(psnr, reduction)


def ssim_map(result, target, data_range: float = 1.0) -> np.ndarray:
    """Full-size SSIM map (N, H, W), averaged over channels.

    Gaussian window sigma 1.5 truncated at radius 5 (11 x 11), K1 = 0.01, K2 = 0.03, population
    statistics (Wang et al. 2004), borders by 'reflect' padding: the map scikit-image's
    `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    full=True)` returns, without its border crop.
    result, target: (C, H, W) or (N, C, H, W).
    """
    x, y = _image_batches(result, target)

    def blur(a: np.ndarray) -> np.ndarray:
        return scipy.ndimage.gaussian_filter(
            a, sigma=(0, 0, SSIM_SIGMA, SSIM_SIGMA), truncate=SSIM_TRUNCATE, mode="reflect"
        )

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean(axis=1)


def masked_ssim(
    result, target, mask, data_range: float = 1.0, reduction: str = "mean"
) -> float | np.ndarray:
    """SSIM over the repainted region: the full-image SSIM map (`ssim_map`) averaged over mask.

    The map is computed on the whole image (windows near the mask edge see known pixels too),
    then averaged over the True pixels. result, target: (C, H, W) or (N, C, H, W) in
    [0, data_range]; mask: bool, True = repainted. Identical images give 1.
    """
    _check_reduction(reduction)
    x, y, mk = _prepare_masked(result, target, mask)
    return _reduce(_masked_mean(ssim_map(x, y, data_range), mk), reduction)
