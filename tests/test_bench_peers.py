"""benchmarks/bench_peers.py: FLOP counting with torch's fused CPU attention, the maskgit
rows (blend none, the seamless blend in its own row), the matmul peak and load beside the
tables, and (with the `peers` extra) each peer built at maskgit's parameter count (or FLOPs
per forward with --match flops) with the attention a CPU user picks, and run once."""

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
    argv += ["--train-batch", "2", "--contenders", "maskgit", "seamless-blend", "maskgit-int8"]
    argv += ["--peak-size", "64", "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "decode: inpaint 1 images 64x64 in 2 steps" in printed
    assert "fp32 matmul peak" in printed and "(64x64, 1 thread(s)" in printed
    assert "load average (1/5/15 min)" in printed
    report = json.loads(out.read_text())
    decode_table = report["tables"]["decode"]
    assert decode_table["matmul_peak_gflops"] > 0
    assert (decode_table["peak_size"], decode_table["threads"]) == (64, 1)
    assert len(decode_table["load_average_start"]) == 3
    decode = {row["name"]: row for row in decode_table["rows"]}
    assert set(decode) == {"maskgit", "seamless-blend", "maskgit-int8"}
    assert decode["maskgit"]["ratio_median"] == 1.0
    assert len(decode["maskgit-int8"]["times_s"]) == 2
    assert decode["maskgit"]["gflop"] > 0 and decode["maskgit"]["percent_of_peak"] > 0
    assert decode["maskgit-int8"]["gflop"] == decode["maskgit"]["gflop"]  # int8: fp32 count
    assert decode["maskgit"]["transformer_params"] == decode["maskgit-int8"]["transformer_params"]
    int8 = decode["maskgit-int8"]
    assert int8["time_per_flop_ratio_min"] <= int8["time_per_flop_ratio"]
    assert int8["time_per_flop_ratio"] <= int8["time_per_flop_ratio_max"]
    share = decode["seamless-blend"]["share_of_default_call"]
    assert 0 < share["min"] <= share["median"] <= share["max"] < 1
    assert "% of a default maskgit call" in printed
    train = report["tables"]["train"]["rows"]
    assert [row["name"] for row in train] == ["maskgit"]


def test_maskgit_row_leaves_the_blend_to_its_own_row(bench):
    """maskgit's row pastes plainly (the peers paste nothing); the seamless-blend row is the
    rest of a default call: their FLOPs add up to the default call's."""
    args = bench.build_parser().parse_args(["--batch", "1", "--steps", "2"])
    cpu = torch.device("cpu")
    plain = bench.BUILDERS["decode"]["maskgit"](cpu, args)
    blend = bench.BUILDERS["decode"]["seamless-blend"](cpu, args)
    model = bench.maskgit_model(cpu)
    images, masks = bench.inputs(1)
    default = bench.count_flops(lambda: model.inpaint(images, masks, steps=2, batch_size=1))
    blend_flops = bench.count_flops(blend.run)  # 0: a scipy sparse solve, torch counts none
    assert bench.count_flops(plain.run) + blend_flops == default


PEERS = [("amused", "diffusers"), ("muse", "muse_maskgit_pytorch")]


def require_peer(module: str) -> None:
    require_extra("transformers")
    if importlib.util.find_spec(module) is None:  # muse cannot be imported without torchvision
        pytest.skip(f"needs the `peers` extra: pip install -e '.[peers]' (no {module})")


def peer_args(bench, *extra: str):
    return bench.build_parser().parse_args(
        ["--batch", "1", "--steps", "2", "--train-batch", "2", *extra]
    )


@pytest.mark.parametrize(("name", "module"), PEERS)
@pytest.mark.parametrize("kind", ["decode", "train"])
def test_a_peer_builds_and_runs(bench, name, module, kind):
    require_peer(module)
    contender = bench.BUILDERS[kind][name](torch.device("cpu"), peer_args(bench))
    contender.run()
    assert contender.flops == 0 and bench.count_flops(contender.run) > 0


@pytest.mark.parametrize(("name", "module"), PEERS)
def test_a_peer_is_built_at_maskgits_parameter_count(bench, name, module):
    require_peer(module)
    cpu, args = torch.device("cpu"), peer_args(bench)  # --match params, the default
    maskgit = bench.BUILDERS["decode"]["maskgit"](cpu, args)
    for kind in ("decode", "train"):
        peer = bench.BUILDERS[kind][name](cpu, args)
        assert peer.transformer_params == bench.count(peer.transformer)
        assert abs(peer.transformer_params / maskgit.transformer_params - 1) < 0.10
        assert "(params matched)" in peer.size


@pytest.mark.parametrize(("name", "module"), PEERS)
def test_with_match_flops_a_peer_does_maskgits_flops_per_forward(bench, name, module):
    require_peer(module)
    cpu, args = torch.device("cpu"), peer_args(bench, "--match", "flops")
    maskgit = bench.BUILDERS["decode"]["maskgit"](cpu, args)
    peer = bench.BUILDERS["decode"][name](cpu, args)
    assert maskgit.forward_flops > 0
    assert abs(peer.forward_flops / maskgit.forward_flops - 1) < 0.10
    assert "(flops matched)" in peer.size


def test_each_peer_runs_the_attention_a_cpu_user_picks(bench):
    """muse without its flash=True path (a tiled attention in Python on CPUs), aMUSEd with
    diffusers' torch-SDPA processor; the table says which."""
    cpu, args = torch.device("cpu"), peer_args(bench)
    require_peer("muse_maskgit_pytorch")
    require_peer("diffusers")
    for kind in ("decode", "train"):
        muse = bench.BUILDERS[kind]["muse"](cpu, args)
        attends = [m for m in muse.transformer.modules() if type(m).__name__ == "Attend"]
        assert attends and not any(m.flash for m in attends)
        assert "flash=False" in muse.attention
        amused = bench.BUILDERS[kind]["amused"](cpu, args)
        processors = {type(p).__name__ for p in amused.transformer.attn_processors.values()}
        assert processors == {"AttnProcessor2_0"} and "torch SDPA" in amused.attention
