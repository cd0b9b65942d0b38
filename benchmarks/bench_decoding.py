"""Iterative decoding speed: our path against the common lab-port loop.

Our path (`MaskGIT.inpaint`): the masked image is encoded to tokens once, `decode()` runs the
transformer once per step through a `logits_fn` (confidence = log-probability), and only the
final tokens are decoded to an image.

The lab-port loop (written below, `lab_port_inpaint`): what public ports of the course lab do
-- at every step re-encode the current image with the tokenizer's encoder, run the
transformer, take the confidence in probability space (softmax probabilities, not
log-probabilities), re-mask the least confident tokens, and decode the image with the
decoder, i.e. the full pipeline runs once per step.

Models are randomly initialised (speed does not depend on the weights). Every configuration
(preset, method, batch) runs in a fresh subprocess so its peak memory can be measured:
`ru_maxrss` growth over the decoding runs on CPU (tracemalloc does not see torch's
allocations), `torch.cuda.max_memory_allocated` growth on CUDA.

    python benchmarks/bench_decoding.py                 # --quick defaults, < 5 min on 2 cores
    python benchmarks/bench_decoding.py --full --device cuda
    python benchmarks/bench_decoding.py --threads 1 --clock cpu   # on a busy machine

--quick (default): emoji-demo at batch 1 and 32, lab-64 at batch 1 and 8; steps 8, 12, 20;
one timed run per point after a 1-step warm-up. --full: batch 1 and 32 for every preset,
best of 3 runs. Numbers are wall-clock times and depend on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

QUICK_BATCHES = {"emoji-demo": (1, 32), "lab-64": (1, 8)}
FULL_BATCHES = (1, 32)
METHODS = ("ours", "port")


# --------------------------------------------------------------------------- the port loop


def lab_port_inpaint(
    tokenizer,
    transformer,
    images,
    pixel_masks,
    steps: int,
    schedule: str = "cosine",
    choice_temperature: float = 4.5,
    generator=None,
):
    """The common lab-port loop: the whole pipeline (encode, transformer, decode) per step.

    images uint8 (B, 3, S, S), pixel_masks bool (B, S, S) True = repaint -> uint8 images.
    """
    import torch

    from maskgit.data import to_model_range, to_uint8
    from maskgit.masking import pixel_to_token_mask
    from maskgit.pipeline import MASKED_PIXEL_VALUE, paste_known
    from maskgit.schedule import gamma

    device = next(transformer.parameters()).device
    mask_id = transformer.cfg.mask_token_id
    grid = tokenizer.cfg.token_grid
    filled = torch.where(pixel_masks[:, None], torch.full_like(images, MASKED_PIXEL_VALUE), images)
    current = to_model_range(filled).to(device)  # the image the next step re-encodes
    unknown = pixel_to_token_mask(pixel_masks, tokenizer.cfg.downsample).flatten(1).to(device)
    unknown_at_start = unknown.sum(dim=1)
    with torch.no_grad():
        for step in range(steps):
            tokens = tokenizer.encode(current).flatten(1)  # re-encode every step
            tokens = torch.where(unknown, torch.full_like(tokens, mask_id), tokens)
            logits = transformer(tokens).float()
            probs = logits.softmax(dim=-1)  # probability space
            sampled = torch.multinomial(
                probs.reshape(-1, probs.shape[-1]), 1, generator=generator
            ).reshape(tokens.shape)
            sampled = torch.where(unknown, sampled, tokens)
            confidence = probs.gather(-1, sampled[..., None]).squeeze(-1)
            u = torch.rand(confidence.shape, generator=generator, device=device)
            gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-7)))
            confidence = confidence + choice_temperature * (1 - (step + 1) / steps) * gumbel
            confidence = torch.where(unknown, confidence, torch.full_like(confidence, math.inf))
            ratio = float(gamma(schedule, (step + 1) / steps, tokens.shape[1]))
            keep = torch.floor(ratio * unknown_at_start).long()
            if step < steps - 1:
                keep = torch.clamp(torch.minimum(keep, unknown.sum(dim=1) - 1), min=1)
            else:
                keep = torch.zeros_like(keep)
            ranks = confidence.argsort(dim=1).argsort(dim=1)
            unknown = ranks < keep[:, None]
            current = tokenizer.decode_tokens(sampled.reshape(-1, grid, grid))  # every step
    return paste_known(images, to_uint8(current.cpu()), pixel_masks)


# --------------------------------------------------------------------------- one configuration


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(cfg: dict) -> dict:
    """Time one (preset, method, batch) at every step count; measure its peak memory."""
    import torch

    torch.set_num_threads(cfg["threads"])
    from maskgit.config import get_preset
    from maskgit.pipeline import MaskGIT
    from maskgit.tokenizer.model import VQGAN
    from maskgit.transformer import BidirectionalTransformer

    preset = get_preset(cfg["preset"])
    torch.manual_seed(0)
    model = MaskGIT(
        VQGAN(preset.tokenizer), BidirectionalTransformer(preset.transformer), cfg["device"]
    )
    device = model.device
    size, batch = model.image_size, cfg["batch"]
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    masks[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True  # the lab's centre hole

    def run(steps: int) -> None:
        if cfg["method"] == "ours":
            model.inpaint(images, masks, steps=steps, batch_size=batch)
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                lab_port_inpaint(
                    model.tokenizer,
                    model.transformer,
                    images,
                    masks,
                    steps,
                    generator=torch.Generator(device).manual_seed(0),
                )
        _sync(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    rss_before = _rss_mb()
    run(1)  # warm-up
    cpu_clock = cfg["clock"] == "cpu" and device.type == "cpu"  # GPU work is not CPU time
    clock = time.process_time if cpu_clock else time.perf_counter
    times = {}
    for steps in cfg["steps"]:
        best = math.inf
        for _ in range(cfg["repeats"]):
            started = clock()
            run(steps)
            best = min(best, clock() - started)
        times[steps] = best
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak_mb = _rss_mb() - rss_before
    return {"times": times, "peak_mb": peak_mb, "device": str(device)}


def run_in_subprocess(cfg: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker {cfg} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["times"] = {int(k): v for k, v in result["times"].items()}
    return result


# --------------------------------------------------------------------------- table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True, help="(default) see above")
    mode.add_argument("--full", action="store_true", help="batch 1 and 32 everywhere, best of 3")
    parser.add_argument("--presets", nargs="+", default=["emoji-demo", "lab-64"])
    parser.add_argument("--steps", nargs="+", type=int, default=[8, 12, 20])
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="override batches")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per point (best)")
    parser.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if any)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, for a machine "
        "shared with other jobs (use with --threads 1 on CPU: it then approximates the "
        "elapsed time the run would take alone, and ignores time spent waiting for a core)",
    )
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    repeats = args.repeats or (3 if args.full else 1)
    started = time.perf_counter()
    rows, summary = [], []
    device = None
    for preset in args.presets:
        batches = args.batches or (FULL_BATCHES if args.full else QUICK_BATCHES.get(preset, (1,)))
        for batch in batches:
            results = {}
            for method in METHODS:
                cfg = {
                    "preset": preset,
                    "method": method,
                    "batch": batch,
                    "steps": args.steps,
                    "repeats": repeats,
                    "device": args.device,
                    "threads": args.threads,
                    "clock": args.clock,
                }
                results[method] = run_in_subprocess(cfg)
                device = results[method]["device"]
                print(
                    f"  done {preset} {method} batch {batch} "
                    f"({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            for steps in args.steps:
                ours, port = results["ours"]["times"][steps], results["port"]["times"][steps]
                rows.append((preset, batch, steps, ours / batch, port / batch))
            lo, hi = min(args.steps), max(args.steps)
            times = {m: results[m]["times"] for m in METHODS}
            summary.append(
                (
                    preset,
                    batch,
                    *(times[m][hi] / times[m][lo] for m in METHODS),
                    # marginal cost of one more step, per image
                    *((times[m][hi] - times[m][lo]) / (hi - lo) * 1000 / batch for m in METHODS),
                    *(results[m]["peak_mb"] for m in METHODS),
                )
            )

    print(
        f"\nInpainting a centre hole, random-initialised models, device {device}, "
        f"{args.threads} torch thread(s), {args.clock} clock, best of {repeats} run(s)\n"
    )
    header = (
        f"{'preset':<11} {'batch':>5} {'steps':>5} | {'ours ms/img':>11} {'ours img/s':>10} | "
        f"{'port ms/img':>11} {'port img/s':>10} | {'speedup':>7}"
    )
    print(header)
    print("-" * len(header))
    for preset, batch, steps, ours, port in rows:
        print(
            f"{preset:<11} {batch:>5} {steps:>5} | {ours * 1000:>11.1f} {1 / ours:>10.2f} | "
            f"{port * 1000:>11.1f} {1 / port:>10.2f} | {port / ours:>6.2f}x"
        )
    lo, hi = min(args.steps), max(args.steps)
    print(
        f"\nCost per step and memory (ideal linear ratio {hi}/{lo} = {hi / lo:.2f}; "
        "ms/step/img = (t_hi - t_lo) / (hi - lo) / batch; peak = memory growth while "
        "decoding)\n"
    )
    header = (
        f"{'preset':<11} {'batch':>5} | {f'ours {hi}/{lo}':>10} {f'port {hi}/{lo}':>10} | "
        f"{'ours ms/step/img':>16} {'port ms/step/img':>16} | {'ours peak MB':>12} "
        f"{'port peak MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for preset, batch, r_ours, r_port, s_ours, s_port, m_ours, m_port in summary:
        print(
            f"{preset:<11} {batch:>5} | {r_ours:>10.2f} {r_port:>10.2f} | {s_ours:>16.1f} "
            f"{s_port:>16.1f} | {m_ours:>12.0f} {m_port:>12.0f}"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
