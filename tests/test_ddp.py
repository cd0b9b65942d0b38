"""torchrun data parallelism: 2 CPU processes (gloo) train the tiny transformer to the same
weights as one process on the same global batch, with and without gradient accumulation.

Each rank takes its slice of every global micro-batch, masks are drawn for the global
micro-batch and then sliced, and the loss is normalised by the all-reduced masked-token count,
so the two runs compute the same gradients up to float rounding.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

torch.set_num_threads(1)

GRAD_ACCUMS = (1, 2)

SCRIPT = textwrap.dedent(
    '''
    """Train the tiny transformer for a few steps; run under torchrun or as one process."""
    import sys

    import torch

    torch.set_num_threads(1)

    from maskgit.config import get_preset
    from maskgit.train import train_transformer

    GRAD_ACCUMS = (1, 2)


    def train_all(root):
        tokens = torch.randint(0, 16, (24, 4, 4), generator=torch.Generator().manual_seed(7))
        names = [f"img{i:02d}.png" for i in range(len(tokens))]
        for grad_accum in GRAD_ACCUMS:
            preset = get_preset("tiny")
            cfg = preset.transformer_training
            cfg.batch_size = 8  # global: 2 ranks x 4, or 2 ranks x 2 x 2 accumulation steps
            cfg.grad_accum = grad_accum
            cfg.epochs = 2
            cfg.max_steps = 4  # 3 batches per epoch: crosses an epoch boundary
            cfg.val_fraction = 0.0
            cfg.region_mask_fraction = 0.5  # region and uniform masks drawn per global batch
            cfg.ema_decay = 0.0  # transformer.safetensors holds the trained weights
            cfg.lr = 3e-3
            out = f"{root}/accum{grad_accum}"
            train_transformer(preset, tokens, names, out, device="cpu", progress=False)


    if __name__ == "__main__":
        train_all(sys.argv[1])
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
    '''
)


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a local rendezvous on a free port
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path / "ddp"),
    ]
    # The timeout only guards against a hang (e.g. a rank waiting on a collective forever).
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    runpy.run_path(str(script))["train_all"](str(tmp_path / "single"))  # one process, here

    initial = None
    for grad_accum in GRAD_ACCUMS:
        ddp = load_file(str(tmp_path / "ddp" / f"accum{grad_accum}" / "transformer.safetensors"))
        one = load_file(str(tmp_path / "single" / f"accum{grad_accum}" / "transformer.safetensors"))
        assert ddp.keys() == one.keys()
        diff = max(float((ddp[k] - one[k]).abs().max()) for k in ddp)
        assert diff <= 1e-5, f"grad_accum={grad_accum}: max abs diff {diff}"
        # ...and training did move the weights (the comparison is not between two inits).
        if initial is None:
            from maskgit.config import get_preset
            from maskgit.transformer import BidirectionalTransformer

            torch.manual_seed(0)
            initial = BidirectionalTransformer(get_preset("tiny").transformer).state_dict()
        moved = max(float((ddp[k] - initial[k]).abs().max()) for k in ddp)
        assert moved > 1e-3
        state = torch.load(
            tmp_path / "ddp" / f"accum{grad_accum}" / "latest.state.pt", weights_only=True
        )
        assert state["position"]["step"] == 4


FAULT_SCRIPT = textwrap.dedent(
    '''
    """Two torchrun cases beyond the transformer's own: the tokenizer (GAN + dead-code
    re-seeding) and a non-finite loss on one rank only."""
    import os
    import sys

    import torch

    torch.set_num_threads(1)

    from safetensors.torch import save_file

    from maskgit import train
    from maskgit.config import get_preset
    from maskgit.tokenizer.model import VQGAN

    RANK = int(os.environ["RANK"])


    def tokenizer_run(root):
        """Train; each rank saves the tokenizer it ends with (they must be equal)."""
        tasks, reseeded = [], []
        init, hook = train.TokenizerTask.__init__, VQGAN.after_optimizer_step

        def remember(self, *args):
            tasks.append(self)
            init(self, *args)

        def count_reseeds(self):
            metrics = hook(self)
            reseeded.append(metrics["reseeded"])
            return metrics

        train.TokenizerTask.__init__, VQGAN.after_optimizer_step = remember, count_reseeds
        images = torch.randint(
            0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
        )
        names = [f"img{i:02d}.png" for i in range(len(images))]
        preset = get_preset("tiny")
        preset.tokenizer.dead_code_steps = 2  # codes re-seeded from each rank's own batch
        cfg = preset.tokenizer_training
        cfg.batch_size, cfg.max_steps, cfg.val_fraction, cfg.disc_start = 8, 6, 0.0, 0
        train.train_tokenizer(preset, images, names, f"{root}/tok", device="cpu", progress=False)
        weights = {k: v.contiguous() for k, v in tasks[0].model().state_dict().items()}
        save_file(weights, f"{root}/tokenizer-rank{RANK}.safetensors")
        with open(f"{root}/reseeded-rank{RANK}.txt", "w") as f:
            f.write(str(sum(reseeded)))


    def nan_on_rank_one(root):
        """Rank 1's loss turns NaN at step 2; both ranks must stop with the same error."""
        step_fn = train.TransformerTask.step

        def step(self, batch, step, rng, offset, global_batch):
            out = step_fn(self, batch, step, rng, offset, global_batch)
            if RANK == 1 and step == 2:
                return train.StepOutput(out.loss_sum * float("nan"), out.count, out.metrics)
            return out

        train.TransformerTask.step = step
        tokens = torch.randint(0, 16, (24, 4, 4), generator=torch.Generator().manual_seed(7))
        names = [f"img{i:02d}.png" for i in range(len(tokens))]
        preset = get_preset("tiny")
        preset.transformer_training.batch_size = 8
        preset.transformer_training.val_fraction = 0.0
        try:
            train.train_transformer(preset, tokens, names, f"{root}/nan", device="cpu",
                                    progress=False)
        except train.TrainingError as exc:
            with open(f"{root}/rank{RANK}.error", "w") as f:
                f.write(str(exc))


    if __name__ == "__main__":
        tokenizer_run(sys.argv[1])
        nan_on_rank_one(sys.argv[1])
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    '''
)


def _torchrun(script, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), *map(str, args)]
    # The timeout only guards against a hang (e.g. a rank waiting on a collective forever).
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_tokenizer_ranks_agree_and_a_lone_nan_stops_every_rank(tmp_path):
    script = tmp_path / "faults.py"
    script.write_text(FAULT_SCRIPT)
    result = _torchrun(script, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # Tokenizer: GAN and dead-code re-seeding on, yet both ranks end with the same weights
    # (re-seeding draws from each rank's batch, so rank 0's result is copied to all).
    rank0 = load_file(str(tmp_path / "tokenizer-rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "tokenizer-rank1.safetensors"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks drifted apart"
    assert float((tmp_path / "reseeded-rank0.txt").read_text()) > 0  # re-seeding did run
    assert ",g_loss," in (tmp_path / "tok" / "metrics.csv").read_text()  # and the GAN
    assert (tmp_path / "tok" / "tokenizer.safetensors").is_file()

    # NaN on rank 1 only: both ranks raise the same error instead of one waiting forever.
    errors = [(tmp_path / f"rank{r}.error").read_text() for r in (0, 1)]
    assert errors[0] == errors[1]
    assert "non-finite loss on 1 of 2 process(es) at step 2" in errors[0]
