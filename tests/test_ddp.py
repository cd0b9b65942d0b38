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
