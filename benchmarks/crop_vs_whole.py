"""Crop path vs whole-image path of `MaskGIT.inpaint` on images larger than the model.

The test split (64x64 emoji, white = repaint masks) is upscaled to each of --sizes (bicubic images,
nearest masks: each mask pixel becomes a block, so the hole is the same region) and inpainted
two ways, both pasted back into the masked pixels at full resolution:
    crop    the default: a square window around the hole (`pipeline.crop_window`, the hole's
            bounding box x CROP_CONTEXT, at least the model's size) brought to the model's size
    whole   the whole picture shrunk to the model's size (crop_context = infinity)
The 64x64 originals are scored too (there every window is the whole image: the rows must
match). Scores against the ground truth at the same size: FID (TF-Inception pool3, N images;
small N makes FID biased upwards, compare rows of the same N only) and masked PSNR (dB, over
the repainted pixels).

PYTHONPATH=src nice -n 19 python benchmarks/crop_vs_whole.py \\
    --images /work/main/data/emoji-google/test/images \\
    --masks /work/main/data/emoji-google/test/masks --limit 0
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from PIL import Image

from maskgit.evaluate import load_test_set
from maskgit.fid import InceptionFeatures
from maskgit.metrics import fid_from_features, masked_psnr
from maskgit.options import DecodingOptions
from maskgit.pipeline import MaskGIT

BATCH = 32


def upscale(images: torch.Tensor, masks: torch.Tensor, size: int):
    """uint8 (N, 3, s, s), bool (N, s, s) -> (N, 3, size, size) bicubic, masks nearest."""
    big = [
        torch.from_numpy(
            np.array(
                Image.fromarray(x.permute(1, 2, 0).numpy()).resize((size, size), Image.BICUBIC)
            )
        ).permute(2, 0, 1)
        for x in images
    ]
    big_masks = torch.nn.functional.interpolate(masks[:, None].float(), size=size, mode="nearest")
    return torch.stack(big), big_masks[:, 0] > 0


def run(model, images, masks, options, **kwargs):
    outputs, windows = [], []
    for start in range(0, len(images), BATCH):
        part = slice(start, start + BATCH)
        result = model.inpaint(
            list(images[part]),
            list(masks[part]),
            options,
            first_index=start,
            **kwargs,
        )
        outputs += [torch.from_numpy(np.array(x)).permute(2, 0, 1) for x in result.images]
        windows += result.windows
    return torch.stack(outputs), windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded one)")
    parser.add_argument("--images", required=True, help="test images (the ground truth)")
    parser.add_argument("--masks", required=True, help="masks with the same names (white = hole)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 256], help="sides to score (64: the originals)"
    )
    parser.add_argument("--limit", type=int, default=0, help="evenly spaced subset (0 = all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = MaskGIT.from_pretrained(args.model, device="cpu")
    test = load_test_set(args.images, args.masks, None, model.image_size, limit=args.limit)
    options = DecodingOptions()  # the shipped defaults (DEFAULT_DECODING)
    inception = InceptionFeatures(None, device="cpu", progress=False)
    n = len(test.names)
    print(f"N = {n}; decoding: {options.as_dict()}")
    print(
        "| images | path | windows that are crops | mean window side | FID | masked PSNR dB "
        "| seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        images, masks = test.images, test.masks
        if size != model.image_size:
            images, masks = upscale(test.truth, test.masks, size)
        truth_features = inception.features(images)
        previous = None
        for path, crop_context in (("crop", None), ("whole", math.inf)):
            started = time.perf_counter()
            kwargs = {} if crop_context is None else {"crop_context": crop_context}
            out, windows = run(model, images, masks, options, **kwargs)
            seconds = time.perf_counter() - started
            known = ~masks[:, None].expand_as(out)
            assert torch.equal(out[known], images[known]), "pixels outside the mask changed"
            if previous is not None and torch.equal(out, previous[0]):
                features = previous[1]  # the same images (every window whole): same scores
            else:
                features = inception.features(out)
            previous = (out, features)
            fid = fid_from_features(features, truth_features)
            psnr = masked_psnr(out.float() / 255, images.float() / 255, masks)
            crops = sum(not w.whole for w in windows)
            side = np.mean([w.side for w in windows])
            print(
                f"| {size}x{size} | {path} | {crops}/{n} | {side:.0f} | {fid:.2f} | {psnr:.2f} "
                f"| {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
