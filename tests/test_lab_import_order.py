"""The row order of a fused qkv projection: stated (--qkv-order) or decided by evidence, never
guessed.

The lab report's MultiHeadAttention (tests/lab_layout.py `ReportAttention`, written from its
lines) does

    qkv = self.qkv_proj(x).view(B, N, heads, 3 * d_k).transpose(1, 2)
    q, k, v = qkv.chunk(3, dim=-1)

so the rows of `qkv_proj.weight` are grouped per head ("per-head"); a projection chunked
before the head split, `q, k, v = self.qkv(x).chunk(3, dim=-1)` (`FusedAttention`, layout
"fused-qkv"), has [all q | all k | all v] rows ("qkv"). Same names, same shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import lab_layout as lab
from maskgit.cli import main
from maskgit.data import save_tokens
from maskgit.lab_import import LabImportError
from maskgit.pipeline import MaskGIT
from test_lab_import import _assert_same_model, _import

REPORT_LINE = "qkv = self.qkv_proj(x).view(B, N, heads, 3 * d_k).transpose(1, 2)"


def _uint8_images(n: int, seed: int) -> torch.Tensor:
    """(n, 3, 16, 16) uint8: what the lab's images are once read from PNG."""
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))


def _lab_tokens(vqgan, images_uint8: torch.Tensor) -> torch.Tensor:
    """The lab VQGAN's tokens (n, 16) of uint8 images."""
    with torch.no_grad():
        _, idx, _ = vqgan.encode(lab.normalise(images_uint8.float() / 127.5 - 1))
    return idx.reshape(len(images_uint8), -1)


def _train(transformer, tokens: torch.Tensor, steps: int = 300) -> None:
    """Masked-token training of the lab stand-in on `tokens` (n, 16) until it knows them."""
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(transformer.parameters(), lr=3e-3)
    transformer.train()
    for _ in range(steps):
        masked = torch.rand(tokens.shape, generator=gen) < 0.5
        logits = transformer(torch.where(masked, 32, tokens))  # (n, 16, 33)
        loss = torch.nn.functional.cross_entropy(logits[masked], tokens[masked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    transformer.eval()


def _trained_lab(folder, attention: str):
    """Lab files whose transformer was trained on 8 images, and those images (PNG) in
    folder/evidence: the right order predicts their masked tokens, the wrong one cannot."""
    vqgan, transformer = lab.write_lab_files(folder, attention=attention)
    images = _uint8_images(8, seed=5)
    tokens = _lab_tokens(vqgan, images)
    _train(transformer, tokens)
    torch.save(transformer.state_dict(), folder / "transformer.pt")
    (folder / "evidence").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8)).save(
            folder / "evidence" / f"{i}.png"
        )
    return vqgan, transformer, tokens


@pytest.fixture(scope="module")
def trained_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    return folder, *_trained_lab(folder, "report")


@pytest.mark.parametrize("heads", [16, 4])
def test_the_reports_attention_imports_exactly_with_per_head_order(tmp_path, heads):
    vqgan, transformer = lab.write_lab_files(tmp_path / "lab", attention="report", heads=heads)
    report = _import(tmp_path / "lab", tmp_path / "out", heads=heads, qkv_order="per-head")
    assert report.qkv.order == "per-head" and report.qkv.decided_by == "--qkv-order"
    assert report.attention_layouts == {"fused qkv, per-head order": 2}
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer)


def test_the_wrong_order_gives_other_logits(tmp_path):
    """Why the order may not be guessed: the report's weights read in qkv order import
    without a complaint and give other logits (today's importer did exactly this)."""
    vqgan, transformer = lab.write_lab_files(tmp_path / "lab", attention="report")
    _import(tmp_path / "lab", tmp_path / "out", qkv_order="qkv")
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        _assert_same_model(
            MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer
        )


def test_the_chunk_first_layout_imports_exactly_with_qkv_order(tmp_path):
    vqgan, transformer = lab.write_lab_files(tmp_path / "lab", attention="fused-qkv")
    report = _import(tmp_path / "lab", tmp_path / "out", qkv_order="qkv")
    assert report.attention_layouts == {"fused qkv, qkv order": 2}
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer)


@pytest.mark.parametrize("attention", ["report", "fused-qkv"])
def test_a_fused_qkv_is_never_guessed(tmp_path, attention):
    lab.write_lab_files(tmp_path / "lab", attention=attention)
    with pytest.raises(LabImportError) as info:
        _import(tmp_path / "lab", tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "transformer.pt" in message
    module = "qkv_proj" if attention == "report" else "qkv"
    assert f"blocks.0.Attention.{module}.weight" in message
    assert REPORT_LINE.replace("qkv_proj", module) in message  # the report's line
    assert "q, k, v = qkv.chunk(3, dim=-1)" in message
    assert f"q, k, v = self.{module}(x).chunk(3, dim=-1)" in message  # the chunk-first line
    for option in ("--qkv-order per-head", "--qkv-order qkv", "--qkv-evidence"):
        assert option in message
    assert not (tmp_path / "out").exists()


def test_evidence_images_decide_the_reports_order(trained_report, tmp_path):
    folder, vqgan, transformer, _ = trained_report
    report = _import(folder, tmp_path / "out", qkv_evidence=folder / "evidence")
    assert report.qkv.order == "per-head"
    assert report.qkv.decided_by == f"evidence {folder / 'evidence'}"
    assert report.qkv.losses["per-head"] < 0.5 * report.qkv.losses["qkv"]
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer)


def test_evidence_token_grids_decide_the_chunk_first_order(tmp_path):
    folder = tmp_path / "lab"
    vqgan, transformer, tokens = _trained_lab(folder, "fused-qkv")
    grids = tmp_path / "grids"  # what `maskgit tokenize` writes
    save_tokens(grids, tokens.reshape(-1, 4, 4), [f"{i}.png" for i in range(8)], {
        "codebook_size": 32
    })  # fmt: skip
    report = _import(folder, tmp_path / "out", qkv_evidence=grids)
    assert report.qkv.order == "qkv"
    assert report.qkv.losses["qkv"] < 0.5 * report.qkv.losses["per-head"]
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer)


def test_evidence_that_cannot_tell_the_orders_apart_is_refused(tmp_path):
    """A zero qkv projection gives the same model in both orders: equal losses, refused."""
    folder = tmp_path / "lab"
    _, transformer = lab.write_lab_files(folder, attention="report")
    with torch.no_grad():
        for block in transformer.blocks:
            block.Attention.qkv_proj.weight.zero_()
            block.Attention.qkv_proj.bias.zero_()
    torch.save(transformer.state_dict(), folder / "transformer.pt")
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    for i, image in enumerate(_uint8_images(3, seed=1)):
        Image.fromarray(image.permute(1, 2, 0).numpy().astype(np.uint8)).save(evidence / f"{i}.png")
    with pytest.raises(LabImportError) as info:
        _import(folder, tmp_path / "out", qkv_evidence=evidence)
    message = str(info.value)
    assert "\n" not in message and str(evidence) in message
    assert "not clearly apart" in message and "--qkv-order" in message
    assert message.count("per-head") >= 1 and "qkv" in message
    assert not (tmp_path / "out").exists()


def test_a_stated_order_the_evidence_contradicts_is_refused(trained_report, tmp_path):
    folder = trained_report[0]
    with pytest.raises(LabImportError) as info:
        _import(folder, tmp_path / "out", qkv_order="qkv", qkv_evidence=folder / "evidence")
    message = str(info.value)
    assert "--qkv-order qkv" in message and "per-head" in message and "loss" in message
    assert not (tmp_path / "out").exists()


def test_a_stated_order_the_evidence_confirms_reports_both_losses(trained_report, tmp_path):
    folder = trained_report[0]
    report = _import(
        folder, tmp_path / "out", qkv_order="per-head", qkv_evidence=folder / "evidence"
    )
    assert report.qkv.order == "per-head" and report.qkv.decided_by == "--qkv-order"
    assert report.qkv.losses["per-head"] < report.qkv.losses["qkv"]


def test_nn_multihead_attention_has_one_order(tmp_path):
    """in_proj_weight is [q | k | v] by torch's definition: no option needed, per-head refused."""
    vqgan, transformer = lab.write_lab_files(tmp_path / "lab", attention="torch", heads=4)
    with pytest.raises(LabImportError, match="in_proj_weight.*per-head"):
        _import(tmp_path / "lab", tmp_path / "refused", heads=4, qkv_order="per-head")
    report = _import(tmp_path / "lab", tmp_path / "out", heads=4)
    assert report.qkv.order == "" and report.attention_layouts == {"nn.MultiheadAttention": 2}
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer)


def test_evidence_that_is_not_there_or_does_not_fit_is_refused(tmp_path):
    lab.write_lab_files(tmp_path / "lab", attention="report")
    missing = tmp_path / "no-such-folder"
    with pytest.raises(LabImportError, match=f"--qkv-evidence {missing}: folder does not exist"):
        _import(tmp_path / "lab", tmp_path / "out", qkv_evidence=missing)
    grids = tmp_path / "grids"
    save_tokens(grids, torch.full((2, 4, 4), 40), ["a", "b"], {"codebook_size": 64})
    with pytest.raises(LabImportError, match=r"token ids 40\.\.40, the VQGAN's codes are 0\.\.31"):
        _import(tmp_path / "lab", tmp_path / "out", qkv_evidence=grids)
    save_tokens(grids, torch.zeros(2, 8, 8), ["a", "b"], {"codebook_size": 32})
    with pytest.raises(LabImportError, match="2 token grids of 64 tokens, expected 4x4"):
        _import(tmp_path / "lab", tmp_path / "out", qkv_evidence=grids)
    assert not (tmp_path / "out").exists()


def test_an_unknown_order_is_refused(tmp_path):
    lab.write_lab_files(tmp_path / "lab", attention="report")
    with pytest.raises(LabImportError, match="qkv_order='kqv'.*per-head, qkv"):
        _import(tmp_path / "lab", tmp_path / "out", qkv_order="kqv")


def test_cli_qkv_order_and_evidence(trained_report, tmp_path, capsys):
    folder, vqgan, transformer, _ = trained_report
    argv = [
        "import-lab",
        "--vqgan-config", str(folder / "VQGAN.yml"), "--vqgan", str(folder / "VQGAN.pt"),
        "--transformer-config", str(folder / "MaskGit.yml"),
        "--transformer", str(folder / "transformer.pt"),
    ]  # fmt: skip
    assert main(argv + ["--out", str(tmp_path / "a"), "--qkv-order", "per-head"]) == 0
    assert "qkv row order: per-head (stated with --qkv-order)" in capsys.readouterr().out
    evidence = ["--qkv-evidence", str(folder / "evidence")]
    assert main(argv + ["--out", str(tmp_path / "b"), *evidence]) == 0
    printed = capsys.readouterr().out
    assert "qkv row order: per-head (decided by evidence" in printed
    assert "masked-token loss per-head" in printed and "qkv " in printed
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "b", device="cpu"), vqgan, transformer)
    assert main(argv + ["--out", str(tmp_path / "c")]) == 2  # neither: refused, one line
    err = capsys.readouterr().err
    assert err.startswith("maskgit: error: ") and err.count("\n") == 1 and REPORT_LINE in err
