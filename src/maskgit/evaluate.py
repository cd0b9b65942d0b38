"""Evaluation: inpaint a test set, score it (FID, KID, masked PSNR/SSIM/L1), compare with
classical baselines, and sweep decoding settings (the schedule study).

Images are uint8 tensors (N, 3, H, W); pixel masks bool (N, H, W), True = repaint.
FID/KID compare the inpainted images with the ground-truth images (N of each: report N,
small-N FID is biased upwards and only comparable at equal N).
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from maskgit.data import DataError, list_images
from maskgit.fid import InceptionFeatures
from maskgit.fill import CLASSICAL_FILLS, classical_fill
from maskgit.metrics import (
    fid_from_features,
    kid_from_features,
    masked_l1,
    masked_psnr,
    masked_ssim,
)
from maskgit.options import DEFAULT_DECODING, DecodingOptions, resolve
from maskgit.pipeline import MaskGIT, paste_known
from maskgit.reader import mask_tensor, read_image, read_mask
from maskgit.visualize import save_png

BASELINES = CLASSICAL_FILLS
# Not a competitor but a diagnosis: the ground truth's own tokens decoded into the hole, i.e.
# what a perfect transformer would give with this tokenizer (its FID is MaskGIT's floor).
CEILING = "tokenizer-ceiling"
REFERENCES = (*BASELINES, CEILING)


@dataclass
class TestSet:
    """Images to inpaint, their masks and the ground truth, aligned by file name."""

    names: list[str]
    images: torch.Tensor  # (N, 3, S, S) uint8, what the model gets (masked or not)
    masks: torch.Tensor  # (N, S, S) bool, True = repaint
    truth: torch.Tensor  # (N, 3, S, S) uint8


def load_test_set(
    images: str | Path,
    masks: str | Path,
    gt: str | Path | None,
    size: int,
    mask_convention: str = "white-repaint",
    limit: int = 0,
) -> TestSet:
    """Read three folders paired by file stem; `gt` defaults to `images`."""
    image_files = list_images(images)
    mask_files = {p.stem: p for p in list_images(masks)}
    truth_files = {p.stem: p for p in list_images(gt)} if gt is not None else None
    missing = [p.name for p in image_files if p.stem not in mask_files]
    if missing:
        raise DataError(f"{masks}: no mask for {len(missing)} image(s), e.g. {missing[:3]}")
    if truth_files is not None:
        absent = [p.name for p in image_files if p.stem not in truth_files]
        if absent:
            raise DataError(f"{gt}: no ground truth for {len(absent)} image(s), e.g. {absent[:3]}")
    if limit and limit < len(image_files):  # evenly spaced, so a subset spans all categories
        image_files = [image_files[i * len(image_files) // limit] for i in range(limit)]
    imgs, msks, truths = [], [], []
    for path in image_files:
        imgs.append(read_image(path, size))
        msks.append(mask_tensor(read_mask(mask_files[path.stem], mask_convention), size))
        truths.append(read_image(truth_files[path.stem], size) if truth_files else imgs[-1])

    def stack(arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    return TestSet([p.name for p in image_files], stack(imgs), torch.stack(msks), stack(truths))


def reference_fill(
    name: str, model: MaskGIT, test: TestSet, blend: str = DEFAULT_DECODING.blend
) -> torch.Tensor:
    """A reference row's images: a classical baseline, or the tokenizer ceiling (CEILING: the
    true tokens decoded, pasted with `blend` as MaskGIT's results are)."""
    if name == CEILING:
        return paste_known(test.images, model.reconstruct(test.truth), test.masks, blend=blend)
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(REFERENCES)}")
    return classical_fill(name, test.images, test.masks)


class Scorer:
    """Scores result sets against one ground truth; the truth's features are computed once.

    FID uses the eigenvalue form of the trace term (agrees with sqrtm to ~1e-5, 3x faster).
    """

    def __init__(
        self, test: TestSet, inception: InceptionFeatures, kid_subset_size: int = 100
    ) -> None:
        self.test = test
        self.inception = inception
        self.kid_subset_size = kid_subset_size
        self.real = inception.features(test.truth, progress=False)

    def score(self, results: torch.Tensor) -> dict[str, float]:
        fake = self.inception.features(results, progress=False)
        n = len(results)
        kid_mean, kid_std = kid_from_features(
            self.real, fake, subsets=50, subset_size=min(self.kid_subset_size, n)
        )
        x = results.float() / 255.0
        y = self.test.truth.float() / 255.0
        return {
            "fid": fid_from_features(self.real, fake, method="eigh"),
            "kid_mean": kid_mean,
            "kid_std": kid_std,
            "psnr": float(masked_psnr(x, y, self.test.masks)),
            "ssim": float(masked_ssim(x, y, self.test.masks)),
            "l1": float(masked_l1(x, y, self.test.masks)),
            "n": n,
        }


def inpaint_set(
    model: MaskGIT,
    test: TestSet,
    options: DecodingOptions,
    batch_size: int = 64,
    paste: bool = True,
) -> tuple[torch.Tensor, float]:
    """Inpaint the whole test set; returns uint8 results (N, 3, S, S) and seconds per image.

    `paste=False` returns the decoder's whole output (known pixels not pasted back), what the
    course lab scored.
    """
    outputs = []
    started = time.perf_counter()
    for start in range(0, len(test.images), batch_size):
        if not paste:
            decoded, _, _ = model.decode_batch(
                test.images[start : start + batch_size],
                test.masks[start : start + batch_size],
                options,
                first_index=start,
            )
            outputs += list(decoded)
            continue
        result = model.inpaint(
            list(test.images[start : start + batch_size]),
            list(test.masks[start : start + batch_size]),
            options,
            batch_size=batch_size,
        )
        outputs += [torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in result.images]
    elapsed = time.perf_counter() - started
    return torch.stack(outputs), elapsed / len(test.images)


def sweet_spots_from_one_decode(
    model: MaskGIT,
    test: TestSet,
    options: DecodingOptions,
    spots: Sequence[int],
    batch_size: int = 64,
    paste: bool = True,
) -> dict[int, tuple[torch.Tensor, float]]:
    """The results for several sweet spots S of one T, from one decode (any rule).

    Before step S-1 no rule depends on S, and the run that stops after S steps outputs that
    step's prediction (`DecodeStep.sampled`), with the same random draws: so the run to
    max(spots) holds every shorter run. Returns {S: (uint8 results (N, 3, S, S), seconds per
    image)}, equal to `inpaint_set` with sweet_spot=S for model-size images; the seconds are
    the shared decode's, scaled by S / max(spots) (an estimate: the steps dominate the time).
    """
    longest = max(spots)
    outputs: dict[int, list[torch.Tensor]] = {s: [] for s in spots}
    started = time.perf_counter()
    for start in range(0, len(test.images), batch_size):
        images = test.images[start : start + batch_size]
        masks = test.masks[start : start + batch_size]
        predictions: dict[int, torch.Tensor] = {}

        def keep(record, wanted=frozenset(spots), predictions=predictions) -> None:
            if record.step + 1 in wanted:
                predictions[record.step + 1] = record.sampled  # (B, N)

        final, _, _ = model.decode_batch(
            images,
            masks,
            options.replace(sweet_spot=longest),
            first_index=start,
            on_step=keep,
        )
        for spot in spots:
            # No step runs when nothing is unknown: every spot is then the final image.
            decoded = (
                model.images_from_tokens(predictions[spot]) if spot in predictions else final
            )  # (B, 3, S, S)
            pasted = paste_known(images, decoded, masks, blend=options.blend)
            outputs[spot].append(pasted if paste else decoded)
    elapsed = (time.perf_counter() - started) / len(test.images)
    return {s: (torch.cat(outputs[s]), elapsed * s / longest) for s in spots}


def write_images(folder: Path, names: list[str], images: torch.Tensor) -> None:
    for name, image in zip(names, images, strict=True):
        save_png(
            Image.fromarray(image.permute(1, 2, 0).numpy()), folder / (Path(name).stem + ".png")
        )


def evaluate(
    model: MaskGIT,
    test: TestSet,
    out: str | Path,
    options: DecodingOptions | None = None,
    *,
    baselines: tuple[str, ...] = (),
    inception_weights: str | None = None,
    paste: bool = True,
    resize: str = "tf",
    **changes,
) -> list[dict]:
    """Inpaint + score MaskGIT (and baselines); write images, results.json and results.csv.

    Decoding: `options` (default DEFAULT_DECODING) with keyword `changes`; the row records
    every option and the scoring (`paste`: known pixels pasted back; `resize`: "tf" or
    "torch", see maskgit.fid).
    """
    options = resolve(options, **changes)
    out = Path(out)
    scorer = Scorer(test, InceptionFeatures(inception_weights, resize=resize, progress=False))
    rows = []
    results, seconds = inpaint_set(model, test, options, paste=paste)
    write_images(out / "maskgit", test.names, results)
    row = {"method": "maskgit", **options.as_dict(), "paste": paste, "resize": resize}
    rows.append({**row, **scorer.score(results), "s_per_image": seconds})
    for name in tqdm(baselines, desc="baselines", leave=False, disable=not baselines):
        filled, row = _baseline(name, model, test, scorer, options.blend)
        write_images(out / name, test.names, filled)
        rows.append(row)
    write_rows(out / "results", rows)
    return rows


def _baseline(name: str, model: MaskGIT, test: TestSet, scorer: Scorer, blend: str):
    """-> (the baseline's uint8 results (N, 3, S, S), its scored and timed row)."""
    started = time.perf_counter()
    filled = reference_fill(name, model, test, blend)
    seconds = (time.perf_counter() - started) / len(test.images)
    return filled, {"method": name, **scorer.score(filled), "s_per_image": seconds}


def write_rows(stem: Path, rows: list[dict]) -> None:
    """Write rows as `<stem>.json` and `<stem>.csv`."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(stem.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def sweep(
    model: MaskGIT,
    test: TestSet,
    out: str | Path,
    options: DecodingOptions | None = None,
    *,
    schedules: Sequence[str],
    steps: Sequence[int],
    sweet_spots: Sequence[int | None] = (None,),
    sweet_spots_at: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    rules: Sequence[str] | None = None,
    baselines: tuple[str, ...] = (),
    inception_weights: str | None = None,
    paste: bool = True,
    resize: str = "tf",
) -> list[dict]:
    """Rules x schedules x steps x sweet spots x seeds -> sweep.csv/json, plots, table.md.

    A sweet spot S < 0 counts from the steps (-2 = T-2); one that does not fit a T (S > T
    or T + S < 1) is skipped for that T, one equal to T is the plain run; `sweet_spots_at` limits the sweet
    spots to those T (default: every T). `rules` default to the rule of `options`. The other
    decoding options come from `options` (default DEFAULT_DECODING); every setting is
    validated before the first image is decoded. The sweet spots of one T share one decode
    (`sweet_spots_from_one_decode`), so sweeping S costs about one run of T.
    """
    base = resolve(options)
    out = Path(out)
    configs = _sweep_settings(
        base, rules or (base.rule,), schedules, steps, sweet_spots, sweet_spots_at, seeds
    )
    scorer = Scorer(test, InceptionFeatures(inception_weights, resize=resize, progress=False))
    shared = _shared_runs(configs)
    rows = []
    for config in tqdm(configs, desc="sweep"):
        key = config.replace(sweet_spot=None)
        if key in shared and config.steps_to_run in shared[key]:
            if not isinstance(shared[key], dict):  # the first of its group: decode once
                spots = shared[key]
                shared[key] = sweet_spots_from_one_decode(model, test, key, spots, paste=paste)
            results, seconds = shared[key][config.steps_to_run]
        else:
            results, seconds = inpaint_set(model, test, config, paste=paste)
        row = {"method": "maskgit", **config.as_dict(), "sweet_spot": config.steps_to_run}
        row.update(paste=paste, resize=resize)
        rows.append({**row, **scorer.score(results), "s_per_image": seconds})
        write_rows(out / "sweep", rows)  # keep what is done if interrupted
    rows += [_baseline(name, model, test, scorer, base.blend)[1] for name in baselines]
    write_rows(out / "sweep", rows)
    plot_sweep(rows, out)
    (out / "table.md").write_text(markdown_table(rows))
    return rows


def _sweep_settings(
    base: DecodingOptions,
    rules: Sequence[str],
    schedules: Sequence[str],
    steps: Sequence[int],
    sweet_spots: Sequence[int | None],
    sweet_spots_at: Sequence[int] | None,
    seeds: Sequence[int],
) -> list[DecodingOptions]:
    """The settings of a sweep, in order, each once (a sweet spot S = T is the plain run)."""

    def fits(s: int | None, t: int) -> bool:
        if s is None:
            return True
        if sweet_spots_at is not None and t not in sweet_spots_at:
            return False
        return s <= t if s > 0 else t + s >= 1

    settings = {}
    for rule, sc, t, s, seed in itertools.product(rules, schedules, steps, sweet_spots, seeds):
        if fits(s, t):
            config = base.replace(rule=rule, schedule=sc, steps=t, sweet_spot=s, seed=seed)
            settings.setdefault(config.replace(sweet_spot=config.steps_to_run), config)
    return list(settings.values())


def _shared_runs(configs: list[DecodingOptions]) -> dict:
    """{setting without sweet spot: sorted steps-to-run of its configs}, for the settings
    swept at more than one sweet spot (these share one decode)."""
    groups: dict[DecodingOptions, set[int]] = {}
    for config in configs:
        groups.setdefault(config.replace(sweet_spot=None), set()).add(config.steps_to_run)
    return {key: sorted(spots) for key, spots in groups.items() if len(spots) > 1}


GROUP = ("rule", "schedule", "steps", "sweet_spot")  # a setting; seeds are averaged over
METRICS = ("fid", "kid_mean", "psnr", "ssim", "l1", "s_per_image")


def _setting(row: dict) -> tuple:
    return (row.get("rule", "paper"), row["schedule"], row["steps"], row["sweet_spot"])


def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per setting (rule, schedule, steps, sweet spot): metrics averaged over seeds,
    `seeds` = how many; reference rows (baselines) pass through unchanged, after them."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["method"] == "maskgit":
            groups.setdefault(_setting(row), []).append(row)
    out = []
    for key, members in groups.items():
        mean = {"method": "maskgit", **dict(zip(GROUP, key, strict=True))}
        for metric in METRICS:
            values = [m[metric] for m in members if metric in m]
            if values:
                mean[metric] = float(np.mean(values))
        mean["seeds"] = len(members)
        out.append(mean)
    return out + [row for row in rows if row["method"] != "maskgit"]


def plot_sweep(rows: list[dict], out: Path) -> None:
    """fid_vs_steps.png and time_vs_steps.png (full runs S = T against T, means over seeds;
    baselines dashed) and, when some setting was also stopped early, fid_vs_sweet_spot.png
    (FID against S). One panel per rule, one colour per schedule in every plot."""
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [row for row in mean_rows(rows) if row["method"] == "maskgit"]
    rules = list(dict.fromkeys(row["rule"] for row in means))
    colours = {s: f"C{i}" for i, s in enumerate(dict.fromkeys(r["schedule"] for r in means))}

    def panels(curves: dict[tuple, list], xlabel: str, ylabel: str, name: str, baselines=()):
        """curves: {(rule, schedule, label): [(x, y), ...]} -> one panel per rule."""
        fig, axes = plt.subplots(
            1, len(rules), figsize=(1.5 + 3.6 * len(rules), 4), sharey=True, squeeze=False
        )
        for ax, rule in zip(axes[0], rules, strict=True):
            for (line_rule, schedule, label), points in curves.items():
                if line_rule == rule and points:
                    xs, ys = zip(*sorted(points), strict=True)
                    ax.plot(xs, ys, marker="o", color=colours[schedule], label=label)
            for row in baselines:
                ax.axhline(row["fid"], linestyle="--", linewidth=1, color="grey")
                ax.annotate(row["method"], (ax.get_xlim()[0], row["fid"]), fontsize=7)
            ax.set_title(f"{rule} rule", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    full = [row for row in means if row["steps"] == row["sweet_spot"]]
    baselines = [row for row in rows if row["method"] != "maskgit"]
    for key, ylabel, name in (
        ("fid", "FID (lower is better)", "fid_vs_steps.png"),
        ("s_per_image", "seconds per image", "time_vs_steps.png"),
    ):
        curves: dict[tuple, list] = {}
        for row in full:
            if key in row:
                line = (row["rule"], row["schedule"], row["schedule"])
                curves.setdefault(line, []).append((row["steps"], row[key]))
        panels(curves, "decoding steps T", ylabel, name, baselines if key == "fid" else ())
    spots: dict[tuple, list] = {}
    for row in means:
        line = (row["rule"], row["schedule"], f"{row['schedule']}, T={row['steps']}")
        spots.setdefault(line, []).append((row["sweet_spot"], row["fid"]))
    spots = {line: points for line, points in spots.items() if len(points) > 1}
    if spots:
        panels(
            spots, "sweet spot S (steps run of T)", "FID (lower is better)", "fid_vs_sweet_spot.png"
        )


def markdown_table(rows: list[dict]) -> str:
    """A markdown table of the sweep, one row per setting with the means over its seeds
    (the seeds column says how many), plus the baseline rows."""
    lines = [
        "| method | rule | schedule | steps | sweet spot | seeds | FID | KID x1000 | PSNR | "
        "SSIM | L1 | s/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in mean_rows(rows):
        lines.append(
            f"| {row['method']} | {row.get('rule', '')} | {row.get('schedule', '')} | "
            f"{row.get('steps', '')} | {row.get('sweet_spot', '')} | {row.get('seeds', '')} | "
            f"{row['fid']:.2f} | {1000 * row['kid_mean']:.2f} | "
            f"{row['psnr']:.2f} | {row['ssim']:.3f} | {row['l1']:.4f} | "
            f"{row.get('s_per_image', float('nan')):.3f} |"
        )
    return "\n".join(lines) + "\n"
