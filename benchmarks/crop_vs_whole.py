"""Crop path vs whole-image path of `MaskGIT.inpaint` on images larger than the model.

Two kinds of large image, both from the test split (64x64 emoji, white = repaint masks):
    upscaled  each test emoji upscaled to each of --sizes (bicubic images, nearest masks: each
              mask pixel becomes a block, so the hole is the same region); the hole is large
              in the picture and the whole picture, shrunk, is exactly what the model knows
    mosaic    what the crop path is for: a K x K grid (--mosaic K) of different test emoji at
              their own 64x64 scale; image i of the split sits in cell i mod K^2 with its test
              mask, the other cells hold the next emoji of the split, unmasked; the hole is small
              in the big picture, and the scores are taken on the holed cell (64x64)
and inpainted two ways, both pasted back into the masked pixels at full resolution:
    crop    a square window around the hole (`pipeline.crop_window`: the hole's bounding box
            x context, at least the model's size; the whole picture when that window is over
            limit x the image's side) brought to the model's size; one row per --contexts x
            --limits (default: the pipeline's CROP_CONTEXT, CROP_LIMIT)
    whole   the whole picture shrunk to the model's size (crop_context = infinity)
A crop row decodes only the images whose window differs from the whole path's (the others
come out the same by construction: same window, same seed); "images decoded" counts them.
The 64x64 originals (--sizes 64) are scored too: every window is the whole image there.
Scores against the ground truth: FID (TF-Inception pool3, N images; small N makes FID biased
upwards, compare rows of the same N only) and masked PSNR (dB, over the repainted pixels).

PYTHONPATH=src nice -n 19 python benchmarks/crop_vs_whole.py \\
    --images /work/main/data/emoji-google/test/images \\
    --masks /work/main/data/emoji-google/test/masks --limit 0 --sizes 256 --mosaic 4 \\
    --contexts 2 3 --limits 1 0.5
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
from maskgit.pipeline import CROP_CONTEXT, CROP_LIMIT, MaskGIT, crop_window

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


def run(model, images, masks, options, indices, **kwargs) -> torch.Tensor:
    """Inpaint images[indices] (each with its own seed, options.seed + index), by batches of
    consecutive indices."""
    outputs, index = [], 0
    while index < len(indices):
        end = index + 1
        while end < len(indices) and end - index < BATCH and indices[end] == indices[end - 1] + 1:
            end += 1
        part = slice(indices[index], indices[end - 1] + 1)
        result = model.inpaint(
            list(images[part]), list(masks[part]), options, first_index=indices[index], **kwargs
        )
        outputs += [torch.from_numpy(np.array(x)).permute(2, 0, 1) for x in result.images]
        index = end
    return torch.stack(outputs) if outputs else images[:0]


def mosaic(images: torch.Tensor, masks: torch.Tensor, k: int):
    """K x K mosaics of uint8 (N, 3, s, s) images: mosaic i holds image i in cell i mod K^2
    with its mask, the other cells the next images (cyclic), unmasked.
    Returns (images (N, 3, K s, K s), masks (N, K s, K s), cell rows, cell cols)."""
    n, _, s, _ = images.shape
    big = torch.empty(n, 3, k * s, k * s, dtype=torch.uint8)
    big_masks = torch.zeros(n, k * s, k * s, dtype=torch.bool)
    rows, cols = [], []
    for i in range(n):
        holed = i % (k * k)
        for cell in range(k * k):
            r, c = divmod(cell, k)
            big[i, :, r * s : (r + 1) * s, c * s : (c + 1) * s] = images[(i + cell - holed) % n]
        r, c = divmod(holed, k)
        big_masks[i, r * s : (r + 1) * s, c * s : (c + 1) * s] = masks[i]
        rows.append(slice(r * s, (r + 1) * s))
        cols.append(slice(c * s, (c + 1) * s))
    return big, big_masks, rows, cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded one)")
    parser.add_argument("--images", required=True, help="test images (the ground truth)")
    parser.add_argument("--masks", required=True, help="masks with the same names (white = hole)")
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[64, 256], help="sides to score (64: the originals)"
    )
    parser.add_argument(
        "--mosaic", type=int, nargs="*", default=[4], help="K x K mosaic cases (none: skip)"
    )
    parser.add_argument("--contexts", type=float, nargs="+", default=[CROP_CONTEXT])
    parser.add_argument("--limits", type=float, nargs="+", default=[CROP_LIMIT])
    parser.add_argument("--limit", type=int, default=0, help="evenly spaced subset (0 = all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-fid", action="store_true", help="masked PSNR only (no Inception: much faster)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = MaskGIT.from_pretrained(args.model, device="cpu")
    test = load_test_set(args.images, args.masks, None, model.image_size, limit=args.limit)
    options = DecodingOptions()  # the shipped defaults (DEFAULT_DECODING)
    inception = None if args.no_fid else InceptionFeatures(None, device="cpu", progress=False)

    def extract(images: torch.Tensor) -> np.ndarray:
        if inception is None:
            return np.zeros((len(images), 1), np.float32)
        return inception.features(images)

    n = len(test.names)
    print(f"N = {n}; decoding: {options.as_dict()}")
    print(
        "| images | path | context | limit | windows that are crops | mean window side | FID "
        "| masked PSNR dB | images decoded | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    cases = []
    for size in args.sizes:
        if size == model.image_size:
            cases.append((f"{size}x{size}", test.images, test.masks, None))
        else:
            cases.append((f"{size}x{size} upscaled", *upscale(test.truth, test.masks, size), None))
    for k in args.mosaic:
        big, big_masks, rows, cols = mosaic(test.truth, test.masks, k)
        side = k * model.image_size
        cases.append((f"{side}x{side} mosaic {k}x{k} (holed cell)", big, big_masks, (rows, cols)))
    truth_cells = extract(test.truth)
    configs = [("whole", math.inf, 1.0)] + [
        ("crop", c, lim) for c in args.contexts for lim in args.limits
    ]
    for name, images, masks, cells in cases:
        if cells is None:
            truth, truth_masks = images, masks
            truth_features = truth_cells if images is test.images else extract(images)
        else:
            truth, truth_masks, truth_features = test.truth, test.masks, truth_cells
        whole_windows: list = []
        done: dict = {}  # windows -> (images, features) of a row already decoded
        whole: tuple = ()  # (images, features) of the whole path
        for path, context, limit in configs:
            windows = [crop_window(m, model.image_size, context, limit) for m in masks]
            if path == "whole":
                whole_windows, changed = windows, list(range(n))
            else:  # an image whose window is the whole path's comes out the same: reuse it
                changed = [i for i in range(n) if windows[i] != whole_windows[i]]
            started = time.perf_counter()
            out, features = whole if whole else (None, None)
            if tuple(windows) in done:  # another row had the same windows: the same images
                out, features = done[tuple(windows)]
                changed = []
            elif changed:
                new = run(
                    model, images, masks, options, changed, crop_context=context, crop_limit=limit
                )
                known = ~masks[changed][:, None].expand_as(new)
                assert torch.equal(new[known], images[changed][known]), "known pixels changed"
                if cells is not None:  # score the holed cell
                    rows, cols = cells
                    new = torch.stack(
                        [x[:, rows[i], cols[i]] for x, i in zip(new, changed, strict=True)]
                    )
                new_features = extract(new)
                if path == "whole":
                    out, features = whole = new, new_features
                else:
                    out, features = out.clone(), features.copy()
                    out[changed], features[changed] = new, new_features
            done[tuple(windows)] = (out, features)
            seconds = time.perf_counter() - started
            fid = math.nan if inception is None else fid_from_features(features, truth_features)
            psnr = masked_psnr(out.float() / 255, truth.float() / 255, truth_masks)
            crops = sum(not w.whole for w in windows)
            side = np.mean([w.side for w in windows])
            label, limit_label = ("-", "-") if path == "whole" else (f"{context:g}", f"{limit:g}")
            print(
                f"| {name} | {path} | {label} | {limit_label} | {crops}/{n} | {side:.0f} "
                f"| {fid:.2f} | {psnr:.2f} | {len(changed)} | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
