"""Write a trained run's weights as the embedded default: fp16 safetensors, paired.

    python scripts/ship_weights.py runs/v3-leg2/model src/maskgit/weights/emoji-demo
    python scripts/ship_weights.py runs/v3-leg3/model OUT --tokenizer runs/v4-leg4/tokenizer

Reads RUN/tokenizer.safetensors and RUN/transformer.safetensors (the EMA weights a run
saves) and RUN/config.yaml, casts the floats to fp16 (half the size; `load_model` reads them
back as fp32) and records the fp16 tokenizer's digest in the transformer, so
`MaskGIT.from_pretrained` checks that the two belong together.

`--tokenizer` ships another tokenizer with the run's transformer: one trained decoder-only
(`tokenizer_training.decoder_only`) from the run's, so it gives the same tokens. That is
checked (same config, same encoder, projection and codebook) before anything is written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from maskgit.checkpoint import (
    TOKENIZER_DIGEST_KEY,
    check_pair,
    load_model,
    save_model,
    weights_digest,
)


def _model_file(path: Path, stage: str) -> Path:
    return path / f"{stage}.safetensors" if path.is_dir() else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder with tokenizer/transformer files")
    parser.add_argument("out", type=Path, help="folder to write (files are replaced)")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="a tokenizer (file or run folder) trained decoder-only from the run's, to ship "
        "instead of the run's",
    )
    args = parser.parse_args()
    check_pair(args.run / "tokenizer.safetensors", args.run / "transformer.safetensors")
    tokenizer = load_model(args.run / "tokenizer.safetensors")
    if args.tokenizer is not None:
        other = load_model(_model_file(args.tokenizer, "tokenizer"))
        if not tokenizer.tokenizes_like(other):
            sys.exit(
                f"--tokenizer {args.tokenizer}: its encoder, projection or codebook differ from "
                f"{args.run / 'tokenizer.safetensors'}, so it gives other tokens than the "
                "transformer was trained on (train it with tokenizer_training.decoder_only=true)"
            )
        tokenizer = other
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer_file = args.out / "tokenizer.safetensors"
    save_model(tokenizer, tokenizer_file, dtype=torch.float16)
    save_model(
        load_model(args.run / "transformer.safetensors"),
        args.out / "transformer.safetensors",
        dtype=torch.float16,
        extra={TOKENIZER_DIGEST_KEY: weights_digest(tokenizer_file)},
    )
    shutil.copyfile(args.run / "config.yaml", args.out / "config.yaml")
    print(
        f"wrote {args.out}: "
        + ", ".join(
            f"{p.name} {p.stat().st_size / 1e6:.1f} MB"
            for p in sorted(args.out.glob("*.safetensors"))
        )
    )


if __name__ == "__main__":
    main()
