"""`maskgit` command line: thin wrappers over the package's pipelines.

Every bad input ends in one line `maskgit: error: ...` naming the file or option, exit code 2
for usage errors (bad options, missing or unreadable inputs) and 1 for runtime failures;
`--debug` shows the traceback instead.

Every command is one entry of COMMANDS: a name, a help line, a function adding its arguments
and the function running it. The decoding flags (`--steps`, `--schedule`, ...) come from the
fields of `maskgit.options.DecodingOptions`, with DEFAULT_DECODING as their defaults; they are
checked by building the options object, before any model is loaded or any file written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from maskgit.options import (
    DEFAULT_DECODING,
    SCHEDULE_NAMES,
    DecodingOptions,
    option_help,
    option_names,
)

USAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError)
# FID from fewer images than this gets a warning. FID is biased upwards by about k/N (Chong and
# Forsyth 2020, "Effectively unbiased FID"; k depends on the model) and N images give 2048x2048
# covariances of rank at most N-1. 100 is a round line: there the k/N bias is about 4x what it
# is at the model card's N = 386, and which images were drawn moves the score too. KID is
# unbiased but widely spread at small N (it can come out negative).
SMALL_N = 100
METRIC_DIRECTIONS = (
    "lower is better: FID, KID, L1, s/img; higher is better: PSNR (dB), SSIM "
    "(PSNR, SSIM and L1 inside the masks)"
)


# --------------------------------------------------------------------------- shared arguments


def add_decoding_options(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """`--<option>` for every field of DecodingOptions (text, parsed when the options are
    built so that errors name the option); defaults from DEFAULT_DECODING."""
    for name in option_names():
        if name in skip:
            continue
        default = getattr(DEFAULT_DECODING, name)
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{option_help(name)} (default {'none' if default is None else default})",
        )


def decoding_options(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> DecodingOptions:
    """The options given on the command line over DEFAULT_DECODING (validated)."""
    given = {name: getattr(args, name, None) for name in option_names() if name not in skip}
    return DEFAULT_DECODING.with_text(given)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="model folder with tokenizer.safetensors and transformer.safetensors "
        "(default: the embedded emoji-demo model)",
    )
    p.add_argument(
        "--quantize",
        default=None,
        metavar="MODE",
        help="int8: the transformer's linear layers in int8 (dynamic quantisation; CPU only, "
        "the device is then the CPU unless given; default: float32)",
    )


def _add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. {example} (repeatable)",
    )


def _add_training(p: argparse.ArgumentParser, stage: str) -> None:
    from maskgit.run_folder import RESUME_SAFE_KEYS

    p.add_argument(
        "--config",
        default="emoji-demo",
        help="preset name (cpu-64: your 64x64 images on a CPU; emoji-demo: the embedded "
        "default's design; lab-64: the course lab's GPU architecture; tiny: tests) or a YAML "
        "file (default emoji-demo)",
    )
    p.add_argument("--out", required=True, help="run folder for checkpoints, logs and samples")
    _add_overrides(p, f"{stage}_training.lr=1e-4")
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in OUT from OUT/latest.state.pt; the config must be the run's "
        f"(e.g. --config OUT/config.yaml) but for {stage}_training."
        f"{{{','.join(RESUME_SAFE_KEYS)}}}",
    )
    start.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in OUT even though it holds one: that run's files "
        "(latest.state.pt, config.yaml, metrics.csv, the model files) are deleted first",
    )
    p.add_argument(
        "--init-from",
        metavar="PATH",
        help=f"warm-start: the {stage}'s weights from this file, or from "
        f"PATH/{stage}.safetensors for a folder (same config; fresh optimiser, step 0; "
        "ignored with --resume)",
    )
    p.add_argument(
        "--checkpoint-steps",
        type=int,
        default=0,
        help="also save `latest` every N optimiser steps (default: each epoch)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (each epoch's validation line is still printed)",
    )


def _add_file_run(p: argparse.ArgumentParser) -> None:
    """Decoding and output options of the file-writing commands (inpaint, outpaint, generate)."""
    _add_model(p)
    add_decoding_options(p)
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument(
        "--save-steps",
        action="store_true",
        help="also write per-step token masks, decoded images, a comparison and a GIF "
        "into OUT/steps/",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_options(args: argparse.Namespace) -> dict:
    """The options of a file-writing run (inpaint, outpaint, generate) besides decoding."""
    return {
        "save_steps": args.save_steps,
        "batch_size": args.batch_size,
        "progress": not args.no_progress,
    }


def _report(what: str, paths: list, out: str, save_steps: bool, started: float) -> None:

    from maskgit.inpaint_files import STEPS_FOLDER

    print(f"wrote {len(paths)} {what} to {out} in {time.perf_counter() - started:.1f} s")
    if save_steps:
        print(
            f"wrote step visuals to {Path(out) / STEPS_FOLDER} "
            "(<name>_tokens.png, <name>_steps.png, <name>_compare.png, <name>.gif per image)"
        )


def _guard_out(out: str, written: list[str], **inputs: str | None) -> None:
    """Refuse before any work when `out` is an input folder or a file in `written` (relative
    to `out`) is one of the inputs (files, or the images of input folders), whatever the path
    form (symlink, `..`); `inputs` are the arguments read, by option name."""

    from maskgit.data import IMAGE_SUFFIXES
    from maskgit.fileio import check_no_overwrite

    labelled = [(f"--{name.replace('_', '-')}", path) for name, path in inputs.items()]
    files = list(labelled)
    for label, path in labelled:
        if path is not None and Path(path).is_dir():
            files += [
                (label, child)
                for child in Path(path).iterdir()
                if child.suffix.lower() in IMAGE_SUFFIXES or child.suffix == ".safetensors"
            ]
    check_no_overwrite(out, written, files)


def _warn_small_n(n: int) -> None:
    """One warning line when FID/KID were computed from fewer than SMALL_N images."""
    if n < SMALL_N:
        print(
            f"maskgit: warning: FID and KID from N = {n} images: under {SMALL_N} images FID is "
            "biased upwards and unstable (another draw of images moves it, KID can come out "
            "negative); compare only numbers at equal N, and use a few hundred images",
            file=sys.stderr,
        )


def _eval_written(args: argparse.Namespace, names: list[str]) -> list[str]:

    stems = []
    if Path(args.images).is_dir():
        stems = [p.stem for p in Path(args.images).iterdir()]
    return [
        f"{folder}/{stem}.png" for folder in ["maskgit", *args.baselines] for stem in stems
    ] + names


# --------------------------------------------------------------------------- commands


def cmd_info(args: argparse.Namespace) -> int:
    from maskgit.config import load_config, to_dict
    from maskgit.tokenizer.model import VQGAN
    from maskgit.transformer import BidirectionalTransformer

    preset = load_config(args.preset, args.overrides)
    tok, tr = preset.tokenizer, preset.transformer
    print(f"preset {args.preset}")
    print(
        f"  tokenizer: {tok.image_size}x{tok.image_size}x{tok.in_channels} -> "
        f"{tok.token_grid}x{tok.token_grid} tokens (downsample {tok.downsample}), "
        f"codebook {tok.codebook_size} x {tok.code_dim}, latent {tok.latent_dim}, "
        f"channels {[tok.base_channels * m for m in tok.channel_mult]}, "
        f"{tok.num_res_blocks} res block(s) per level"
    )
    print(
        f"  transformer: dim {tr.dim}, {tr.depth} layers, {tr.heads} heads, MLP {tr.mlp_dim}, "
        f"{tr.num_tokens} positions, embedding {tr.codebook_size + 1} entries "
        f"({tr.codebook_size} codes + [MASK]), dropout {tr.dropout}, attention dropout "
        f"{tr.attn_dropout}, {tr.norm}-norm, {tr.attention} attention"
    )
    for name, model in (("tokenizer", VQGAN(tok)), ("transformer", BidirectionalTransformer(tr))):
        count = sum(p.numel() for p in model.parameters())
        print(f"  {name} parameters: {count:,}")
    if args.verbose:
        import yaml

        print(yaml.safe_dump(to_dict(preset), sort_keys=False))
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from maskgit.prepare import prepare_emoji

    started = time.perf_counter()
    counts = prepare_emoji(args.source, args.out, size=args.size)
    dropped = counts.pop("dropped")
    print(
        f"wrote {sum(counts.values())} images to {args.out} ({counts}) in "
        f"{time.perf_counter() - started:.1f} s; left out {dropped} test images whose tone "
        "sibling was in an earlier training split"
    )
    return 0


TRAINING_FILES = [  # what a training run writes into its folder (besides epoch/best files)
    "config.yaml",
    "latest.state.pt",
    "metrics.csv",
    "tokenizer.safetensors",
    "transformer.safetensors",
]


def _training_run(args: argparse.Namespace, stage: str, preset) -> dict:
    """The training options of `args`, once the run folder is known to be free for them (a
    run there is refused without --resume or --overwrite, before any data is read)."""
    from maskgit.run_folder import check_run_folder

    check_run_folder(args.out, stage, preset=preset, resume=args.resume, overwrite=args.overwrite)
    init_from = args.init_from and Path(args.init_from)
    if init_from is not None and init_from.is_dir():
        init_from = init_from / f"{stage}.safetensors"
    return {
        "init_from": init_from,
        "resume": args.resume,
        "overwrite": args.overwrite,
        "device": args.device,
        "progress": not args.no_progress,
        "checkpoint_steps": args.checkpoint_steps,
    }


def cmd_train_tokenizer(args: argparse.Namespace) -> int:
    from maskgit.config import load_config
    from maskgit.data import load_folder
    from maskgit.train import train_tokenizer

    preset = load_config(args.config, args.overrides)
    _guard_out(args.out, TRAINING_FILES, data=args.data)
    options = _training_run(args, "tokenizer", preset)
    images, names = load_folder(
        args.data, preset.tokenizer.image_size, progress=not args.no_progress
    )
    print(f"training tokenizer on {len(images)} images from {args.data} -> {args.out}")
    metrics = train_tokenizer(preset, images, names, args.out, **options)
    print(f"done: {args.out}/tokenizer.safetensors; validation {metrics}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from maskgit.data import INDEX_FILE, TOKENS_FILE
    from maskgit.pretokenize import tokenize_folder

    _guard_out(args.out, [TOKENS_FILE, INDEX_FILE], data=args.data, tokenizer=args.tokenizer)
    count = tokenize_folder(
        args.tokenizer,
        args.data,
        args.out,
        hflip=args.hflip,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(f"wrote {count} token grids to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from maskgit.config import load_config
    from maskgit.pretokenize import tokens_for_training
    from maskgit.train import train_transformer

    preset = load_config(args.config, args.overrides)
    _guard_out(args.out, TRAINING_FILES, data=args.data, tokens=args.tokens)
    options = _training_run(args, "transformer", preset)
    tokens, names, tokenizer = tokens_for_training(
        preset,
        args.tokens,
        args.data,
        args.tokenizer,
        args.out,
        args.device,
        progress=not args.no_progress,
    )
    print(f"training transformer on {len(tokens)} token grids -> {args.out}")
    metrics = train_transformer(preset, tokens, names, args.out, tokenizer=tokenizer, **options)
    print(f"done: {args.out}/transformer.safetensors; validation {metrics}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from maskgit.demo import main as demo_main

    return demo_main(
        args.out,
        args.model,
        decoding_options(args),
        args.device,
        quantize=args.quantize,
        overwrite=args.overwrite,
    )


def cmd_fid(args: argparse.Namespace) -> int:
    from maskgit.fid import compute_fid

    started = time.perf_counter()
    scores = compute_fid(
        args.real,
        args.fake,
        batch_size=args.batch_size,
        device=args.device,
        weights=args.inception,
        cache=not args.no_cache,
        kid_subset_size=args.kid_subset_size,
        resize=args.resize,
    )
    fid = max(0.0, scores["fid"])  # a distance: tiny negative rounding errors print as 0.000
    kid = round(scores["kid_mean"], 5) + 0.0  # + 0.0: never "-0.00000"
    print(
        f"FID {fid:.3f} (lower is better)  KID {kid:.5f} +- {scores['kid_std']:.5f} (lower is "
        f"better)  N real {scores['n_real']}  N fake {scores['n_fake']}  "
        f"({time.perf_counter() - started:.1f} s)"
    )
    _warn_small_n(min(scores["n_real"], scores["n_fake"]))
    return 0


def _model_and_test_set(args: argparse.Namespace):
    """The model (--model, default: the embedded one) and the test set its size needs."""
    from maskgit.evaluate import REFERENCES, load_test_set
    from maskgit.pipeline import MaskGIT

    unknown = [name for name in args.baselines if name not in REFERENCES]
    if unknown:  # before any slow work
        raise ValueError(f"--baselines {' '.join(unknown)}: valid: {', '.join(REFERENCES)}")
    model = MaskGIT.from_pretrained(args.model, device=args.device, quantize=args.quantize)
    test = load_test_set(
        args.images, args.masks, args.gt, model.image_size, args.mask_convention, args.limit
    )
    return model, test


def cmd_evaluate(args: argparse.Namespace) -> int:
    from maskgit.evaluate import evaluate, markdown_table

    options = decoding_options(args)
    written = _eval_written(args, ["results.json", "results.csv"])
    _guard_out(
        args.out, written, images=args.images, masks=args.masks, gt=args.gt, model=args.model
    )
    model, test = _model_and_test_set(args)
    rows = evaluate(
        model,
        test,
        args.out,
        options,
        baselines=tuple(args.baselines),
        inception_weights=args.inception,
        paste=not args.no_paste,
        resize=args.resize,
    )
    print(markdown_table(rows), end="")
    print(METRIC_DIRECTIONS)
    print(f"wrote {args.out}/results.json, results.csv and the images (N = {len(test.names)})")
    _warn_small_n(len(test.names))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from maskgit.evaluate import markdown_table, sweep

    options = decoding_options(args, skip=SWEPT)
    written = ["sweep.csv", "sweep.json", "table.md", "fid_vs_steps.png", "time_vs_steps.png"]
    _guard_out(
        args.out, written, images=args.images, masks=args.masks, gt=args.gt, model=args.model
    )
    model, test = _model_and_test_set(args)
    rows = sweep(
        model,
        test,
        args.out,
        options,
        schedules=args.schedules,
        steps=args.steps,
        sweet_spots=[None, *args.sweet_spots],
        sweet_spots_at=args.sweet_spots_at,
        seeds=args.seeds,
        rules=args.rules,
        baselines=tuple(args.baselines),
        inception_weights=args.inception,
        paste=not args.no_paste,
        resize=args.resize,
    )
    print(markdown_table(rows), end="")
    print(METRIC_DIRECTIONS)
    print(
        f"wrote {args.out}/sweep.csv, sweep.json, table.md, fid_vs_steps.png, "
        f"time_vs_steps.png (N = {len(test.names)})"
    )
    _warn_small_n(len(test.names))
    return 0


def cmd_inpaint(args: argparse.Namespace) -> int:
    from maskgit.inpaint_files import inpaint_folder
    from maskgit.pipeline import MaskGIT, check_run_options
    from maskgit.reader import check_convention

    started = time.perf_counter()
    options = decoding_options(args)
    check_run_options(batch_size=args.batch_size, feather=args.feather)
    check_convention(args.mask_convention)
    _guard_out(args.out, [], model=args.model)
    model = MaskGIT.from_pretrained(args.model, device=args.device, quantize=args.quantize)
    paths = inpaint_folder(
        model,
        args.images,
        args.masks,
        args.out,
        options,
        gt=args.gt,
        mask_convention=args.mask_convention,
        feather=args.feather,
        **_run_options(args),
    )
    _report("inpainted images", paths, args.out, args.save_steps, started)
    return 0


def cmd_outpaint(args: argparse.Namespace) -> int:
    from maskgit.inpaint_files import outpaint_files
    from maskgit.pipeline import MaskGIT, check_canvas, check_run_options, parse_pad

    started = time.perf_counter()
    options = decoding_options(args)
    check_run_options(batch_size=args.batch_size)
    if args.pad is not None and args.canvas is not None:
        raise ValueError("--pad and --canvas: give one of them")
    if args.at is not None and args.canvas is None:
        raise ValueError("--at X Y: give --canvas W H too")
    if args.canvas is not None:  # fails before loading; --pad is checked with each image
        check_canvas(*args.canvas, f"--canvas {args.canvas[0]} {args.canvas[1]}")
    pad = None if args.pad is None else parse_pad(" ".join(args.pad))  # fails before loading
    _guard_out(args.out, [], model=args.model)
    model = MaskGIT.from_pretrained(args.model, device=args.device, quantize=args.quantize)
    paths = outpaint_files(
        model,
        args.images,
        args.out,
        options,
        pad=pad,
        canvas=args.canvas,
        at=args.at,
        **_run_options(args),
    )
    _report("outpainted images", paths, args.out, args.save_steps, started)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from maskgit.inpaint_files import generate_files
    from maskgit.pipeline import MaskGIT, check_run_options

    started = time.perf_counter()
    options = decoding_options(args)
    if args.n < 1:
        raise ValueError(f"--n {args.n}: expected at least 1 image")
    check_run_options(batch_size=args.batch_size)
    _guard_out(args.out, [], model=args.model)
    model = MaskGIT.from_pretrained(args.model, device=args.device, quantize=args.quantize)
    paths = generate_files(model, args.n, args.out, options, **_run_options(args))
    _report("generated images", paths, args.out, args.save_steps, started)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from maskgit.app import create_app
    except ImportError as exc:
        raise RuntimeError(
            f"the web demo needs FastAPI and uvicorn ({exc.name or exc} is not installed): "
            "pip install 'maskgit-toolkit[web]' (from a clone: pip install -e '.[web]')"
        ) from exc
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: expected 0 to 65535")
    if args.quantize is not None:  # before the model loads in the background
        from maskgit.pipeline import check_quantize

        check_quantize(args.quantize, args.device)
    listener = _listen(args.host, args.port)  # before any thread starts: a busy port is one line
    app = create_app(
        args.model,
        device=args.device,
        quantize=args.quantize,
        allowed_hosts=[args.host, *args.allow_host],
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"maskgit: warning: serving on {args.host}: the demo has no authentication; "
            "anyone who can reach this port can use it (requests must name this host or an "
            "--allow-host NAME in their Host header)",
            file=sys.stderr,
        )
    port = listener.getsockname()[1]
    print(
        f"MaskGIT demo on http://{args.host}:{port}/ (model "
        f"{args.model or 'embedded default'} loading in the background; Ctrl+C stops)",
        flush=True,
    )
    config = uvicorn.Config(app, host=args.host, port=port, log_level="warning")
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:
        if not app.state.jobs.stop(timeout=5.0):
            # a job (or the model load) is still inside torch: the interpreter's exit would
            # abort (SIGABRT, exit 134) under it; end now with Ctrl-C's exit code
            print("maskgit: interrupted", file=sys.stderr, flush=True)
            os._exit(130)
        raise
    return 0


def _listen(host: str, port: int):
    """A socket bound to (host, port), or ValueError in one line (busy port, bad address)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except (OSError, OverflowError) as exc:
        listener.close()
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValueError(
            f"--host {host} --port {port}: cannot listen there ({reason}); is another server "
            "using the port? choose another --port"
        ) from None
    listener.set_inheritable(True)
    return listener


# --------------------------------------------------------------------------- arguments


def args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="maskgit-demo", help="output folder (default maskgit-demo)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files in --out that the demo did not write (its own earlier outputs "
        "there, recorded in .maskgit-demo.json, are always replaced)",
    )
    _add_model(p)
    add_decoding_options(p)


def args_fid(p: argparse.ArgumentParser) -> None:
    p.add_argument("real", help="folder of reference images")
    p.add_argument("fake", help="folder of generated / inpainted images")
    p.add_argument(
        "--batch-size", type=int, default=50, help="images per Inception batch (default 50)"
    )
    _add_inception_options(p)
    p.add_argument("--no-cache", action="store_true", help="do not cache folder statistics")
    p.add_argument(
        "--kid-subset-size",
        type=int,
        default=1000,
        metavar="M",
        help="KID is averaged over 100 random subsets of M images from each folder (fewer "
        "when a folder holds fewer; default 1000)",
    )


def _add_inception_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--inception",
        default=None,
        help="Inception weights file (default: $MASKGIT_INCEPTION or the cache)",
    )
    p.add_argument(
        "--resize",
        default="tf",
        choices=["tf", "torch"],
        help="resize to 299 for Inception: tf (TF1 bilinear, the reference FID) or torch "
        "(F.interpolate bilinear, as pytorch-fid and the course lab: FIDs differ)",
    )


def _add_eval_inputs(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    p.add_argument("--images", required=True, help="folder of images to inpaint")
    p.add_argument("--masks", required=True, help="folder of masks with the same names")
    p.add_argument("--gt", default=None, help="ground-truth folder (default: --images)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--mask-convention",
        default="white-repaint",
        choices=["white-repaint", "white-keep"],
        help="what white means in the mask files: white-repaint (default; diffusers, LaMa) "
        "or white-keep (the course lab)",
    )
    p.add_argument("--limit", type=int, default=0, help="use N evenly spaced images only")
    p.add_argument(
        "--baselines",
        nargs="*",
        default=[],
        help="reference rows: white telea navier-stokes biharmonic, and tokenizer-ceiling "
        "(the true tokens decoded into the hole: the best any transformer could do with "
        "this tokenizer)",
    )
    _add_inception_options(p)
    p.add_argument(
        "--no-paste",
        action="store_true",
        help="score the decoder's whole output image (as the course lab did), without "
        "pasting the known pixels back",
    )


def args_evaluate(p: argparse.ArgumentParser) -> None:
    _add_eval_inputs(p)
    add_decoding_options(p)


SWEPT = ("rule", "schedule", "steps", "sweet_spot", "seed")  # sweep's axes: lists, not one value


def args_sweep(p: argparse.ArgumentParser) -> None:
    _add_eval_inputs(p)
    add_decoding_options(p, skip=SWEPT)
    p.add_argument(
        "--schedules",
        nargs="+",
        default=["linear", "cosine", "square"],
        metavar="NAME",
        help=f"mask schedules to sweep ({', '.join(SCHEDULE_NAMES)}; default linear cosine square)",
    )
    p.add_argument(
        "--steps",
        nargs="+",
        type=int,
        default=[4, 8, 12, 16, 24],
        metavar="T",
        help="numbers of decoding steps to sweep (default 4 8 12 16 24)",
    )
    p.add_argument(
        "--sweet-spots",
        nargs="*",
        type=int,
        default=[],
        help="also stop early after S steps (S <= steps; S < 0 counts from steps: -2 = T-2); "
        "the sweet spots of one T share one decode",
    )
    p.add_argument(
        "--sweet-spots-at",
        nargs="+",
        type=int,
        metavar="T",
        help="sweep the sweet spots at these steps only (default: at every T of --steps)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="sampling seeds: each setting runs once per seed, the table shows the means "
        "(default 0)",
    )
    p.add_argument("--rules", nargs="+", default=["paper"], help="decoding rules: paper lab halton")


def args_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="lab-64", help="preset name or YAML file (default lab-64)")
    _add_overrides(p, "transformer.depth=8")
    p.add_argument("--verbose", action="store_true", help="also print the full config")


def args_prepare_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=["emoji"], help="which data set")
    p.add_argument(
        "--source",
        nargs="+",
        required=True,
        help="unpacked emoji-datasource-<vendor> package folders",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=64, help="image size (default 64)")


def args_train_tokenizer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder of training images")
    _add_training(p, "tokenizer")


def args_tokenize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", required=True, help="tokenizer run folder or .safetensors file")
    p.add_argument("--data", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="output token folder")
    p.add_argument("--hflip", action="store_true", help="also store horizontally flipped copies")
    p.add_argument(
        "--batch-size", type=int, default=64, help="images per tokenizer batch (default 64)"
    )


def args_train(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="pre-tokenised folder (from `maskgit tokenize`)")
    src.add_argument("--data", help="folder of images, tokenised on the fly (needs --tokenizer)")
    p.add_argument("--tokenizer", help="tokenizer run folder or file (default: from --tokens)")
    _add_training(p, "transformer")


def args_inpaint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, metavar="DIR|FILE", help="image file or folder")
    p.add_argument(
        "--masks",
        required=True,
        metavar="DIR|FILE",
        help="mask file or folder (same file names as the images; one file = one mask for all)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--gt",
        default=None,
        metavar="DIR",
        help="ground-truth images (same names) shown in the --save-steps comparison",
    )
    conv = p.add_mutually_exclusive_group()
    conv.add_argument(
        "--mask-convention",
        default="white-repaint",
        help="what white means in the mask files: white-repaint (default; diffusers, LaMa) "
        "or white-keep (the course lab); transparent pixels are never repainted",
    )
    conv.add_argument(
        "--white-keep",
        dest="mask_convention",
        action="store_const",
        const="white-keep",
        help="shortcut for --mask-convention white-keep (the course lab's mask files)",
    )
    p.add_argument(
        "--feather",
        type=int,
        default=0,
        metavar="N",
        help="blend the repainted content in over N pixels inside the mask edge (default 0)",
    )
    _add_file_run(p)


def args_outpaint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, metavar="DIR|FILE", help="image file or folder")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--pad",
        nargs="+",
        default=None,
        metavar="M",
        help="the margin to generate around each image, which keeps its own size and pixels: "
        "pixels (16) or a percentage of the image's side (25%%); 1 value (every side), 2 "
        "(horizontal vertical) or 4 (left top right bottom). Default: 50%% (the image in the "
        "central half of the output)",
    )
    p.add_argument(
        "--canvas",
        type=int,
        nargs=2,
        default=None,
        metavar=("W", "H"),
        help="or: the output size in pixels (the image centred on it, or at --at)",
    )
    p.add_argument(
        "--at",
        type=int,
        nargs=2,
        default=None,
        metavar=("X", "Y"),
        help="with --canvas: where the image's top-left corner goes",
    )
    _add_file_run(p)


def args_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_file_run(p)


def args_serve(p: argparse.ArgumentParser) -> None:
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests addressed to NAME (Host header; repeatable); always "
        "accepted: localhost, 127.0.0.1, ::1 and --host",
    )


# --------------------------------------------------------------------------- parser


# ---- import-lab ---------------------------------------------------------------------------
# `maskgit import-lab`: the course lab's VQGAN + transformer checkpoints -> a maskgit model
# folder (src/maskgit/lab_import.py does the work; torch is imported only when it runs).


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers, e.g. 0.5,0.5,0.5") from None


def cmd_import_lab(args: argparse.Namespace) -> int:
    from maskgit.lab_import import import_lab

    report = import_lab(
        args.vqgan_config,
        args.vqgan,
        args.transformer_config,
        args.transformer,
        args.out,
        key_map=args.map,
        heads=args.heads,
        image_mean=args.image_mean,
        image_std=args.image_std,
        qkv_order=args.qkv_order,
        qkv_evidence=args.qkv_evidence,
    )
    tok, tr = report.tokenizer, report.transformer
    layouts = ", ".join(f"{name} ({n} layers)" for name, n in report.attention_layouts.items())
    print(
        f"VQGAN {report.vqgan_source}: {tok.image_size}x{tok.image_size} -> "
        f"{tok.token_grid}x{tok.token_grid} tokens, {tok.codebook_size} codes, latent "
        f"{tok.latent_dim}\n"
        f"transformer {args.transformer} ({report.transformer_container}): {tr.depth} layers, "
        f"dim {tr.dim}, {tr.heads} heads, MLP {tr.mlp_dim}; attention: {layouts}\n"
        + (f"qkv row order: {report.qkv.summary()}\n" if report.qkv.order else "")
        + f"wrote {report.out} (tokenizer.safetensors, transformer.safetensors, config.yaml, "
        f"import.json); use it with --model {report.out}"
    )
    return 0


IMPORT_LAB_DESCRIPTION = (
    "Convert the course lab's checkpoints into a maskgit model folder (safetensors +\n"
    "config) that inpaint, evaluate, sweep, serve and MaskGIT.from_pretrained load.\n\n"
    "Files are read with torch.load(weights_only=True): a checkpoint that needs code\n"
    "to unpickle is refused. The architecture is read from the tensors' names and\n"
    "shapes and checked against the yml files; a mismatch stops with one line naming\n"
    "the key and the file, and nothing is written."
)
IMPORT_LAB_EPILOG = (
    "The student's own attention layer is recognised by name and shape: separate\n"
    "q/k/v/out projections (q, query, q_proj, to_q, ...; with or without biases), one\n"
    "fused qkv projection (qkv, to_qkv, ...) or nn.MultiheadAttention (in_proj_weight,\n"
    "out_proj). Keys it does not understand are listed; name them in a YAML file given\n"
    "with --map, one line per module inside each layer's Attention, e.g.\n"
    "    my_query: q\n    my_key: k\n    my_value: v\n    my_output: out\n"
    "(roles: q, k, v, qkv, out, ignore).\n\n"
    "A fused qkv projection's row order is not in its name or shape, so it is never\n"
    "guessed: --qkv-order per-head for the lab report's\n"
    "    qkv = self.qkv_proj(x).view(B, N, heads, 3 * d_k).transpose(1, 2)\n"
    "    q, k, v = qkv.chunk(3, dim=-1)\n"
    "(rows [q_0 k_0 v_0 | q_1 k_1 v_1 | ...]), --qkv-order qkv for\n"
    "    q, k, v = self.qkv_proj(x).chunk(3, dim=-1)    # before the head split\n"
    "(rows [all q | all k | all v]); or --qkv-evidence DIR with a few of the lab's images:\n"
    "the order with the clearly lower masked-token loss is taken, both losses printed."
)


def args_import_lab(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = IMPORT_LAB_EPILOG
    p.add_argument(
        "--vqgan-config",
        required=True,
        metavar="VQGAN.yml",
        help="the skeleton's VQGAN config (model_param: image_channels, latent_dim, "
        "num_codebook_vectors, img_resolution, latent_resolution, ...)",
    )
    p.add_argument(
        "--vqgan",
        default=None,
        metavar="VQGAN.pt",
        help="the pretrained VQGAN state dict handed out with the lab (encoder / decoder / "
        "codebook / quant_conv / post_quant_conv); may be left out when --transformer holds "
        "the whole MaskGit module (vqgan.* keys)",
    )
    p.add_argument(
        "--transformer-config",
        required=True,
        metavar="MaskGit.yml",
        help="the skeleton's MaskGit config (model_param.Transformer_param: num_image_tokens, "
        "num_codebook_vectors, dim, n_layers, hidden_dim)",
    )
    p.add_argument(
        "--transformer",
        required=True,
        metavar="transformer.pt",
        help="your trained transformer: a bare state_dict, a training checkpoint "
        "{model_state_dict, optimizer_state_dict, epoch, ...} or the whole MaskGit module's "
        "state dict (transformer.* keys, vqgan.* beside them)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="model folder to write (new or empty)"
    )
    p.add_argument(
        "--map",
        default=None,
        metavar="keys.yaml",
        help="names of attention modules the importer did not recognise -> q, k, v, qkv, out "
        "or ignore (see below)",
    )
    p.add_argument(
        "--heads",
        type=int,
        default=None,
        help="attention heads (not stored in the weights; default: num_heads in MaskGit.yml, "
        "else the skeleton's 16)",
    )
    p.add_argument(
        "--image-mean",
        type=_floats,
        default=(0.4868, 0.4341, 0.3844),
        metavar="R,G,B",
        help="per-channel mean the VQGAN was trained with (default: the lab's cat faces, "
        "0.4868,0.4341,0.3844)",
    )
    p.add_argument(
        "--image-std",
        type=_floats,
        default=(0.2620, 0.2527, 0.2543),
        metavar="R,G,B",
        help="per-channel std the VQGAN was trained with (default: 0.2620,0.2527,0.2543)",
    )
    p.add_argument(
        "--qkv-order",
        choices=("per-head", "qkv"),
        default=None,
        help="row order of a fused qkv projection: per-head (the lab report's .view(B, N, "
        "heads, 3 * d_k) then chunk(3, dim=-1)) or qkv (chunk(3, dim=-1) before the head "
        "split); needed for a fused qkv unless --qkv-evidence decides it (see below)",
    )
    p.add_argument(
        "--qkv-evidence",
        default=None,
        metavar="DIR",
        help="a few of the lab's images (or a `maskgit tokenize` folder): the fused qkv order "
        "whose masked-token loss on them is clearly lower is taken, both losses printed; "
        "refused when they are not clearly apart",
    )


# ---- end import-lab -----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    device: bool = True  # takes --device
    description: str | None = None


COMMANDS = (
    Command(
        "demo",
        "inpaint bundled sample emoji with the embedded default",
        args_demo,
        cmd_demo,
        description="Inpaint the bundled sample emoji (12 images with their masks) with the "
        "embedded default model, or --model, offline; write OUT/<name>.png, the step pictures "
        "in OUT/steps/ and OUT/overview.png (rows: masked input, result, original). Decoding: "
        "the shipped model's best setting unless the flags below change it.",
    ),
    Command(
        "inpaint",
        "repaint the masked part of images (files or folders paired by file name)",
        args_inpaint,
        cmd_inpaint,
        description="Repaint the masked pixels of each image by iterative decoding; pixels "
        "outside the mask stay exact. Images and masks pair by equal file name; outputs are "
        "PNGs with the input names, each at its input's size (the model fills a square "
        "around the hole at its own resolution; --save-steps pictures show those steps).",
    ),
    Command(
        "outpaint",
        "extend images: generate a margin around each, the image kept at its own size",
        args_outpaint,
        cmd_outpaint,
        description="Place each image, at its own size and with its own pixels, on a larger "
        "canvas (a --pad margin, default 50% of the image on every side; or --canvas W H "
        "with --at X Y) and generate everything around it. The model fills the canvas at its "
        "own resolution and the new area is upscaled to the canvas's; outputs are PNGs with "
        "the input names at the canvas size (--save-steps pictures show the model's steps).",
    ),
    Command(
        "generate",
        "generate images from nothing by iterative decoding",
        args_generate,
        cmd_generate,
        description="Generate N images (every token unknown at the start); image i uses "
        "seed + i and is written as OUT/sample_<i>.png.",
    ),
    Command(
        "fid",
        "FID and KID between two image folders",
        args_fid,
        cmd_fid,
        description="FID and KID between the images of two folders, from Inception's 2048 "
        "pool features (lower is better for both; 0: the same statistics). Both depend on N: "
        f"compare only numbers at equal N; under {SMALL_N} images a warning says FID is "
        "unstable. Each folder's statistics are cached (--no-cache: recompute).",
    ),
    Command(
        "evaluate",
        "inpaint a test set and score it (FID, KID, PSNR...)",
        args_evaluate,
        cmd_evaluate,
        description="Inpaint every image of --images through its mask (paired by file name) "
        "and score the results against the ground truth (--gt, default the images): FID and "
        "KID over whole images, PSNR (dB), SSIM and L1 inside the masks, seconds per image. "
        "--baselines adds rows for classical fills and the tokenizer's ceiling. Writes "
        "OUT/results.json, OUT/results.csv and the images, and prints a table.",
    ),
    Command(
        "sweep",
        "schedules x steps x sweet spots x seeds -> CSV, plots",
        args_sweep,
        cmd_sweep,
        description="Evaluate (as `maskgit evaluate`) every combination of --rules, "
        "--schedules, --steps, --sweet-spots and --seeds on one test set; write "
        "OUT/sweep.csv, sweep.json, table.md (means over seeds) and plots of FID and time "
        "against the number of steps.",
    ),
    Command(
        "info",
        "print a preset's architecture and parameter counts",
        args_info,
        cmd_info,
        device=False,
        description="Print a preset's (or YAML config's) tokenizer and transformer: sizes, "
        "layers, codebook and parameter counts, after any --set overrides; --verbose adds "
        "the whole config as YAML.",
    ),
    Command(
        "prepare-data",
        "build a data set (emoji) from npm packages",
        args_prepare_data,
        cmd_prepare_data,
        device=False,
        description="Build an image data set from unpacked emoji-datasource-<vendor> npm "
        "packages: every emoji at --size pixels on white, one PNG per emoji and vendor, split "
        "by emoji into OUT/train, OUT/val and OUT/test (images and masks, white = repaint).",
    ),
    Command(
        "train-tokenizer",
        "train the VQGAN tokenizer on a folder of images",
        args_train_tokenizer,
        cmd_train_tokenizer,
        description="Stage 1: train the VQGAN tokenizer (encoder, codebook, decoder) on the "
        "images of --data, resized to the preset's size. A share of the images is held out "
        "and scored after each epoch (a line `epoch N validation: ...`); OUT gets "
        "tokenizer.safetensors, the best and per-epoch weights, metrics.csv, config.yaml "
        "and latest.state.pt for --resume.",
    ),
    Command(
        "tokenize",
        "pre-tokenise a folder of images once",
        args_tokenize,
        cmd_tokenize,
        description="Encode every image of --data with a trained tokenizer and store the "
        "token grids in OUT, so that `maskgit train --tokens OUT` does not run the tokenizer "
        "in every epoch.",
    ),
    Command(
        "train",
        "train the transformer with the masked-token loss",
        args_train,
        cmd_train,
        description="Stage 2: train the bidirectional transformer to predict masked tokens "
        "(the masked-token cross-entropy) on --tokens, or on --data tokenised on the fly with "
        "--tokenizer. Validation after each epoch as in train-tokenizer; OUT gets "
        "transformer.safetensors beside the tokenizer: a model folder for --model.",
    ),
    Command(
        "serve",
        "start the local web demo: draw a mask, watch MaskGIT fill it step by step",
        args_serve,
        cmd_serve,
        description="Serve a local web page (FastAPI; needs `pip install "
        "'maskgit-toolkit[web]'`, from a clone `pip install -e '.[web]'`) to "
        "inpaint an image through a painted mask, outpaint or generate images, showing every "
        "decoding step. Nothing is fetched from the internet.",
    ),
    Command(
        "import-lab",
        "import the course lab's VQGAN and transformer checkpoints as a model folder",
        args_import_lab,
        cmd_import_lab,
        device=False,
        description=IMPORT_LAB_DESCRIPTION,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskgit",
        description="MaskGIT: train a VQGAN tokenizer and a bidirectional transformer, then "
        "inpaint, outpaint and generate by iterative parallel decoding.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.arguments(p)
        if command.device:
            p.add_argument(
                "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
            )
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `maskgit` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    warnings.formatwarning = lambda message, category, *a, **k: f"maskgit: warning: {message}\n"
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("maskgit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line per error, traceback only with --debug
        if debug:
            raise
        code = 2 if isinstance(exc, USAGE_ERRORS) else 1
        message = str(exc)
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            # e.g. "[Errno 20] Not a directory: 'x/y'" from writing under a regular file
            target = exc.filename2 if exc.filename2 is not None else exc.filename
            message = f"{target}: {exc.strerror}"
        print(f"maskgit: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
