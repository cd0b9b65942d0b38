"""What the seamless blend costs (#30 section 6, #29.10): at the model's resolution, as a
share of an inpaint call, and on a large picture, `blend="none"` against `"seamless"`.

1. 64x64 (the shipped emoji model), a batch of images with a hole: the whole inpaint call
   with each blend, and the blend alone (`paste_known` seamless minus none, on the same
   decoded images) with its share of the seamless call. The lab's centre hole (32x32) and
   a 56x56 one (3,136 unknowns, near the 4,096 of a whole 64x64 picture), the same in every
   image (one factorisation serves the batch) or moved in each (one factorisation each).
2. A 2048x2048 picture with a 1024x1024 hole (filled from the whole picture, pasted at full
   resolution): the inpaint call with each blend, and the paste alone.
3. The largest outpaint canvas (pipeline.MAX_SIDE, MAX_PIXELS): a 2048x1953 picture with a
   50% margin, 4096x3905, 12 MP to generate: the outpaint call with each blend.

Best of --repeats runs each (wall clock). On a machine shared with other jobs the numbers
are noisy: the load average is printed with them.

    python benchmarks/bench_blend.py                # ~1 minute on 2 cores
    python benchmarks/bench_blend.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """The shortest wall time of `repeats` calls of `run`, seconds."""
    fastest = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest


def model_resolution(
    model, batch: int, hole: int, repeats: int, distinct: bool
) -> dict[str, float]:
    """Seconds of a batch inpaint call with each blend, and of the blend alone; a centred
    `hole` square in every image, or (`distinct`) image i's moved by i pixels (no two
    alike: each image's blend factorises its own matrix)."""
    import torch

    from maskgit.options import DEFAULT_DECODING
    from maskgit.pipeline import paste_known

    size = model.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    for i in range(batch):
        shift = i - batch // 2 if distinct else 0
        lo = min(max((size - hole) // 2 + shift, 0), size - hole)
        masks[i, lo : lo + hole, lo : lo + hole] = True
    times = {
        blend: best_of(repeats, lambda b=blend: model.inpaint(images, masks, blend=b))
        for blend in ("none", "seamless")
    }
    decoded = model.decode_batch(images, masks, DEFAULT_DECODING)[0]
    pastes = {
        blend: best_of(repeats, lambda b=blend: paste_known(images, decoded, masks, blend=b))
        for blend in ("none", "seamless")
    }
    times["blend"] = pastes["seamless"] - pastes["none"]
    return times


def large_picture(model, side: int, hole: int, repeats: int) -> dict[str, float]:
    """Seconds of inpainting a `side` square picture with a `hole` square hole, each blend,
    the whole call and the paste alone."""
    import torch
    import torch.nn.functional as F

    from maskgit.pipeline import paste_known

    generator = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3, 16, 16, generator=generator) * 255
    image = F.interpolate(small, size=(side, side), mode="bicubic").clamp(0, 255)
    image = image.to(torch.uint8)[0]  # (3, side, side): smooth colours
    mask = torch.zeros(side, side, dtype=torch.bool)
    lo = (side - hole) // 2
    mask[lo : lo + hole, lo : lo + hole] = True
    times = {}
    for blend in ("none", "seamless"):
        times[f"call {blend}"] = best_of(
            repeats, lambda b=blend: model.inpaint(image, mask, blend=b)
        )
    decoded = (image.int() + 30).clamp(0, 255).to(torch.uint8)[None]  # a colour shift
    for blend in ("none", "seamless"):
        times[f"paste {blend}"] = best_of(
            repeats, lambda b=blend: paste_known(image[None], decoded, mask[None], blend=b)
        )
    return times


def largest_outpaint(model, repeats: int) -> dict[str, float]:
    """Seconds of outpainting a 2048x1953 picture to 4096x3905 (under MAX_PIXELS), each blend."""
    import torch

    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 1953, 2048), generator=generator, dtype=torch.uint8)
    return {
        blend: best_of(repeats, lambda b=blend: model.outpaint(image, pad="50%", blend=b))
        for blend in ("none", "seamless")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    parser.add_argument(
        "--large", type=int, default=2048, help="large picture side (2048; 0: skip)"
    )
    parser.add_argument("--large-hole", type=int, default=1024, help="its hole side (1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, best (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from maskgit.pipeline import MaskGIT

    model = MaskGIT.from_pretrained(device="cpu")
    model.inpaint(torch.zeros(3, 64, 64, dtype=torch.uint8), torch.ones(64, 64, dtype=bool))
    print(
        f"emoji model, CPU, {args.threads} torch thread(s), best of {args.repeats}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    size = model.image_size
    for hole, distinct in ((size // 2, False), (size - 8, False), (size - 8, True)):
        times = model_resolution(model, args.batch, hole, args.repeats, distinct)
        print(
            f"{size}x{size}, batch {args.batch}, {hole}x{hole} hole "
            f"({'one per image' if distinct else 'the same in all'}): call seamless "
            f"{times['seamless']:.3f} s, none {times['none']:.3f} s; blend alone "
            f"{times['blend'] * 1000:.1f} ms = {times['blend'] / times['seamless']:.1%} of the call"
        )
    side, hole = args.large, args.large_hole
    if side:
        times = large_picture(model, side, hole, args.repeats)
        print(
            f"{side}x{side}, {hole}x{hole} hole: call none {times['call none']:.2f} s, "
            f"seamless {times['call seamless']:.2f} s "
            f"({times['call seamless'] / times['call none']:.2f}x); paste alone none "
            f"{times['paste none']:.2f} s, seamless {times['paste seamless']:.2f} s"
        )
    times = largest_outpaint(model, args.repeats)
    print(
        f"outpaint 2048x1953 -> 4096x3905: none {times['none']:.2f} s, seamless "
        f"{times['seamless']:.2f} s ({times['seamless'] / times['none']:.2f}x)"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
