"""Training loops for both stages.

`fit` is one loop for any `TrainTask`: it knows nothing of the models. It handles the
data order (seeded per epoch, sharded over torchrun ranks with the same global batch),
gradient accumulation, AdamW with warm-up + cosine annealing, clipping, bf16 autocast on
CUDA, EMA weights, validation, atomic checkpoints (`latest`, `best`, every N epochs) and
exact resume. A task turns one batch into (summed loss, item count, metrics).

Run folder:
    config.yaml               the full preset used
    latest.state.pt           everything needed to resume (weights, optimiser, RNG, position)
    <name>.safetensors        inference weights (EMA when enabled), updated at each save
    <name>-best.safetensors   lowest validation loss so far
    <name>-epochNNN.safetensors
    metrics.csv               one row per logged step and per validation
    .lock                     while a run trains: its advisory lock (fcntl.flock) and pid

One run per folder: a new run refuses a folder that holds one (`--resume` continues it,
`overwrite=True` deletes it first), a second process refuses a folder whose lock is held, and
`--resume` refuses a config that changes what the saved run means (RESUME_SAFE_KEYS may
change). SIGTERM stops a run as Ctrl-C does: `latest` is saved.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from maskgit.checkpoint import (
    TOKENIZER_DIGEST_KEY,
    CheckpointError,
    load_model,
    load_state,
    read_metadata,
    save_model,
    save_state,
    weights_digest,
)
from maskgit.config import ConfigError, Preset, TrainingConfig, to_dict
from maskgit.data import TensorImages, TokenDataset, split_indices, to_uint8
from maskgit.fileio import atomic_write
from maskgit.masking import (
    apply_token_mask,
    masked_token_loss,
    random_token_mask,
    region_token_mask,
)
from maskgit.run_folder import (
    CONFIG_FILE,
    STATE_FILE,
    RunLock,
    check_run_folder,
    clear_run,
)
from maskgit.schedule import validate_schedule
from maskgit.tokenizer.losses import (
    PerceptualLoss,
    adaptive_gan_weight,
    generator_loss,
    hinge_d_loss,
    reconstruction_loss,
)
from maskgit.tokenizer.model import VQGAN, Discriminator
from maskgit.transformer import BidirectionalTransformer
from maskgit.visualize import save_grid, to_pil

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)  # both stop a run after saving `latest`


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad batch size); the message says why."""


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write of a run's file (a full disk, a file-size limit) stops training with one
    line naming the file and the reason; atomic writes leave the previous version in place."""
    try:
        yield
    except OSError as exc:
        raise TrainingError(
            f"{path}: cannot write ({exc.strerror or exc}): training stopped; the files saved "
            "before were left as they were"
        ) from exc


@dataclass
class StepOutput:
    loss_sum: torch.Tensor  # scalar: loss summed over `count` items
    count: torch.Tensor  # scalar: items (images or masked tokens) the loss is summed over
    metrics: dict[str, float] = field(default_factory=dict)


class TrainTask(Protocol):
    name: str  # file stem of the saved model: "tokenizer" or "transformer"
    nets: dict[str, nn.Module]  # trainable modules; the loop may wrap them in DDP

    def model(self) -> nn.Module: ...
    def step(
        self, batch: torch.Tensor, step: int, rng: torch.Generator, offset: int, global_batch: int
    ) -> StepOutput: ...
    def evaluate(self, batch: torch.Tensor, rng: torch.Generator) -> dict[str, float]: ...
    def after_step(self) -> tuple[dict[str, float], bool]:
        """Called after each optimiser update: (metrics, whether weights were changed outside
        autograd, e.g. re-seeded codes; under DDP the loop then gives every rank rank 0's)."""
        ...


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP / torch.compile wrapper."""
    module = getattr(module, "module", module)
    return getattr(module, "_orig_mod", module)


# --------------------------------------------------------------------------- tasks


class TokenizerTask:
    """VQGAN: reconstruction + codebook/commitment + adaptive hinge GAN after a warm-up."""

    name = "tokenizer"

    def __init__(self, tokenizer: VQGAN, cfg: TrainingConfig):
        self.cfg = cfg
        if cfg.decoder_only:
            tokenizer.tokenizing_part().requires_grad_(False)
        disc = Discriminator(tokenizer.cfg.in_channels, cfg.disc_channels, cfg.disc_layers)
        self.nets = {"tokenizer": tokenizer, "discriminator": disc}
        self.perceptual = PerceptualLoss(cfg.perceptual_weights) if cfg.perceptual_weight else None

    def model(self) -> nn.Module:
        return unwrap(self.nets["tokenizer"])

    def step(self, batch, step, rng, offset, global_batch) -> StepOutput:
        vqgan, disc = self.nets["tokenizer"], self.nets["discriminator"]
        recon, vq = vqgan(batch)
        rec = reconstruction_loss(recon.float(), batch, self.cfg.rec_loss)
        if self.perceptual is not None:
            rec = rec + self.cfg.perceptual_weight * self.perceptual.to(batch.device)(recon, batch)
        total = rec + vq.loss
        metrics = {
            "rec": rec.item(),
            "vq": vq.loss.item(),
            "perplexity": vq.perplexity.item(),
            "usage": vq.usage.item(),
        }
        if step >= self.cfg.disc_start and self.cfg.disc_weight > 0:
            # The generator term goes through the bare critic with frozen weights, so it never
            # trains the critic; the critic's own loss is one (DDP-wrapped) call on real+fake.
            critic = unwrap(disc).requires_grad_(False)
            g_loss = generator_loss(critic(recon).float())
            critic.requires_grad_(True)
            weight = self.cfg.disc_weight * adaptive_gan_weight(
                rec, g_loss, unwrap(vqgan).last_layer_weight
            )
            logits_real, logits_fake = disc(torch.cat([batch, recon.detach()])).float().chunk(2)
            d_loss = hinge_d_loss(logits_real, logits_fake)
            total = total + weight * g_loss + d_loss
            metrics.update(g_loss=g_loss.item(), d_loss=d_loss.item(), gan_weight=weight.item())
        n = torch.tensor(float(batch.shape[0]), device=batch.device)
        return StepOutput(total * n, n, metrics)

    @torch.no_grad()
    def evaluate(self, batch, rng) -> dict[str, float]:
        model = self.model()
        recon, vq = model(batch)
        mse = (recon.clamp(-1, 1) - batch).pow(2).flatten(1).mean(1)  # (B,) in [-1,1] units
        psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))
        n = batch.shape[0]
        return {
            "loss": reconstruction_loss(recon, batch, self.cfg.rec_loss).item() * n,
            "psnr": psnr.sum().item(),
            "usage": vq.usage.item() * n,
            "count": n,
        }

    def after_step(self) -> tuple[dict[str, float], bool]:
        metrics = self.model().after_optimizer_step()  # re-seeds dead codes when configured
        return metrics, metrics.get("reseeded", 0.0) > 0


class TransformerTask:
    """Masked visual token modelling: cross-entropy on masked positions only."""

    name = "transformer"

    def __init__(self, transformer: BidirectionalTransformer, cfg: TrainingConfig):
        self.cfg = cfg
        self.nets = {"transformer": transformer}

    def model(self) -> nn.Module:
        return unwrap(self.nets["transformer"])

    def _masked_batch(self, tokens, rng, offset, global_batch):
        cfg = self.model().cfg
        mask = random_token_mask(global_batch, cfg.num_tokens, self.cfg.mask_schedule, rng)
        if self.cfg.region_mask_fraction > 0:  # (drawn for the global batch, like `mask`)
            grid = math.isqrt(cfg.num_tokens)
            regions = region_token_mask(global_batch, grid, self.cfg.mask_schedule, rng)
            use_region = torch.rand(global_batch, 1, generator=rng) < self.cfg.region_mask_fraction
            mask = torch.where(use_region, regions, mask)
        mask = mask[offset : offset + tokens.shape[0]].to(tokens.device)  # (B, N)
        return apply_token_mask(tokens, mask, cfg.mask_token_id), mask

    def step(self, batch, step, rng, offset, global_batch) -> StepOutput:
        inputs, mask = self._masked_batch(batch, rng, offset, global_batch)
        logits = self.nets["transformer"](inputs)  # (B, N, K)
        loss_sum = masked_token_loss(
            logits, batch, mask, label_smoothing=self.cfg.label_smoothing, reduction="sum"
        )
        count = mask.sum().float()
        accuracy = (logits[mask].argmax(-1) == batch[mask]).float().mean().item()
        return StepOutput(loss_sum, count, {"accuracy": accuracy})

    @torch.no_grad()
    def evaluate(self, batch, rng) -> dict[str, float]:
        inputs, mask = self._masked_batch(batch, rng, 0, batch.shape[0])
        logits = self.model()(inputs)[mask].float()
        targets = batch[mask]
        return {
            "loss": F.cross_entropy(logits, targets, reduction="sum").item(),
            "accuracy": (logits.argmax(-1) == targets).sum().item(),
            "count": float(mask.sum()),
        }

    def after_step(self) -> tuple[dict[str, float], bool]:
        return {}, False


# --------------------------------------------------------------------------- the loop


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Distributed:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))


def pick_device(device: str | None) -> str:
    """'cuda' when available unless told otherwise."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def lr_at(step: int, total: int, cfg: TrainingConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine annealing to cfg.min_lr at `total` steps: from the
    warm-up's end ("cosine"), or from step cfg.decay_start with cfg.lr held until then ("wsd";
    decay_start 0 = held to the end, so a run can go on leg after leg)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    start = cfg.warmup_steps
    if cfg.lr_schedule == "wsd":
        if cfg.decay_start <= 0 or step < cfg.decay_start:
            return cfg.lr
        start = cfg.decay_start
    progress = min(1.0, (step - start) / max(1, total - start))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _rng(seed: int, *keys: int) -> torch.Generator:
    """A generator seeded from (seed, keys): the same on every rank and after resume."""
    value = seed
    for key in keys:
        value = (value * 1_000_003 + key) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def _batches(n: int, batch: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's global batches of dataset indices (seeded shuffle, last partial dropped)."""
    order = torch.randperm(n, generator=_rng(seed, epoch))
    return [order[i : i + batch] for i in range(0, n - batch + 1, batch)]


class CsvLog:
    """Append metric rows to metrics.csv (and TensorBoard when installed)."""

    def __init__(self, folder: Path, enabled: bool):
        self.path = folder / "metrics.csv"
        self.enabled = enabled
        self.rows = 0  # data rows in the file (saved with the state, see keep_first)
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder / "tensorboard"))
            except ImportError:
                pass

    def keep_first(self, rows: int | None) -> None:
        """Resume: keep the header and the first `rows` rows, those logged before the saved
        state (None keeps all); later rows belong to steps that run again."""
        self.rows = 0
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as handle:
            lines = list(csv.reader(handle))
        kept = lines if rows is None else lines[: rows + 1]
        self.rows = max(len(kept) - 1, 0)
        if len(kept) < len(lines):

            def write(tmp: Path) -> None:
                with open(tmp, "w", newline="") as handle:
                    csv.writer(handle).writerows(kept)

            atomic_write(self.path, write)

    def write(self, step: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with _writing(self.path), open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step", "epoch", "split", "metric", "value"])
            for key, value in metrics.items():
                writer.writerow([step, epoch, split, key, f"{value:.6g}"])
                self.rows += 1
                if self.writer is not None:
                    self.writer.add_scalar(f"{split}/{key}", value, step)


def _rng_state(device: str) -> dict[str, torch.Tensor]:
    """The global RNG states (CPU, and the device's CUDA generator when training on CUDA)."""
    state = {"rng": torch.get_rng_state()}
    if device.startswith("cuda"):
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])


def _buffers(task: TrainTask) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the nets' buffers (e.g. the codebook usage counters) to undo a partial step."""
    return {
        name: {k: b.detach().clone() for k, b in unwrap(net).named_buffers()}
        for name, net in task.nets.items()
    }


def _restore_buffers(task: TrainTask, saved: dict[str, dict[str, torch.Tensor]]) -> None:
    with torch.no_grad():
        for name, net in task.nets.items():
            for k, b in unwrap(net).named_buffers():
                b.copy_(saved[name][k])


@contextmanager
def _hold_interrupts() -> Iterator[None]:
    """Delay Ctrl-C (SIGINT) and SIGTERM to the end of the block, so that the interrupt
    handler never saves a half-applied update (weights stepped but the position not, half the
    epoch-end files). Only in the main thread (the only one that receives signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in INTERRUPTS}
    held = [signum for signum, handler in previous.items() if handler is not None]
    received: list = []
    for signum in held:
        signal.signal(signum, lambda *sig: received.append(sig))
    try:
        yield
    finally:
        for signum in held:
            signal.signal(signum, previous[signum])
        if received:
            signum = received[0][0]
            if callable(previous[signum]):
                previous[signum](*received[0])  # the default handler raises KeyboardInterrupt
            elif previous[signum] == signal.SIG_DFL:
                signal.raise_signal(signum)


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (sent by `timeout`, `docker stop`, job schedulers, torchrun) raises
    KeyboardInterrupt as Ctrl-C does, so the run saves `latest` and says how to resume.
    Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@torch.no_grad()
def _copy_from_main(model: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers.

    Called after a model's training hook, which may change weights outside autograd (dead-code
    re-seeding draws from this rank's own batch); without it the ranks' models drift apart.
    """
    for tensor in (*model.parameters(), *model.buffers()):
        dist.broadcast(tensor, src=0)


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers(), strict=True):
            e.copy_(b)


@dataclass
class Position:
    """Where a run is: optimiser steps done, the epoch and batch to do next, best val loss.

    Saved in the state as a plain dict (`as_dict`), so states stay loadable as they were."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best: float = float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch": self.batch, "best": self.best}


@dataclass
class Run:
    """One training run's moving parts, shared by the pieces of `fit`."""

    task: TrainTask
    cfg: TrainingConfig
    out: Path
    device: str
    ddp: Distributed
    micro: int  # items per micro-batch on this rank
    total_steps: int
    optimizer: torch.optim.Optimizer
    ema: nn.Module | None
    position: Position = field(default_factory=Position)
    log: CsvLog | None = None
    autocast: Any = field(default_factory=nullcontext)
    metadata: dict[str, str] = field(default_factory=dict)  # into every saved model file

    @property
    def state_path(self) -> Path:
        return self.out / STATE_FILE

    def shipped(self) -> nn.Module:
        """The weights that are saved for inference: EMA when enabled."""
        return self.ema or self.task.model()

    def save(self, tag: str = "") -> None:
        """`latest` (state + inference weights), and `<name>-<tag>` when tagged (rank 0)."""
        if not self.ddp.main:
            return
        state = {
            "modules": {n: unwrap(m).state_dict() for n, m in self.task.nets.items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **_rng_state(self.device),
            "position": self.position.as_dict(),
            "log_rows": self.log.rows if self.log is not None else 0,
        }
        with _writing(self.state_path):
            save_state(state, self.state_path)
        self.save_model(f"{self.task.name}.safetensors")
        if tag:
            self.save_model(f"{self.task.name}-{tag}.safetensors")

    def save_model(self, name: str) -> None:
        with _writing(self.out / name):
            save_model(self.shipped(), self.out / name, extra=self.metadata)


def _micro_batch(cfg: TrainingConfig, ddp: Distributed, items: int) -> int:
    """Items per micro-batch on one rank; TrainingError when the batch does not split."""
    micro = cfg.batch_size // (cfg.grad_accum * ddp.world)
    if micro * cfg.grad_accum * ddp.world != cfg.batch_size:
        raise TrainingError(
            f"batch_size={cfg.batch_size} is not divisible by grad_accum={cfg.grad_accum} x "
            f"{ddp.world} process(es)"
        )
    if items < cfg.batch_size:
        raise TrainingError(f"only {items} training items, fewer than batch_size={cfg.batch_size}")
    return micro


def build_optimizer(nets: dict[str, nn.Module], cfg: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and convolution kernels only (not biases, norms)."""
    params = [p for net in nets.values() for p in net.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
    )


def _resume(run: Run) -> int | None:
    """Load `latest` into the run; returns the metrics.csv rows it had written."""
    if not run.state_path.is_file():
        raise FileNotFoundError(f"--resume: {run.state_path} not found (nothing to resume)")
    state = load_state(run.state_path)
    try:
        for name, net in run.task.nets.items():
            net.load_state_dict(state["modules"][name])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.ema is not None and state.get("ema") is not None:
            run.ema.load_state_dict(state["ema"])
        _set_rng_state(state)
        run.position = Position(**state["position"])
        return state.get("log_rows")
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())  # torch's message spans one line per tensor
        raise CheckpointError(
            f"{run.state_path}: does not fit this run (another preset or --set than the run "
            f"that wrote it?): {detail[:300]}{' ...' if len(detail) > 300 else ''}"
        ) from exc


def warm_start(model: nn.Module, path: str | Path) -> None:
    """Load the weights of model file `path` into `model`; CheckpointError (naming the file)
    when it holds another kind of model or another config."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--init-from {path}: no such model file")
    source = load_model(path)
    if type(source) is not type(model) or source.cfg != model.cfg:
        raise CheckpointError(
            f"--init-from {path}: holds a {type(source).__name__} with config "
            f"{to_dict(source.cfg)}, the run trains a {type(model).__name__} with config "
            f"{to_dict(model.cfg)}"
        )
    model.load_state_dict(source.state_dict())


def _prepare_folder(out: Path, preset: Preset | None) -> None:
    """The run folder without stale temp files, with config.yaml (rank 0, after the checks,
    with the folder locked)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # temp files of writes cut short by a kill
        if stale.name.startswith(
            (f".{STATE_FILE}.", ".tokenizer", ".transformer", ".config", ".metrics")
        ):
            stale.unlink(missing_ok=True)
    if preset is not None:
        text = yaml.safe_dump(to_dict(preset), sort_keys=False)
        with _writing(out / CONFIG_FILE):
            atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(text))


def _wrap_nets(task: TrainTask, ddp: Distributed, compile_nets: bool) -> None:
    for name, net in task.nets.items():
        if ddp.world > 1:
            net = DistributedDataParallel(net)
        task.nets[name] = torch.compile(net) if compile_nets else net


def _apply_update(run: Run, metrics: dict[str, float], index: int, undo: list) -> None:
    """optimizer.step(), EMA, the task's after-step hook and the position: all or nothing
    (Ctrl-C is held until the end; then `undo` is already cleared: the step is done)."""
    with _hold_interrupts():
        run.optimizer.step()
        if run.ema is not None:
            _ema_update(run.ema, run.task.model(), run.cfg.ema_decay)
        hook_metrics, changed = run.task.after_step()
        metrics.update(hook_metrics)
        if run.ddp.world > 1:
            flag = torch.tensor([float(changed)], device=run.device)
            dist.all_reduce(flag)  # any rank changed weights outside autograd?
            if flag.item() > 0:
                _copy_from_main(run.task.model())
        run.position.step += 1
        run.position.batch = index + 1
        undo.clear()


def _run_epoch(run: Run, train_set, progress: bool, checkpoint_steps: int, undo: list) -> bool:
    """Train the rest of the current epoch; False when stopped early by max_steps.

    `undo` holds (RNG, buffers) from before the running step, for the Ctrl-C handler."""
    pos, cfg = run.position, run.cfg
    batches = _batches(len(train_set), cfg.batch_size, cfg.seed, pos.epoch)
    bar = tqdm(
        total=len(batches),
        initial=pos.batch,
        desc=f"epoch {pos.epoch + 1}",
        disable=not (progress and run.ddp.main),
        dynamic_ncols=True,
    )
    started, seen = time.perf_counter(), 0
    for index in range(pos.batch, len(batches)):
        if pos.step >= run.total_steps:
            break
        undo[:] = [(_rng_state(run.device), _buffers(run.task))]
        metrics = _optimizer_step(
            run.task,
            train_set,
            batches[index],
            cfg=cfg,
            ddp=run.ddp,
            micro=run.micro,
            optimizer=run.optimizer,
            step=pos.step,
            total_steps=run.total_steps,
            device=run.device,
            autocast=run.autocast,
        )
        _apply_update(run, metrics, index, undo)
        seen += cfg.batch_size
        metrics["images_per_s"] = seen / (time.perf_counter() - started)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics['images_per_s']:.1f}")
        bar.update(1)
        if pos.step % 10 == 0 or pos.step == 1:
            run.log.write(pos.step, pos.epoch, "train", metrics)
        if checkpoint_steps and pos.step % checkpoint_steps == 0:
            run.save()
    bar.close()
    return pos.batch >= len(batches)


def _end_epoch(run: Run, val_set) -> dict[str, float]:
    """Validate (one line `epoch N validation: ...`, with or without progress bars), then
    write the epoch's files and `latest` saying the epoch is done."""
    epoch = run.position.epoch
    # interrupted during validation, `latest` still says "end of epoch, not validated"
    val_metrics = _validate(run.task, run.ema, val_set, run.cfg, run.device, run.autocast, run.ddp)
    if val_metrics:
        run.log.write(run.position.step, epoch, "val", val_metrics)
        if run.ddp.main:
            tqdm.write(
                f"epoch {epoch + 1} validation: "
                + ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items())
            )
    with _hold_interrupts():  # the epoch's files, then `latest` saying the epoch is done
        run.position.epoch, run.position.batch = epoch + 1, 0
        if val_metrics and val_metrics["loss"] < run.position.best:
            run.position.best = val_metrics["loss"]
            if run.ddp.main:
                run.save_model(f"{run.task.name}-best.safetensors")
        run.save(f"epoch{epoch + 1:03d}" if (epoch + 1) % run.cfg.save_every == 0 else "")
    return val_metrics


def _start(task: TrainTask, train_set, cfg: TrainingConfig, out: Path, device: str | None) -> Run:
    """Devices, process group, checks, optimiser and EMA: a run at step 0 (nothing written)."""
    device = pick_device(device)
    ddp = init_distributed(device)
    if device == "cuda":
        device = f"cuda:{ddp.local_rank}"
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    micro = _micro_batch(cfg, ddp, len(train_set))
    for net in task.nets.values():
        net.to(device).train()
    total_steps = cfg.epochs * (len(train_set) // cfg.batch_size)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    ema = copy.deepcopy(task.model()).eval().requires_grad_(False) if cfg.ema_decay else None
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    )
    return Run(
        task,
        cfg,
        out,
        device,
        ddp,
        micro,
        total_steps,
        build_optimizer(task.nets, cfg),
        ema,
        autocast=autocast,
    )


def fit(
    task: TrainTask,
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset | None,
    cfg: TrainingConfig,
    out: str | Path,
    *,
    preset: Preset | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    on_epoch_end: Any = None,
    checkpoint_steps: int = 0,
    metadata: dict[str, str] | None = None,
    prepare: Any = None,
    init_from: str | Path | None = None,
) -> dict[str, float]:
    """Train `task` on `train_set`; returns the last validation metrics.

    Everything is checked (and `latest` loaded with `resume`) before anything is written.
    `progress` False hides the progress bars only: each epoch's validation line is printed.
    The run folder (`maskgit.run_folder.check_run_folder`): a folder holding a run is refused
    unless `resume` continues it or `overwrite` deletes its files first; another process
    training into it is refused; `resume` refuses a `preset` that changes what the saved run
    means. The folder is locked while the run trains. SIGTERM stops it as Ctrl-C does:
    `latest` is saved, then KeyboardInterrupt propagates.
    `checkpoint_steps` > 0 also saves `latest` every that many optimiser steps;
    `on_epoch_end(task, ema, epoch, out)` runs on rank 0 after each epoch's files;
    `prepare(out)` runs on rank 0 once the checks passed, before the first file is written
    (e.g. to copy the tokenizer in); `metadata` goes into every saved model file.
    `init_from` (a model file of the same config) warm-starts the model's weights (and EMA)
    with a fresh optimiser at step 0; it is ignored when resuming (`latest` has the weights).
    """
    out = Path(out)
    changes = check_run_folder(out, task.name, preset=preset, resume=resume, overwrite=overwrite)
    if init_from is not None and not resume:
        warm_start(task.model(), init_from)
    run = _start(task, train_set, cfg, out, device)
    run.metadata = dict(metadata or {})
    log_rows = _resume(run) if resume else None
    lock = RunLock(out)
    try:
        if run.ddp.main:  # only once the run can start (checks passed, `latest` loaded)
            lock.acquire()
            if overwrite:
                clear_run(out, task.name)
            _prepare_folder(out, preset)
            if prepare is not None:
                prepare(out)
            if changes:
                tqdm.write(
                    f"resuming with {', '.join(changes)} (allowed on --resume); the learning "
                    f"rate's schedule now ends at step {run.total_steps}"
                )
        with _sigterm_as_ctrl_c():
            return _train(
                run, train_set, val_set, progress, on_epoch_end, checkpoint_steps, log_rows
            )
    finally:
        lock.release()


def _train(run: Run, train_set, val_set, progress, on_epoch_end, checkpoint_steps, log_rows):
    """The epochs of a started run; on Ctrl-C (or SIGTERM) save `latest`, say so, re-raise."""
    task, cfg = run.task, run.cfg
    _wrap_nets(task, run.ddp, cfg.compile)
    run.log = CsvLog(run.out, run.ddp.main)
    run.log.keep_first(log_rows)
    val_metrics: dict[str, float] = {}
    undo: list = []  # (RNG, buffers) before the running step, to undo it on Ctrl-C
    try:
        while run.position.epoch < cfg.epochs and run.position.step < run.total_steps:
            if not _run_epoch(run, train_set, progress, checkpoint_steps, undo):
                run.save()  # stopped by max_steps mid-epoch
                break
            val_metrics = _end_epoch(run, val_set)
            if on_epoch_end is not None and run.ddp.main:
                on_epoch_end(task, run.ema, run.position.epoch, run.out)
    except KeyboardInterrupt:
        if undo:  # interrupted mid-step: save the state from before it
            _set_rng_state(undo[0][0])
            _restore_buffers(task, undo[0][1])
        run.save()
        if run.ddp.main:
            tqdm.write(
                f"interrupted: saved {run.state_path} at step {run.position.step}; "
                "continue with --resume"
            )
        raise
    return val_metrics


def _optimizer_step(
    task, train_set, indices, *, cfg, ddp, micro, optimizer, step, total_steps, device, autocast
) -> dict[str, float]:
    """Forward/backward over grad_accum micro-batches of this rank's shard (and clipping);
    the caller then applies the update (`optimizer.step()`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, total_steps, cfg)
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    loss_value = 0.0
    for m in range(cfg.grad_accum):
        # Micro-batch m is the same set of items (and masks) whatever the number of processes:
        # indices[m * micro * world : (m + 1) * micro * world], of which this rank takes its
        # slice, so the loss normalised by the all-reduced count matches one process.
        start = (m * ddp.world + ddp.rank) * micro
        chunk = indices[start : start + micro]
        batch = torch.stack([train_set[int(i)] for i in chunk]).to(device)
        rng = _rng(cfg.seed, step, m)
        with ExitStack() as stack:
            if m < cfg.grad_accum - 1:  # accumulate locally, all-reduce on the last one
                for net in task.nets.values():
                    if isinstance(net, DistributedDataParallel):
                        stack.enter_context(net.no_sync())
            with autocast:
                out = task.step(batch, step, rng, ddp.rank * micro, micro * ddp.world)
            # One all-reduce carries the count and whether any rank's loss is non-finite, so
            # every rank stops together (a lone rank stopping would leave the others waiting).
            local_bad = (~torch.isfinite(out.loss_sum.detach())).to(out.count.dtype)
            reduced = torch.stack([out.count.detach(), local_bad])
            if ddp.world > 1:
                dist.all_reduce(reduced)
            count, ranks_bad = reduced[0], int(reduced[1].item())
            loss = out.loss_sum * ddp.world / count.clamp_min(1) / cfg.grad_accum
            if ranks_bad:
                raise TrainingError(
                    f"non-finite loss on {ranks_bad} of {ddp.world} process(es) at step {step}: "
                    "stopping; the last checkpoint was left intact"
                )
            loss.backward()
        loss_value += loss.item() / ddp.world
        for key, value in out.metrics.items():
            totals[key] = totals.get(key, 0.0) + value / cfg.grad_accum
    if cfg.grad_clip > 0:
        params = [p for net in task.nets.values() for p in net.parameters()]
        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    totals["loss"] = loss_value
    totals["lr"] = optimizer.param_groups[0]["lr"]
    return totals


@torch.no_grad()
def _validate(task, ema, val_set, cfg, device, autocast, ddp) -> dict[str, float]:
    """Validation on rank 0 with the EMA weights when present (fixed masking seed)."""
    if val_set is None or len(val_set) == 0 or not ddp.main:
        return {}
    live = task.model()
    if ema is not None:  # evaluate the weights that will be shipped
        backup = copy.deepcopy(live.state_dict())
        live.load_state_dict(ema.state_dict())
    live.eval()
    sums: dict[str, float] = {}
    rng = _rng(cfg.seed, -1)
    try:
        for start in range(0, len(val_set), cfg.batch_size):
            batch = torch.stack(
                [val_set[i] for i in range(start, min(len(val_set), start + cfg.batch_size))]
            )
            with autocast:
                for key, value in task.evaluate(batch.to(device), rng).items():
                    sums[key] = sums.get(key, 0.0) + value
    finally:  # also on Ctrl-C: the handler must save the live weights, not the EMA ones
        live.train()
        if ema is not None:
            live.load_state_dict(backup)
    count = sums.pop("count")
    return {key: value / count for key, value in sums.items()}


# --------------------------------------------------------------------------- entry points


def recon_grid_hook(images: torch.Tensor, every: int = 1):
    """An on_epoch_end hook that saves originals above reconstructions as a PNG grid."""

    def hook(task, ema, epoch, out) -> None:
        if epoch % every:
            return
        model = ema or task.model()
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            recon, _ = model(images.to(device))
        model.train(was_training)
        originals = [to_pil(x) for x in to_uint8(images)]
        rebuilt = [to_pil(x) for x in to_uint8(recon.cpu())]
        save_grid(
            originals + rebuilt,
            Path(out) / "samples" / f"recon-epoch{epoch:03d}.png",
            columns=len(originals),
        )

    return hook


def train_tokenizer(
    preset: Preset,
    images: torch.Tensor,
    names: list[str],
    out: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    checkpoint_steps: int = 0,
    init_from: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """Train the VQGAN of `preset` on uint8 images (N, 3, H, W); writes to run folder `out`.

    `init_from`: a tokenizer file to warm-start from (see `fit`)."""
    cfg = preset.tokenizer_training
    train_idx, val_idx = split_indices(names, cfg.val_fraction)
    train_set = TensorImages(images[train_idx], hflip=cfg.hflip)
    val_set = TensorImages(images[val_idx]) if val_idx else None
    torch.manual_seed(cfg.seed)  # the config's seed decides the initial weights
    task = TokenizerTask(VQGAN(preset.tokenizer), cfg)
    preview = TensorImages(images[(val_idx or train_idx)[:8]])
    hook = recon_grid_hook(torch.stack([preview[i] for i in range(len(preview))]))
    return fit(
        task,
        train_set,
        val_set,
        cfg,
        out,
        preset=preset,
        resume=resume,
        overwrite=overwrite,
        device=device,
        progress=progress,
        on_epoch_end=hook,
        checkpoint_steps=checkpoint_steps,
        init_from=init_from,
    )


def train_transformer(
    preset: Preset,
    tokens: torch.Tensor,
    names: list[str],
    out: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    checkpoint_steps: int = 0,
    tokenizer: str | Path | None = None,
    init_from: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """Train the transformer of `preset` on token grids (N, h, w); writes to run folder `out`.

    `init_from`: a transformer file to warm-start from (see `fit`).

    `tokenizer` (the .safetensors file that made the tokens), when given, is copied into the
    run folder once every check has passed, and its digest is recorded in the transformer's
    metadata (`MaskGIT.from_pretrained` then refuses a folder whose halves do not match);
    resuming a run whose transformer records another tokenizer is refused.
    """
    cfg = preset.transformer_training
    metadata, prepare = _tokenizer_pairing(tokenizer, Path(out), resume)
    flat = tokens.reshape(len(tokens), -1)
    if flat.shape[1] != preset.transformer.num_tokens:
        raise TrainingError(
            f"tokens have {flat.shape[1]} positions per image, the transformer expects "
            f"{preset.transformer.num_tokens}"
        )
    if int(flat.max()) >= preset.transformer.codebook_size:
        raise TrainingError(
            f"tokens use ids up to {int(flat.max())}, beyond the transformer's codebook of "
            f"{preset.transformer.codebook_size}: they were made by another tokenizer"
        )
    try:  # now, not at the first step (after the run folder is made)
        validate_schedule(cfg.mask_schedule)
    except ValueError as exc:
        raise ConfigError(f"transformer_training.mask_schedule: {exc}") from exc
    train_idx, val_idx = split_indices(names, cfg.val_fraction)
    torch.manual_seed(cfg.seed)  # the config's seed decides the initial weights
    task = TransformerTask(BidirectionalTransformer(preset.transformer), cfg)
    return fit(
        task,
        TokenDataset(flat[train_idx]),
        TokenDataset(flat[val_idx]) if val_idx else None,
        cfg,
        out,
        preset=preset,
        resume=resume,
        overwrite=overwrite,
        device=device,
        progress=progress,
        checkpoint_steps=checkpoint_steps,
        metadata=metadata,
        prepare=prepare,
        init_from=init_from,
    )


def _tokenizer_pairing(tokenizer: str | Path | None, out: Path, resume: bool):
    """(metadata, prepare) for a transformer run trained on tokens of `tokenizer` (nothing is
    written here: `prepare` copies the tokenizer into the run folder after the checks)."""
    if tokenizer is None:
        return {}, None
    source = Path(tokenizer)
    digest = weights_digest(source)
    target = out / "tokenizer.safetensors"
    trained = out / "transformer.safetensors"
    if resume and trained.is_file():
        recorded = read_metadata(trained).get(TOKENIZER_DIGEST_KEY)
        if recorded is not None and recorded != digest:
            raise CheckpointError(
                f"--resume: {trained} was trained on another tokenizer than {source}; "
                "resume with the tokenizer the run started with"
            )

    def prepare(folder: Path) -> None:
        if not target.exists() or source.resolve() != target.resolve():
            atomic_write(target, lambda tmp: tmp.write_bytes(source.read_bytes()))

    return {TOKENIZER_DIGEST_KEY: digest}, prepare
