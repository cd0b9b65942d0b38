"""`maskgit demo`: inpaint the bundled sample emoji with the embedded default, offline.

The output folder is guarded: never inside the package (its samples, page, weights), and no
file there is replaced that the demo did not write itself (a manifest, MANIFEST, records the
SHA-256 of what it wrote, so a rerun into the same folder, as `make demo` does, may replace
its own outputs), unless `overwrite`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from maskgit.fileio import atomic_write
from maskgit.options import DEFAULT_DECODING, DecodingOptions
from maskgit.pipeline import MaskGIT
from maskgit.reader import mask_tensor, read_image, read_mask
from maskgit.visualize import (
    STEP_VISUALS,
    image_grid,
    masked_preview,
    save_png,
    save_step_visuals,
)

PACKAGE_DIR = Path(__file__).parent
SAMPLES_DIR = PACKAGE_DIR / "samples"
STEPS_FOLDER = "steps"  # the step pictures: <out>/steps/<name>_tokens.png, ...
MANIFEST = ".maskgit-demo.json"  # {"files": {path relative to out: sha256}} of the demo's files


def sample_pairs() -> list[tuple[Path, Path]]:
    """(image, mask) paths of the bundled samples, paired by name."""
    images = sorted((SAMPLES_DIR / "images").glob("*.png"))
    return [(p, SAMPLES_DIR / "masks" / p.name) for p in images]


def demo_outputs() -> list[str]:
    """The files (relative to the output folder) the demo writes."""
    names = [image.name for image, _ in sample_pairs()]
    steps = [
        f"{STEPS_FOLDER}/{Path(name).stem}{suffix}" for name in names for suffix in STEP_VISUALS
    ]
    return [*names, *steps, "overview.png"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(out: Path) -> dict[str, str] | None:
    """The demo's record of its files in `out` ({} when none; None when MANIFEST is there
    but not the demo's)."""
    path = out / MANIFEST
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


def check_demo_out(out: Path, overwrite: bool = False) -> dict[str, str]:
    """Refuse (ValueError, naming the file) an `out` inside the package, or one holding a file
    the demo would replace that is not its own earlier output (unless `overwrite`); returns
    the demo's record of its files there. Nothing is written here."""
    package = PACKAGE_DIR.resolve()
    if out.resolve() == package or package in out.resolve().parents:
        raise ValueError(
            f"--out {out} is inside the maskgit package ({package}): the demo would replace "
            "its bundled files; choose another folder"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    manifest = _manifest(out)
    foreign = [] if manifest is not None else [out / MANIFEST]
    for name in demo_outputs():
        target = out / name
        if target.is_symlink() or target.exists():
            plain = target.is_file() and not target.is_symlink()
            if not (plain and (manifest or {}).get(name) == _digest(target)):
                foreign.append(target)
    if foreign and not overwrite:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ValueError(
            f"--out {out}: {foreign[0]}{more} exists and was not written by the demo; choose "
            "another folder, or add --overwrite to replace it"
        )
    return manifest or {}


def _record(out: Path, manifest: dict[str, str], written: list[Path]) -> None:
    """Add the files written to the demo's record in `out` (atomically)."""
    for path in written:
        manifest[path.relative_to(out).as_posix()] = _digest(path)
    text = json.dumps({"written by": "maskgit demo", "files": manifest}, indent=1)
    atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(text + "\n"))


def run_demo(
    out: str | Path = "maskgit-demo",
    model_path: str | None = None,
    options: DecodingOptions = DEFAULT_DECODING,
    device: str | None = None,
    quantize: str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> list[Path]:
    """Inpaint every bundled sample; write results, step pictures and an overview to `out`.

    Decoding: `options`, by default DEFAULT_DECODING (the shipped model's best setting).
    `out` is checked first (`check_demo_out`): never inside the package; a file there that
    the demo did not write is replaced only with `overwrite`.
    `log` receives one line per phase (loading, inpainting, writing); `progress` draws a
    bar of the decoding steps on stderr.
    """
    say = log or (lambda line: None)
    out = Path(out)
    manifest = check_demo_out(out, overwrite)
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
    written: list[Path] = []
    previews = []
    try:
        for (path, _), image, mask, filled, frames in zip(
            pairs, images, masks, result.images, result.steps, strict=True
        ):
            preview = masked_preview(image, mask)
            previews.append(preview)
            written.append(save_png(filled, out / path.name))
            written += save_step_visuals(
                out / STEPS_FOLDER, path.stem, preview, filled, frames, ground_truth=image
            )
        overview = image_grid(previews + result.images + images, columns=len(images))
        written.append(save_png(overview, out / "overview.png"))
    finally:  # an interrupted run still records what it wrote
        if written:
            _record(out, manifest, written)
    return written


def main(
    out: str,
    model_path: str | None,
    options: DecodingOptions = DEFAULT_DECODING,
    device: str | None = None,
    quantize: str | None = None,
    overwrite: bool = False,
) -> int:
    """CLI body: run the demo and say what was written and how long it took."""
    started = time.perf_counter()
    written = run_demo(
        out,
        model_path,
        options,
        device,
        quantize,
        overwrite,
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
