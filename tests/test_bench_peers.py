"""benchmarks/bench_peers.py: FLOP counting with torch's fused CPU attention, the maskgit
rows, and (with the `peers` extra) each peer built and run once at batch 1."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from extras import require_extra

torch.set_num_threads(1)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_fused_cpu_attention_is_counted_like_the_written_out_one(bench):
    from maskgit.transformer import fused_attention, manual_attention

    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    manual = bench.count_flops(lambda: manual_attention(q, k, v))
    fused = bench.count_flops(lambda: fused_attention(q, k, v))
    assert manual == 2 * (2 * 2 * 3 * 16 * 16 * 8)  # two batched matmuls, 2 FLOPs a MAC
    assert fused == manual


def test_fused_cpu_attention_backward_is_counted(bench):
    from maskgit.transformer import fused_attention

    q, k, v = (torch.randn(2, 3, 16, 8, requires_grad=True) for _ in range(3))
    forward = bench.count_flops(lambda: fused_attention(q, k, v))
    both = bench.count_flops(lambda: fused_attention(q, k, v).sum().backward())
    assert both >= 3 * forward  # the backward is about twice the forward


def test_maskgit_rows_and_json(bench, tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["--rounds", "2", "--threads", "1", "--batch", "1", "--steps", "2"]
    argv += ["--train-batch", "2", "--contenders", "maskgit", "maskgit-int8"]
    argv += ["--peak-size", "64", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "decode: inpaint 1 images 64x64 in 2 steps" in printed
    report = json.loads(out.read_text())
    decode = {row["name"]: row for row in report["tables"]["decode"]["rows"]}
    assert set(decode) == {"maskgit", "maskgit-int8"}
    assert decode["maskgit"]["ratio_median"] == 1.0
    assert len(decode["maskgit-int8"]["times_s"]) == 2
    assert decode["maskgit"]["gflop"] > 0 and decode["maskgit"]["percent_of_peak"] > 0
    assert decode["maskgit-int8"]["gflop"] == decode["maskgit"]["gflop"]  # int8: fp32 count
    assert decode["maskgit"]["transformer_params"] == decode["maskgit-int8"]["transformer_params"]
    train = report["tables"]["train"]["rows"]
    assert [row["name"] for row in train] == ["maskgit"]


@pytest.mark.parametrize(
    ("name", "module"), [("amused", "diffusers"), ("muse", "muse_maskgit_pytorch")]
)
@pytest.mark.parametrize("kind", ["decode", "train"])
def test_a_peer_builds_at_equal_size_and_runs(bench, name, module, kind):
    require_extra("transformers")
    if importlib.util.find_spec(module) is None:  # muse cannot be imported without torchvision
        pytest.skip(f"needs the `peers` extra: pip install -e '.[peers]' (no {module})")
    args = bench.build_parser().parse_args(["--batch", "1", "--steps", "2", "--train-batch", "2"])
    contender = bench.BUILDERS[kind][name](torch.device("cpu"), args)
    contender.run()
    assert contender.flops == 0 and bench.count_flops(contender.run) > 0
    assert 0.5e6 < contender.transformer_params < 10e6
