"""Image folders, deterministic splits and pre-tokenised token shards.

Images in memory are uint8 tensors (N, 3, H, W); models take float in [-1, 1]
(`to_model_range`). Files are read by `maskgit.reader` (any readable image: upright by its
EXIF orientation, 16-bit scaled, transparency on white) and resized to the configured size.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch.utils.data import Dataset
from tqdm import tqdm

from maskgit.fileio import atomic_write
from maskgit.reader import DataError, resize_image
from maskgit.reader import read_image as load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 40_000_000  # decompression-bomb guard (a 6324 x 6324 image)
TOKENS_FILE = "tokens.safetensors"
INDEX_FILE = "index.txt"  # the names of token folders written before issue #29 (one a line)
NAMES_KEY = "names"  # the token file's metadata: JSON list of the images' file names
SKIPPED_NAMES_SHOWN = 3  # unreadable files named in load_folder's warning


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder (sorted by name); errors name the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: folder does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = len(files) - len(images)
    if skipped:
        warnings.warn(f"{folder}: skipped {skipped} non-image file(s)", stacklevel=2)
    if not images:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return images


def load_folder(
    folder: str | Path, size: int, progress: bool = True
) -> tuple[torch.Tensor, list[str]]:
    """All readable images of a folder as uint8 (N, 3, size, size) plus their file names.

    Unreadable files (empty, truncated, corrupt, or read by PIL but not an image the reader
    takes, e.g. a float TIFF of 0..255) are skipped and counted in one warning naming the
    first few; none readable is an error naming the first file and why. Files whose name is
    no plain line of UTF-8 text (`plain_name`) are skipped the same way, before any is read.
    Images of another size than `size` are resized (squashed to a square), said once.
    """
    paths = _plain_names(list_images(folder), folder)
    arrays, names, bad, resized = [], [], [], []
    for path in tqdm(paths, desc=f"reading {Path(folder).name}", disable=not progress, leave=False):
        try:
            array = load_image(path)  # (H, W, 3) at its own size
            if array.shape[:2] != (size, size):
                resized.append(f"{path.name} ({array.shape[1]}x{array.shape[0]})")
                array = resize_image(array, size)
            arrays.append(array)
            names.append(path.name)
        except Exception as exc:  # decoders of arbitrary files raise many types: the file's fault
            reason = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            bad.append((path.name, reason))
    if not arrays:  # one error naming the first file and why (no warning line before it)
        raise DataError(
            f"{folder}: none of the {len(paths)} image files could be read, e.g. {bad[0][1]}"
        )
    if bad:
        shown = ", ".join(name for name, _ in bad[:SKIPPED_NAMES_SHOWN])
        more = (
            f" and {len(bad) - SKIPPED_NAMES_SHOWN} more" if len(bad) > SKIPPED_NAMES_SHOWN else ""
        )
        warnings.warn(
            f"{folder}: skipped {len(bad)} unreadable image(s) of {len(paths)}: {shown}{more} "
            f"(first: {bad[0][1]})",
            stacklevel=2,
        )
    if resized:
        warnings.warn(
            f"{folder}: resized {len(resized)} of {len(arrays)} image(s) to the model's "
            f"{size}x{size}, e.g. {resized[0]} (set tokenizer.image_size for another size)",
            stacklevel=2,
        )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, names


def plain_name(name: str) -> bool:
    """A file name that is one line of UTF-8 text: no line break (of any kind str.splitlines
    knows) and no byte that is not UTF-8 (which Python holds as a lone surrogate)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return name.splitlines() == [name]


def _plain_names(paths: list[Path], folder: str | Path) -> list[Path]:
    """`paths` without those whose name is not plain (one warning naming the first)."""
    odd = [path for path in paths if not plain_name(path.name)]
    if not odd:
        return paths
    if len(odd) == len(paths):
        raise DataError(
            f"{folder}: every image's file name holds a line break or is not UTF-8, e.g. "
            f"{odd[0].name!r}; rename the files"
        )
    warnings.warn(
        f"{folder}: skipped {len(odd)} image(s) whose file name holds a line break or is not "
        f"UTF-8 (rename to use them), e.g. {odd[0].name!r}",
        stacklevel=3,
    )
    return [path for path in paths if plain_name(path.name)]


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, 3, H, W) (clamped, rounded)."""
    return ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def split_of(name: str, val_fraction: float, test_fraction: float = 0.0) -> str:
    """'train', 'val' or 'test' from a hash of the file name: stable across runs and machines."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + val_fraction:
        return "val"
    return "train"


def split_indices(names: list[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """Train and validation indices of `names` by hash split."""
    train, val = [], []
    for i, name in enumerate(names):
        base = name.split("#", 1)[0]  # a flipped copy ("x.png#hflip") follows its original
        (val if split_of(base, val_fraction) == "val" else train).append(i)
    if not train:
        raise DataError(f"no training images left after a {val_fraction:.0%} validation split")
    return train, val


class TensorImages(Dataset):
    """uint8 images (N, 3, H, W) as a dataset of float tensors in [-1, 1]."""

    def __init__(self, images: torch.Tensor, hflip: bool = False):
        self.images = images
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.images) * (2 if self.hflip else 1)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = to_model_range(self.images[index % len(self.images)])
        return image.flip(-1) if index >= len(self.images) else image


class TokenDataset(Dataset):
    """Pre-tokenised images: int64 token rows (N_tokens,) per image."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens.reshape(len(tokens), -1)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tokens[index].long()


def save_tokens(folder: str | Path, tokens: torch.Tensor, names: list[str], meta: dict) -> None:
    """Write token grids (N, h, w) as one compact integer shard holding its file names.

    One file, written atomically, so that names and grids never disagree; the names are in
    its metadata (NAMES_KEY, a JSON list). An `index.txt` left by an older tokenize is removed.
    """
    if len(names) != len(tokens):
        raise ValueError(f"{len(names)} names for {len(tokens)} token grids")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.int16 if int(meta["codebook_size"]) <= 32767 else torch.int32
    metadata = {k: json.dumps(v) for k, v in {**meta, NAMES_KEY: list(names)}.items()}
    atomic_write(
        folder / TOKENS_FILE,
        lambda tmp: save_file(
            {"tokens": tokens.to(dtype).contiguous()}, str(tmp), metadata=metadata
        ),
    )
    stale = folder / INDEX_FILE
    if stale.is_file():
        stale.unlink()


def load_tokens(folder: str | Path) -> tuple[torch.Tensor, list[str], dict]:
    """Read a token folder: tokens (N, h, w) int64, file names, metadata dict.

    Names come from the token file; a folder written before they were kept there has them
    in `index.txt`, one a line.
    """
    folder = Path(folder)
    path = folder / TOKENS_FILE
    if not path.is_file():
        raise DataError(f"{folder}: no {TOKENS_FILE} (make one with `maskgit tokenize`)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
        tokens = load_file(str(path))["tokens"].long()
        meta = {k: json.loads(v) for k, v in raw.items()}
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: unreadable token file ({exc})") from exc
    names = meta.pop(NAMES_KEY, None)
    source = path
    if names is None:  # an older token folder
        source = folder / INDEX_FILE
        names = source.read_text().splitlines() if source.is_file() else []
    if len(names) != len(tokens):
        raise DataError(f"{source}: {len(names)} names for {len(tokens)} token grids")
    return tokens, names, meta
