"""`maskgit demo`: inpaint the bundled sample emoji with the embedded default, offline."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from maskgit.options import DEFAULT_DECODING, DecodingOptions
from maskgit.pipeline import MaskGIT
from maskgit.reader import mask_tensor, read_image, read_mask
from maskgit.visualize import image_grid, masked_preview, save_png, save_step_visuals

SAMPLES_DIR = Path(__file__).parent / "samples"


def sample_pairs() -> list[tuple[Path, Path]]:
    """(image, mask) paths of the bundled samples, paired by name."""
    images = sorted((SAMPLES_DIR / "images").glob("*.png"))
    return [(p, SAMPLES_DIR / "masks" / p.name) for p in images]


def run_demo(
    out: str | Path = "maskgit-demo",
    model_path: str | None = None,
    options: DecodingOptions = DEFAULT_DECODING,
    device: str | None = None,
    quantize: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> list[Path]:
    """Inpaint every bundled sample; write results, step pictures and an overview to `out`.

    Decoding: `options`, by default DEFAULT_DECODING (the shipped model's best setting).
    `log` receives one line per phase (loading, inpainting, writing); `progress` draws a
    bar of the decoding steps on stderr.
    """
    say = log or (lambda line: None)
    out = Path(out)
    say(f"loading model {model_path or 'embedded default'} ...")
    model = MaskGIT.from_pretrained(model_path, device=device, quantize=quantize)
    size = model.image_size
    pairs = sample_pairs()
    images = [Image.fromarray(read_image(p, size)) for p, _ in pairs]
    masks = [mask_tensor(read_mask(m), size) for _, m in pairs]
    say(f"inpainting {len(pairs)} sample emoji, {options.steps_to_run} decoding steps ...")
    with tqdm(
        total=options.steps_to_run, desc="decoding", unit="step", disable=not progress
    ) as bar:
        result = model.inpaint(
            images,
            masks,
            options,
            return_steps=True,
            batch_size=len(images),  # one batch: the bar counts its steps
            on_step=lambda _: bar.update(1),
        )
        bar.update(options.steps_to_run - bar.n)  # a decode ends early when nothing is left
    say(f"writing pictures to {out} ...")
    written = []
    previews = []
    for (path, _), image, mask, filled, frames in zip(
        pairs, images, masks, result.images, result.steps, strict=True
    ):
        preview = masked_preview(image, mask)
        previews.append(preview)
        written.append(save_png(filled, out / path.name))
        written += save_step_visuals(
            out / "steps", path.stem, preview, filled, frames, ground_truth=image
        )
    overview = image_grid(previews + result.images + images, columns=len(images))
    written.append(save_png(overview, out / "overview.png"))
    return written


def main(
    out: str,
    model_path: str | None,
    options: DecodingOptions = DEFAULT_DECODING,
    device: str | None = None,
    quantize: str | None = None,
) -> int:
    """CLI body: run the demo and say what was written and how long it took."""
    started = time.perf_counter()
    written = run_demo(
        out,
        model_path,
        options,
        device,
        quantize,
        log=lambda line: print(line, flush=True),
        progress=True,
    )
    elapsed = time.perf_counter() - started
    results = [p for p in written if p.parent == Path(out) and p.name != "overview.png"]
    print(
        f"inpainted {len(results)} sample emoji in {elapsed:.1f} s ({options.steps} steps, "
        f"{options.schedule})"
    )
    print(f"  results:     {out}/<name>.png")
    print(f"  step views:  {out}/steps/<name>_tokens.png, _steps.png, _compare.png, .gif")
    print(f"  overview:    {out}/overview.png (rows: masked input, result, original)")
    print(f"wrote {len(written)} files")
    return 0
