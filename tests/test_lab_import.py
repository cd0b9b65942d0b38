"""`maskgit import-lab`: the course lab's checkpoints become a maskgit model folder.

The lab's files are made by tests/lab_layout.py, a tiny stand-in that follows the skeleton's
layout; the imported model must give the lab model's tokens and logits, and every broken or
mismatched file must be refused with one line naming the key and the file, writing nothing.
Every test names the attention layout it writes: "report" is the lab report's own
MultiHeadAttention (fused qkv_proj, per-head row order, imported with qkv_order="per-head");
tests about other things use "separate" q/k/v, which has no row order to state.
(tests/test_lab_import_order.py covers the fused-qkv row orders.)
"""

from __future__ import annotations

import collections
import json
import re

import pytest
import torch
import yaml

import lab_layout as lab
from maskgit.cli import main
from maskgit.config import TokenizerConfig, TransformerConfig
from maskgit.lab_import import LabImportError, import_lab
from maskgit.pipeline import MaskGIT
from maskgit.tokenizer.model import VQGAN
from maskgit.transformer import BidirectionalTransformer


def _import(folder, out, **kwargs):
    vqgan = kwargs.pop("vqgan", folder / "VQGAN.pt")
    return import_lab(
        folder / "VQGAN.yml",
        vqgan,
        folder / "MaskGit.yml",
        folder / "transformer.pt",
        out,
        **kwargs,
    )


@pytest.fixture(scope="module")
def lab_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lab")
    vqgan, transformer = lab.write_lab_files(folder, attention="report")
    return folder, vqgan, transformer


@pytest.fixture(scope="module")
def imported(lab_files, tmp_path_factory):
    folder, vqgan, transformer = lab_files
    out = tmp_path_factory.mktemp("imported") / "lab-model"
    _import(folder, out, qkv_order="per-head")
    return MaskGIT.from_pretrained(out, device="cpu"), vqgan, transformer, out


def _images(n=6, seed=1):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _assert_same_model(model: MaskGIT, vqgan, transformer):
    images = _images()
    with torch.no_grad():
        _, lab_tokens, _ = vqgan.encode(lab.normalise(images))
        tokens = model.tokenizer.encode(images)
        assert torch.equal(tokens.flatten(), lab_tokens)
        assert lab_tokens.unique().numel() > 4  # not a degenerate one-code model
        ids = torch.randint(0, 33, (4, 16), generator=torch.Generator().manual_seed(2))
        ids[:, ::3] = 32  # [MASK] = num_codebook_vectors
        expected = transformer(ids)[..., :32]  # the lab's logits over real codes
        torch.testing.assert_close(model.transformer(ids), expected, atol=1e-5, rtol=0)


def test_imported_model_gives_the_lab_models_tokens_logits_and_images(imported):
    model, vqgan, transformer, _ = imported
    _assert_same_model(model, vqgan, transformer)
    tokens = model.tokenizer.encode(_images()).flatten(1)
    with torch.no_grad():
        grid = tokens.reshape(-1, 4, 4)
        zq = vqgan.codebook.embedding(grid).permute(0, 3, 1, 2)
        mean = torch.tensor(lab.LAB_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(lab.LAB_STD).view(1, 3, 1, 1)
        lab_images = vqgan.decode(zq) * std + mean  # the lab's de-normalisation, [0, 1]
        ours = (model.tokenizer.decode_tokens(grid) + 1) / 2
    torch.testing.assert_close(ours, lab_images, atol=1e-5, rtol=0)


def test_the_folder_is_a_normal_model_folder(imported, tmp_path):
    model, _, _, out = imported
    assert {p.name for p in out.iterdir()} == {
        "tokenizer.safetensors",
        "transformer.safetensors",
        "config.yaml",
        "import.json",
    }
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["transformer"]["logit_bias"] == "per-position"
    assert config["transformer"]["layer_norm_eps"] == 1e-12
    assert config["tokenizer"]["downsample_conv"] == "pad-k3"
    record = json.loads((out / "import.json").read_text())
    assert record["attention_layouts"] == {"fused qkv, per-head order": 2}
    assert record["qkv_order"] == {"order": "per-head", "decided_by": "--qkv-order"}
    assert len(record["files"]["vqgan"]["sha256"]) == 64
    result = model.inpaint(
        [torch.zeros(3, 16, 16, dtype=torch.uint8)], [torch.ones(16, 16, dtype=torch.bool)]
    )
    assert result.images[0].size == (16, 16)


@pytest.mark.parametrize(
    "attention, heads",
    [
        ("separate", 16),
        ("separate-nobias", 4),
        ("fused-qkv-nobias", 8),
        ("torch", 4),
    ],
)
def test_student_attention_layouts_are_recognised(tmp_path, attention, heads):
    vqgan, transformer = lab.write_lab_files(tmp_path / "lab", attention=attention, heads=heads)
    report = _import(tmp_path / "lab", tmp_path / "out", heads=heads, qkv_order="qkv")
    assert sum(report.attention_layouts.values()) == 2
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer)


def test_heads_come_from_the_yml_when_it_names_them(tmp_path):
    folder = tmp_path / "lab"
    vqgan, transformer = lab.write_lab_files(folder, attention="report", heads=4)
    config = yaml.safe_load((folder / "MaskGit.yml").read_text())
    config["model_param"]["Transformer_param"]["num_heads"] = 4
    (folder / "MaskGit.yml").write_text(yaml.safe_dump(config))
    assert _import(folder, tmp_path / "out", qkv_order="per-head").transformer.heads == 4
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer)


@pytest.mark.parametrize("save_as", ["training", "whole"])
def test_every_way_the_lab_saves_a_transformer(tmp_path, save_as):
    vqgan, transformer = lab.write_lab_files(tmp_path / "lab", attention="report", save_as=save_as)
    kwargs = {"vqgan": None} if save_as == "whole" else {}  # the VQGAN keys are inside
    _import(tmp_path / "lab", tmp_path / "out", qkv_order="per-head", **kwargs)
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer)


def test_a_decoder_with_swish_before_its_last_conv(tmp_path):
    vqgan, transformer = lab.write_lab_files(tmp_path / "lab", attention="separate", out_swish=True)
    report = _import(tmp_path / "lab", tmp_path / "out")
    assert report.tokenizer.decoder_out_act
    model = MaskGIT.from_pretrained(tmp_path / "out", device="cpu")
    grid = torch.arange(16).reshape(1, 4, 4)
    with torch.no_grad():
        expected = vqgan.decode(vqgan.codebook.embedding(grid).permute(0, 3, 1, 2))
        expected = expected * torch.tensor(lab.LAB_STD).view(1, 3, 1, 1)
        expected = expected + torch.tensor(lab.LAB_MEAN).view(1, 3, 1, 1)
        ours = (model.tokenizer.decode_tokens(grid) + 1) / 2
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_unrecognised_attention_keys_are_listed_then_mapped(tmp_path):
    vqgan, transformer = lab.write_lab_files(tmp_path / "lab", attention="odd")
    with pytest.raises(LabImportError) as info:
        _import(tmp_path / "lab", tmp_path / "out")
    message = str(info.value)
    assert "transformer.pt" in message and "blocks.0.Attention.alpha.weight" in message
    assert "--map" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    mapping = tmp_path / "keys.yaml"
    mapping.write_text("alpha: q\nbeta: k\ngamma: v\ndelta: out\n")
    _import(tmp_path / "lab", tmp_path / "out", key_map=mapping)
    _assert_same_model(MaskGIT.from_pretrained(tmp_path / "out", device="cpu"), vqgan, transformer)


def _refused(tmp_path, folder, *needles, **kwargs):
    out = tmp_path / "refused"
    with pytest.raises(LabImportError) as info:
        _import(folder, out, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]
    return message


def _edit_state(path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def test_mismatched_and_corrupt_files_are_refused(tmp_path):
    folder = tmp_path / "lab"
    lab.write_lab_files(folder, attention="separate")
    good = {p.name: p.read_bytes() for p in folder.iterdir()}

    def restore():
        for name, data in good.items():
            (folder / name).write_bytes(data)

    # a missing key
    _edit_state(folder / "transformer.pt", lambda s: s.pop("blocks.1.LayerNorm2.bias"))
    _refused(tmp_path, folder, "transformer.pt", "missing key blocks.1.LayerNorm2.bias")
    restore()
    # an unexpected key
    _edit_state(folder / "VQGAN.pt", lambda s: s.update({"discriminator.w": torch.ones(1)}))
    _refused(tmp_path, folder, "VQGAN.pt", "unexpected key discriminator.w")
    restore()
    # a shape that does not fit the config
    _edit_state(folder / "transformer.pt", lambda s: s.update({"pos_emb": torch.zeros(9, 32)}))
    _refused(tmp_path, folder, "transformer.pt", "pos_emb", "(9, 32)", "(16, 32)")
    restore()
    # a codebook that does not match the transformer's mask id
    cfg = yaml.safe_load((folder / "VQGAN.yml").read_text())
    cfg["model_param"]["num_codebook_vectors"] = 24
    (folder / "VQGAN.yml").write_text(yaml.safe_dump(cfg))
    _edit_state(
        folder / "VQGAN.pt",
        lambda s: s.update({"codebook.embedding.weight": s["codebook.embedding.weight"][:24]}),
    )
    _refused(tmp_path, folder, "VQGAN.pt", "codebook.embedding.weight", "mask id", "32")
    restore()
    # the transformer's embedding has no room for the [MASK] id
    _edit_state(
        folder / "transformer.pt",
        lambda s: s.update({"tok_emb.weight": s["tok_emb.weight"][:32]}),
    )
    _refused(tmp_path, folder, "transformer.pt", "tok_emb.weight", "mask id", "33 rows")
    restore()
    # fewer layers than the yml says
    cfg = yaml.safe_load((folder / "MaskGit.yml").read_text())
    cfg["model_param"]["Transformer_param"]["n_layers"] = 3
    (folder / "MaskGit.yml").write_text(yaml.safe_dump(cfg))
    _refused(tmp_path, folder, "transformer.pt", "n_layers=3", "MaskGit.yml")
    restore()
    # a yml without a key the import needs
    cfg = yaml.safe_load((folder / "VQGAN.yml").read_text())
    del cfg["model_param"]["latent_dim"]
    (folder / "VQGAN.yml").write_text(yaml.safe_dump(cfg))
    _refused(tmp_path, folder, "VQGAN.yml", "latent_dim")
    restore()
    # NaN weights
    _edit_state(folder / "transformer.pt", lambda s: s["bias"].__setitem__((0, 0), float("nan")))
    _refused(tmp_path, folder, "transformer.pt", "bias", "NaN")
    restore()
    # an empty file
    (folder / "transformer.pt").write_bytes(b"")
    _refused(tmp_path, folder, "transformer.pt", "empty")
    restore()
    # the output folder is not empty
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(LabImportError, match="not empty"):
        _import(folder, tmp_path / "full")


@pytest.mark.parametrize(
    "name, keep", [("VQGAN.pt", 0.5), ("transformer.pt", 0.5), ("VQGAN.pt", 0)]
)
def test_a_truncated_file_is_named_in_one_complete_sentence(tmp_path, name, keep):
    folder = tmp_path / "lab"
    lab.write_lab_files(folder, attention="separate")
    data = (folder / name).read_bytes()
    cut = data[: int(len(data) * keep)] if keep else b"not a checkpoint at all, " * 40
    (folder / name).write_bytes(cut)
    message = _refused(tmp_path, folder, name, "truncated or corrupt")
    assert message.startswith(str(folder / name) + ": ") and message.endswith(".")
    assert message.count("(") == message.count(")")
    assert "your checkpoint file is" not in message  # torch's sentence, cut mid-way
    assert re.search(r"\(torch\.load: \w+: [^()]+\); save or copy it again\.$", message)
    if name == "VQGAN.pt" and keep:
        assert "failed finding central directory" in message  # torch's reason, whole


def test_a_vqgan_layer_missing_a_key_names_the_key(tmp_path):
    folder = tmp_path / "lab"
    lab.write_lab_files(folder, attention="separate")
    good = (folder / "VQGAN.pt").read_bytes()
    state = torch.load(folder / "VQGAN.pt", weights_only=True)
    for suffix in (".proj_out.weight", ".block.2.bias", ".conv.weight"):
        key = next(k for k in state if k.startswith("encoder.model.") and k.endswith(suffix))
        _edit_state(folder / "VQGAN.pt", lambda s, key=key: s.pop(key))
        message = _refused(tmp_path, folder, "VQGAN.pt", f"missing key {key}")
        assert "keys gn" not in message  # not a list of the keys that are there
        (folder / "VQGAN.pt").write_bytes(good)


def test_unknown_attention_names_are_listed_when_others_are_known(tmp_path):
    """`out` is a known name, alpha/beta/gamma are not: the list, not 'no q projection'."""
    lab.write_lab_files(tmp_path / "lab", attention="odd-but-out")
    message = _refused(
        tmp_path, tmp_path / "lab", "transformer.pt", "blocks.0.Attention.alpha.weight", "--map"
    )
    assert "blocks.0.Attention.gamma.weight" in message or "more" in message
    assert "no q projection" not in message


def test_no_mask_left_is_explained_in_decode_and_the_lab_recipe():
    """decode() leaves no [MASK] because the logits cover the real codes only; the lab's
    argmax over K + 1 logits could pick [MASK] itself (the docs say maskgit never does)."""
    from pathlib import Path

    from maskgit.decoding import decode

    assert "never predicts [MASK]" in decode.__doc__ and "K + 1" in decode.__doc__
    recipe = (Path(__file__).parent.parent / "docs" / "lab-recipe.md").read_text()
    assert "never predicts `[MASK]`" in recipe and "departure from the report" in recipe
    tokens, unknown = torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool)

    def with_mask_column(ids):  # (1, 4) -> (1, 4, 3): [MASK] = id 2 scores highest
        return torch.tensor([0.0, 1.0, 5.0]).expand(*ids.shape, 3)

    out, _ = decode(tokens, unknown, with_mask_column, 2, steps=2, temperature=0.0)
    assert (out == 2).all()  # the condition the docstring states is real
    out, _ = decode(tokens, unknown, lambda ids: with_mask_column(ids)[..., :2], 2, steps=2)
    assert (out == 1).all()


class Student(collections.OrderedDict):  # a class the loader would have to import
    pass


def test_a_pickle_that_needs_code_is_refused(tmp_path):
    folder = tmp_path / "lab"
    _, transformer = lab.write_lab_files(folder, attention="separate")
    torch.save(Student(transformer.state_dict()), folder / "transformer.pt")
    message = _refused(tmp_path, folder, "transformer.pt", "refused", "run code", "Student")
    assert "weights_only" in message


def test_defaults_keep_maskgit_modules_unchanged(tiny_tokenizer_cfg, tiny_transformer_cfg):
    """The new options default to the old layout: same parameter names and shapes."""
    assert TokenizerConfig().encoder_layers == () and TokenizerConfig().image_mean == ()
    assert TransformerConfig().layer_norm_eps == 1e-5
    assert TransformerConfig().logit_bias == "shared"
    model = BidirectionalTransformer(tiny_transformer_cfg)
    assert model.logit_bias.shape == (tiny_transformer_cfg.codebook_size,)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    vqgan = VQGAN(tiny_tokenizer_cfg)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert vqgan._to_native(x) is x


def test_cli_import_lab(tmp_path, capsys, lab_files):
    folder, vqgan, transformer = lab_files
    out = tmp_path / "lab-model"
    argv = [
        "import-lab",
        "--vqgan-config", str(folder / "VQGAN.yml"),
        "--vqgan", str(folder / "VQGAN.pt"),
        "--transformer-config", str(folder / "MaskGit.yml"),
        "--transformer", str(folder / "transformer.pt"),
        "--out", str(out), "--qkv-order", "per-head",
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "fused qkv, per-head order (2 layers)" in printed and str(out) in printed
    _assert_same_model(MaskGIT.from_pretrained(out, device="cpu"), vqgan, transformer)
    assert main(argv) == 2  # the folder is there now: one line, exit 2
    err = capsys.readouterr().err
    assert err.startswith("maskgit: error: ") and err.count("\n") == 1


def test_cli_help_explains_each_file(capsys):
    with pytest.raises(SystemExit):
        main(["import-lab", "--help"])
    text = capsys.readouterr().out
    for words in ("VQGAN.yml", "VQGAN.pt", "MaskGit.yml", "transformer.pt", "keys.yaml"):
        assert words in text
    assert "weights_only" in text and "model_state_dict" in text


def test_the_repo_script_makes_a_set_the_recipe_imports_and_inpaints(tmp_path, monkeypatch):
    import runpy
    from pathlib import Path

    script = Path(__file__).parent.parent / "scripts" / "make_tiny_lab_checkpoint.py"
    lab_dir = tmp_path / "tiny-lab"
    monkeypatch.setattr("sys.argv", [str(script), "--out", str(lab_dir), "--images", "2"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0
    model_dir = tmp_path / "tiny-lab-model"
    assert (
        main(
            [
                "import-lab",
                "--vqgan-config",
                str(lab_dir / "VQGAN.yml"),
                "--vqgan",
                str(lab_dir / "VQGAN.pt"),
                "--transformer-config",
                str(lab_dir / "MaskGit.yml"),
                "--transformer",
                str(lab_dir / "transformer.pt"),
                "--out",
                str(model_dir),
                "--qkv-order",
                "per-head",  # the script writes the lab report's attention
            ]
        )  # fmt: skip
        == 0
    )
    test = lab_dir / "test"
    argv = ["inpaint", "--model", str(model_dir), "--images", str(test / "masked_image")]
    argv += ["--masks", str(test / "mask64"), "--white-keep", "--schedule", "lab-cosine"]
    argv += ["--steps", "4", "--out", str(tmp_path / "inpainted"), "--device", "cpu"]
    assert main(argv + ["--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "inpainted").glob("*.png")) == [
        "image_000.png",
        "image_001.png",
    ]


def test_explicit_layer_lists_build_a_working_vqgan():
    cfg = TokenizerConfig(
        image_size=16,
        base_channels=8,
        latent_dim=8,
        codebook_size=16,
        code_dim=8,
        encoder_layers=("res:16", "attn", "down", "res:16", "down"),
        decoder_layers=("res:16", "attn", "up", "res:8", "up", "res:8"),
        image_mean=(0.5, 0.4, 0.3),
        image_std=(0.2, 0.2, 0.2),
    )
    torch.manual_seed(0)
    model = VQGAN(cfg)
    images = _images(2)
    assert model.encode(images).shape == (2, 4, 4)
    recon, stats = model(images)
    assert recon.shape == images.shape
    (recon.square().mean() + stats.loss).backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
