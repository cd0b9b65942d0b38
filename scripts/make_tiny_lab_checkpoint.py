"""Write a tiny checkpoint set in the course lab's layout, and a tiny lab-style test folder.

    python scripts/make_tiny_lab_checkpoint.py --out runs/tiny-lab

writes OUT/VQGAN.yml, OUT/VQGAN.pt, OUT/MaskGit.yml and OUT/transformer.pt the way the lab's
scripts save them (torch.save of state dicts), with random weights of a 16x16 -> 4x4-token
model (32 codes, 2 layers), plus OUT/test/{masked_image,mask64,gt}: a few bundled sample
images with the lab's mask convention (white = keep). docs/lab-recipe.md runs on it. The
models come from tests/lab_layout.py, the test-only stand-in for the lab's code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lab_layout import ATTENTIONS, write_lab_files  # noqa: E402

SAMPLES = ROOT / "src" / "maskgit" / "samples"


def write_test_folder(folder: Path, n: int, size: int = 64) -> None:
    """n sample images: ground truth, masked copy (hole painted black), mask (white = keep)."""
    names = sorted((SAMPLES / "images").glob("*.png"))[:n]
    for sub in ("gt", "masked_image", "mask64"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(names):
        rgba = Image.open(path).convert("RGBA").resize((size, size), Image.BICUBIC)
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = np.asarray(Image.alpha_composite(white, rgba).convert("RGB")).copy()
        keep = np.ones((size, size), dtype=bool)
        a, b = size // 4 + (i % 3) * 4, size // 2 + (i % 2) * 8
        keep[a : a + size // 3, b - size // 4 : b + size // 8] = False  # a rectangular hole
        name = f"image_{i:03d}.png"
        Image.fromarray(image).save(folder / "gt" / name)
        masked = image.copy()
        masked[~keep] = 0
        Image.fromarray(masked).save(folder / "masked_image" / name)
        Image.fromarray(np.where(keep, 255, 0).astype(np.uint8)).save(folder / "mask64" / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument(
        "--attention",
        default="report",
        choices=sorted(ATTENTIONS),
        help="the student's attention layout (default report: the lab report's "
        "MultiHeadAttention, a fused qkv_proj in per-head order; import it with "
        "--qkv-order per-head)",
    )
    parser.add_argument(
        "--save-as",
        default="bare",
        choices=("bare", "training", "whole"),
        help="bare state_dict, {model_state_dict, optimizer_state_dict, epoch}, or the whole "
        "MaskGit module (default bare)",
    )
    parser.add_argument("--images", type=int, default=8, help="test images (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    write_lab_files(out, attention=args.attention, save_as=args.save_as, seed=args.seed)
    write_test_folder(out / "test", args.images)
    print(f"wrote {out}/VQGAN.yml, VQGAN.pt, MaskGit.yml, transformer.pt and {out}/test/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
