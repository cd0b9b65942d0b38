"""Transformer training throughput: pre-tokenised tokens against encoding images every step.

Our path (`maskgit tokenize` once, then `maskgit train --tokens`): the data set is token grids
in memory; a training step is mask -> transformer forward/backward -> AdamW.

The common port design (written below, `EncodeEveryStep`): the data set is images; every
training step first runs the frozen tokenizer's encoder on the batch under `no_grad`, then
masks and trains the transformer exactly as above. (Ports also decode the image files from
disk every step; that cost is left out here, so the port is measured at its best.)

Both paths go through the same training step as `maskgit train` (`maskgit.train.
_optimizer_step`: micro-batching, loss normalisation, clipping, AdamW), with randomly
initialised models and random images / tokens (speed does not depend on the weights).

    python benchmarks/bench_training.py                      # lab-64 and emoji-demo, CPU
    python benchmarks/bench_training.py --presets emoji-demo --steps 10 --device cuda

Reported: images/s by the wall clock and by the process CPU clock (CPU seconds of all
threads; on a busy machine the wall clock also counts time spent waiting for a core, the CPU
clock does not, so the speed-up by CPU time is the steadier number there).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from maskgit.config import get_preset
from maskgit.data import TensorImages, TokenDataset
from maskgit.tokenizer.model import VQGAN
from maskgit.train import Distributed, TransformerTask, _optimizer_step
from maskgit.transformer import BidirectionalTransformer

BATCH = {"lab-64": 8, "emoji-demo": 32}


class EncodeEveryStep(TransformerTask):
    """The port design: images in, the tokenizer's encoder runs inside every training step."""

    def __init__(self, transformer, cfg, tokenizer: VQGAN):
        super().__init__(transformer, cfg)
        self.tokenizer = tokenizer.eval().requires_grad_(False)

    def step(self, batch, step, rng, offset, global_batch):
        with torch.no_grad():
            tokens = self.tokenizer.encode(batch).flatten(1)  # (B, N)
        return super().step(tokens, step, rng, offset, global_batch)


def bench(preset_name: str, path: str, batch: int, warmup: int, steps: int, device: str) -> dict:
    preset = get_preset(preset_name)
    cfg = preset.transformer_training
    cfg.batch_size, cfg.grad_accum = batch, 1
    torch.manual_seed(0)
    transformer = BidirectionalTransformer(preset.transformer).to(device).train()
    n = batch * (warmup + steps)
    if path == "pre-tokenised":
        task = TransformerTask(transformer, cfg)
        tokens = torch.randint(
            0, preset.transformer.codebook_size, (n, preset.transformer.num_tokens)
        )
        data = TokenDataset(tokens)
    else:
        tokenizer = VQGAN(preset.tokenizer).to(device)
        task = EncodeEveryStep(transformer, cfg, tokenizer)
        size = preset.tokenizer.image_size
        data = TensorImages(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8))
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=cfg.lr, betas=cfg.betas)
    order = torch.arange(n)
    wall = cpu = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
        _optimizer_step(
            task,
            data,
            order[step * batch : (step + 1) * batch],
            cfg=cfg,
            ddp=Distributed(),
            micro=batch,
            optimizer=optimizer,
            step=step,
            total_steps=warmup + steps,
            device=device,
            autocast=nullcontext(),
        )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "preset": preset_name,
        "path": path,
        "batch": batch,
        "s_per_step": wall / steps,
        "img_s_wall": batch * steps / wall,
        "img_s_cpu": batch * steps / cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["lab-64", "emoji-demo"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"{args.warmup} warm-up + {args.steps} timed steps"
    )
    rows = []
    for name in args.presets:
        for path in ("pre-tokenised", "encode every step"):
            rows.append(bench(name, path, BATCH.get(name, 8), args.warmup, args.steps, args.device))
            r = rows[-1]
            print(
                f"  {name} {path}: {r['s_per_step']:.2f} s/step, {r['img_s_wall']:.2f} images/s "
                f"(wall), {r['img_s_cpu']:.2f} images/s (CPU clock)",
                flush=True,
            )
    print()
    print(
        "| preset | batch | path | s/step (wall) | images/s (wall) | images/s (CPU clock) "
        "| speed-up (wall) | speed-up (CPU clock) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["preset"] == r["preset"] and b["path"] != r["path"])
        ours = r["path"] == "pre-tokenised"
        wall = f"{r['img_s_wall'] / base['img_s_wall']:.2f}x" if ours else "1.00x"
        cpu = f"{r['img_s_cpu'] / base['img_s_cpu']:.2f}x" if ours else "1.00x"
        print(
            f"| {r['preset']} | {r['batch']} | {r['path']} | {r['s_per_step']:.2f} | "
            f"{r['img_s_wall']:.3g} | {r['img_s_cpu']:.3g} | {wall} | {cpu} |"
        )


if __name__ == "__main__":
    main()
