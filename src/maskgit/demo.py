"""`maskgit demo`: inpaint the bundled sample emoji with the embedded default, offline."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image

from maskgit.data import load_image
from maskgit.masking import pixel_mask_from_array
from maskgit.pipeline import MaskGIT
from maskgit.visualize import image_grid, masked_preview, save_png, save_step_visuals

SAMPLES_DIR = Path(__file__).parent / "samples"
# Decoding settings that scored best for the embedded default (docs/model-card.md)
DEMO_TEMPERATURE = 0.0
DEMO_CHOICE_TEMPERATURE = 1.0
DEMO_STEPS = 8  # linear, 8 steps: the default model's best FID (docs/schedule-study.md)
DEMO_SCHEDULE = "linear"


def sample_pairs() -> list[tuple[Path, Path]]:
    """(image, mask) paths of the bundled samples, paired by name."""
    images = sorted((SAMPLES_DIR / "images").glob("*.png"))
    return [(p, SAMPLES_DIR / "masks" / p.name) for p in images]


def run_demo(
    out: str | Path = "maskgit-demo",
    model_path: str | None = None,
    steps: int = DEMO_STEPS,
    schedule: str = DEMO_SCHEDULE,
    seed: int = 0,
    device: str | None = None,
    temperature: float = DEMO_TEMPERATURE,
    choice_temperature: float = DEMO_CHOICE_TEMPERATURE,
) -> list[Path]:
    """Inpaint every bundled sample; write results, step pictures and an overview to `out`."""
    out = Path(out)
    model = MaskGIT.from_pretrained(model_path, device=device)
    pairs = sample_pairs()
    images = [Image.fromarray(load_image(p, model.image_size)) for p, _ in pairs]
    masks = [pixel_mask_from_array(load_image(m, model.image_size)) for _, m in pairs]
    result = model.inpaint(
        images,
        masks,
        steps=steps,
        schedule=schedule,
        seed=seed,
        return_steps=True,
        temperature=temperature,
        choice_temperature=choice_temperature,
    )
    written = []
    previews = []
    for (path, _), image, mask, filled, frames in zip(
        pairs, images, masks, result.images, result.steps, strict=True
    ):
        preview = masked_preview(image, mask.numpy())
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
    steps: int,
    schedule: str,
    seed: int,
    device: str | None,
    temperature: float = DEMO_TEMPERATURE,
    choice_temperature: float = DEMO_CHOICE_TEMPERATURE,
) -> int:
    """CLI body: run the demo and say what was written and how long it took."""
    started = time.perf_counter()
    written = run_demo(
        out, model_path, steps, schedule, seed, device, temperature, choice_temperature
    )
    elapsed = time.perf_counter() - started
    results = [p for p in written if p.parent == Path(out) and p.name != "overview.png"]
    print(f"inpainted {len(results)} sample emoji in {elapsed:.1f} s ({steps} steps, {schedule})")
    print(f"  results:     {out}/<name>.png")
    print(f"  step views:  {out}/steps/<name>_tokens.png, _steps.png, _compare.png, .gif")
    print(f"  overview:    {out}/overview.png (rows: masked input, result, original)")
    print(f"wrote {len(written)} files")
    return 0
