"""Write a trained run's weights as the embedded default: fp16 safetensors, paired.

    python scripts/ship_weights.py runs/v3-leg2/model src/maskgit/weights/emoji-demo

Reads RUN/tokenizer.safetensors and RUN/transformer.safetensors (the EMA weights a run
saves) and RUN/config.yaml, casts the floats to fp16 (half the size; `load_model` reads them
back as fp32) and records the fp16 tokenizer's digest in the transformer, so
`MaskGIT.from_pretrained` checks that the two belong together.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from maskgit.checkpoint import (
    TOKENIZER_DIGEST_KEY,
    check_pair,
    load_model,
    save_model,
    weights_digest,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder with tokenizer/transformer files")
    parser.add_argument("out", type=Path, help="folder to write (files are replaced)")
    args = parser.parse_args()
    check_pair(args.run / "tokenizer.safetensors", args.run / "transformer.safetensors")
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = args.out / "tokenizer.safetensors"
    save_model(load_model(args.run / "tokenizer.safetensors"), tokenizer, dtype=torch.float16)
    save_model(
        load_model(args.run / "transformer.safetensors"),
        args.out / "transformer.safetensors",
        dtype=torch.float16,
        extra={TOKENIZER_DIGEST_KEY: weights_digest(tokenizer)},
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
