"""Pre-tokenising: encode a folder once so transformer training never runs the encoder."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from maskgit.checkpoint import load_model, read_metadata
from maskgit.config import Preset
from maskgit.data import DataError, load_folder, load_tokens, save_tokens, to_model_range
from maskgit.tokenizer.model import VQGAN


def tokenizer_file(path: str | Path) -> Path:
    """A tokenizer .safetensors file from a file path or a run/model folder."""
    path = Path(path)
    return path / "tokenizer.safetensors" if path.is_dir() else path


@torch.no_grad()
def encode_images(
    tokenizer: VQGAN, images: torch.Tensor, batch_size: int = 64, progress: bool = True
) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> tokens (N, h, w) int64, in batches."""
    device = next(tokenizer.parameters()).device
    out = []
    for start in tqdm(
        range(0, len(images), batch_size), desc="tokenising", disable=not progress, leave=False
    ):
        batch = to_model_range(images[start : start + batch_size]).to(device)
        out.append(tokenizer.encode(batch).cpu())
    return torch.cat(out)


def tokenize_folder(
    tokenizer_path: str | Path,
    data: str | Path,
    out: str | Path,
    hflip: bool = False,
    batch_size: int = 64,
    device: str | None = None,
) -> int:
    """Encode every image of `data` with the tokenizer; write token shard + index to `out`."""
    path = tokenizer_file(tokenizer_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_model(path, expected_kind="tokenizer", device=device)
    images, names = load_folder(data, tokenizer.cfg.image_size)
    if hflip:
        images = torch.cat([images, images.flip(-1)])
        names = names + [f"{n}#hflip" for n in names]
    tokens = encode_images(tokenizer, images, batch_size)
    meta = {
        "codebook_size": tokenizer.cfg.codebook_size,
        "grid": tokenizer.cfg.token_grid,
        "tokenizer": str(path.resolve()),
        "source": str(Path(data).resolve()),
    }
    save_tokens(out, tokens, names, meta)
    return len(tokens)


def tokens_for_training(
    preset: Preset,
    tokens_dir: str | None,
    data_dir: str | None,
    tokenizer_path: str | None,
    run_dir: str | Path,
    device: str | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[str], Path | None]:
    """Token grids for transformer training, checked against the preset, their names and the
    tokenizer file that made them (when known).

    From a token folder, or by tokenising `data_dir` on the fly. Nothing is written: the
    training run copies the tokenizer into its folder once its checks passed, so that the run
    folder is a complete model for `MaskGIT` (`train.train_transformer(tokenizer=...)`).
    """
    if tokens_dir is not None:
        tokens, names, meta = load_tokens(tokens_dir)
        tokenizer_path = tokenizer_path or meta.get("tokenizer")
        if int(meta.get("codebook_size", -1)) != preset.transformer.codebook_size:
            raise DataError(
                f"{tokens_dir}: tokens come from a tokenizer with codebook "
                f"{meta.get('codebook_size')}, the transformer expects "
                f"{preset.transformer.codebook_size}"
            )
    else:
        if tokenizer_path is None:
            raise DataError("--data needs --tokenizer to tokenise images on the fly")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = load_model(tokenizer_file(tokenizer_path), "tokenizer", device)
        images, names = load_folder(data_dir, tokenizer.cfg.image_size, progress=progress)
        tokens = encode_images(tokenizer, images, progress=progress)
    source = tokenizer_file(tokenizer_path) if tokenizer_path is not None else None
    if source is not None:
        read_metadata(source)  # a readable tokenizer file, before any training
    return tokens, names, source
