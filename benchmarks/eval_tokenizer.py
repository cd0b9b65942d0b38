"""Tokenizer reconstruction quality on a folder: PSNR (dB, full image) and codebook usage.

python benchmarks/eval_tokenizer.py --tokenizer runs/emoji-model --data data/emoji-google/test/images
"""

from __future__ import annotations

import argparse

import torch

from maskgit.checkpoint import load_model
from maskgit.data import load_folder, to_model_range, to_uint8
from maskgit.pretokenize import tokenizer_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="model/run folder or .safetensors")
    parser.add_argument("--data", required=True, help="folder of images")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tokenizer = load_model(tokenizer_file(args.tokenizer), "tokenizer")
    images, _ = load_folder(args.data, tokenizer.cfg.image_size, progress=False)
    psnrs, used = [], torch.zeros(tokenizer.cfg.codebook_size, dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, len(images), args.batch_size):
            batch = images[start : start + args.batch_size]
            tokens = tokenizer.encode(to_model_range(batch))
            recon = to_uint8(tokenizer.decode_tokens(tokens)).float()
            mse = (recon - batch.float()).pow(2).flatten(1).mean(1)
            psnrs.append(10 * torch.log10(255.0**2 / mse.clamp_min(1e-10)))
            used[tokens.unique()] = True
    psnr = torch.cat(psnrs)
    print(
        f"images {len(images)}  reconstruction PSNR {psnr.mean():.2f} dB (median "
        f"{psnr.median():.2f})  codebook usage {int(used.sum())}/{len(used)} "
        f"({used.float().mean():.1%})"
    )


if __name__ == "__main__":
    main()
