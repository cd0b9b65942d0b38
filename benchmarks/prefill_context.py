"""What the tokenizer sees in the hole: how it changes the known tokens, and FID.

The encoder's receptive field spans several patches, so the hole's content changes the known
tokens around it. For each pre-fill this prints the share of known tokens that differ from
the whole image's tokens and, with --fid, the FID of MaskGIT's inpainting (argmax, choice
temperature 1.0) against the ground truth. The row "truth" encodes the ground truth itself,
a diagnostic that cheats: the best context there can be.

python benchmarks/prefill_context.py --images data/emoji-google/test/images \\
    --masks data/emoji-google/test/masks --fid
"""

from __future__ import annotations

import argparse
import time

import torch

from maskgit.data import to_model_range
from maskgit.evaluate import Scorer, load_test_set
from maskgit.fid import InceptionFeatures
from maskgit.fill import CLASSICAL_FILLS, classical_fill
from maskgit.masking import pixel_to_token_mask
from maskgit.options import DecodingOptions
from maskgit.pipeline import MaskGIT, paste_known

BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the embedded one)")
    parser.add_argument("--images", required=True, help="test images (the ground truth)")
    parser.add_argument("--masks", required=True, help="masks with the same names (white = hole)")
    parser.add_argument("--fills", nargs="*", default=list(CLASSICAL_FILLS) + ["truth"])
    parser.add_argument("--fid", action="store_true", help="also inpaint and score (slow)")
    parser.add_argument("--schedule", default="linear")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = MaskGIT.from_pretrained(args.model, device="cpu")
    test = load_test_set(args.images, args.masks, None, model.image_size)
    known = ~pixel_to_token_mask(test.masks, model.downsample)  # (N, h, w)
    scorer = Scorer(test, InceptionFeatures(None, progress=False)) if args.fid else None
    with torch.no_grad():
        whole = model.tokenizer.encode(to_model_range(test.truth))
    print(f"N = {len(test.names)}; {args.schedule} {args.steps} steps, argmax, choice temp 1.0")
    options = DecodingOptions(
        steps=args.steps, schedule=args.schedule, temperature=0.0, choice_temperature=1.0
    )
    print("| pre-fill | known tokens unlike the whole image's | FID | KID x1000 | seconds |")
    print("|---|---|---|---|---|")
    for name in args.fills:
        started = time.perf_counter()
        context = test.truth if name == "truth" else classical_fill(name, test.images, test.masks)
        with torch.no_grad():
            tokens = model.tokenizer.encode(to_model_range(context))
        differ = float(((tokens != whole) & known).sum() / known.sum())
        fid = kid = float("nan")
        if scorer is not None:
            outputs = []
            for start in range(0, len(test.names), BATCH):
                part = slice(start, start + BATCH)
                decoded, _, _ = model.decode_batch(
                    test.images[part],
                    test.masks[part],
                    options,
                    first_index=0,  # as evaluate.inpaint_set, so rows match `maskgit evaluate`
                    context=context[part],
                )
                outputs.append(paste_known(test.images[part], decoded, test.masks[part]))
            scores = scorer.score(torch.cat(outputs))
            fid, kid = scores["fid"], scores["kid_mean"] * 1000
        seconds = time.perf_counter() - started
        print(f"| {name} | {differ:.1%} | {fid:.2f} | {kid:.2f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
