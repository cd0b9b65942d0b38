"""int8 decoding on the CPU: `MaskGIT.from_pretrained(..., quantize="int8")` and `--quantize`
on the commands that load a model (tiny random model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit.cli import build_parser, main
from maskgit.pipeline import MaskGIT, check_quantize
from tiny_model import write_tiny_model

torch.set_num_threads(1)

SIZE = 16  # tiny preset: 16x16 images, 4x4 tokens


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    # weights of a trained model's scale, not the init's 0.02
    return write_tiny_model(tmp_path_factory.mktemp("model"), weight_std=0.2)


def linear_kinds(module: torch.nn.Module) -> set[str]:
    return {
        f"{type(m).__module__}.{type(m).__name__}"
        for m in module.modules()
        if type(m).__name__ == "Linear"
    }


def hole() -> torch.Tensor:
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[4:12, 4:12] = True
    return mask


def image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def test_int8_replaces_every_linear_layer_of_the_transformer_only(model_dir):
    fp32 = MaskGIT.from_pretrained(model_dir, device="cpu")
    int8 = MaskGIT.from_pretrained(model_dir, quantize="int8")  # no device: the CPU
    assert (fp32.quantize, int8.quantize) == (None, "int8")
    assert int8.device == torch.device("cpu")
    assert linear_kinds(fp32.transformer) == {"torch.nn.modules.linear.Linear"}
    kinds = linear_kinds(int8.transformer)
    assert kinds and all(".quantized.dynamic." in kind for kind in kinds), kinds
    assert int8.transformer.cfg == fp32.transformer.cfg
    # the tokenizer (convolutions) is not quantised
    for a, b in zip(
        fp32.tokenizer.state_dict().values(), int8.tokenizer.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_int8_logits_differ_little_from_float32(model_dir):
    fp32 = MaskGIT.from_pretrained(model_dir, device="cpu")
    int8 = MaskGIT.from_pretrained(model_dir, device="cpu", quantize="int8")
    cfg = fp32.transformer.cfg
    tokens = torch.randint(
        0, cfg.codebook_size + 1, (8, cfg.num_tokens), generator=torch.Generator().manual_seed(0)
    )
    a, b = fp32._logits(tokens), int8._logits(tokens)
    assert a.shape == b.shape
    assert not torch.equal(a, b)  # the int8 kernels ran
    spread = (a - a.mean()).abs().max()
    assert (a - b).abs().max() < 0.1 * spread
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_int8_model_inpaints_keeping_the_known_pixels(model_dir):
    int8 = MaskGIT.from_pretrained(model_dir, device="cpu", quantize="int8")
    pictures, mask = [image(0), image(1)], hole()
    result = int8.inpaint(pictures, [mask, mask], steps=4)
    assert [im.size for im in result.images] == [(SIZE, SIZE)] * 2
    for before, after in zip(pictures, result.images, strict=True):
        before, after = np.asarray(before), np.asarray(after)
        np.testing.assert_array_equal(before[~mask.numpy()], after[~mask.numpy()])
    again = int8.inpaint(pictures, [mask, mask], steps=4)  # deterministic for a seed
    for a, b in zip(result.images, again.images, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("bad", ["int4", "INT8", "fp16", ""])
def test_an_unknown_quantize_value_is_an_error_naming_the_valid_ones(model_dir, bad):
    with pytest.raises(ValueError, match=r"quantize=.*expected one of int8"):
        MaskGIT.from_pretrained(model_dir, device="cpu", quantize=bad)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_int8_on_a_non_cpu_device_is_an_error_naming_it(model_dir, device):
    with pytest.raises(ValueError, match=f"CPU only.*got device {device}"):
        MaskGIT.from_pretrained(model_dir, device=device, quantize="int8")
    assert check_quantize("int8", None) == torch.device("cpu")
    assert check_quantize("int8", "cpu") == torch.device("cpu")


def test_the_commands_that_load_a_model_take_quantize():
    parser = build_parser()
    for command in ("inpaint", "outpaint", "generate", "demo", "serve", "evaluate", "sweep"):
        extra = {
            "inpaint": ["--images", "i", "--masks", "m", "--out", "o"],
            "outpaint": ["--images", "i", "--out", "o"],
            "generate": ["--n", "1", "--out", "o"],
            "evaluate": ["--images", "i", "--masks", "m", "--out", "o"],
            "sweep": ["--images", "i", "--masks", "m", "--out", "o"],
        }.get(command, [])
        args = parser.parse_args([command, *extra, "--quantize", "int8"])
        assert args.quantize == "int8", command


def test_inpaint_command_with_quantize(capsys, tmp_path, model_dir):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image(3).save(tmp_path / "images" / "a.png")
    Image.fromarray(hole().numpy().astype(np.uint8) * 255).save(tmp_path / "masks" / "a.png")
    common = ["--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks")]
    common += ["--model", str(model_dir), "--steps", "3", "--no-progress"]
    code = main(["inpaint", *common, "--out", str(tmp_path / "out"), "--quantize", "int8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (tmp_path / "out" / "a.png").is_file()
    code = main(["inpaint", *common, "--out", str(tmp_path / "bad"), "--quantize", "int4"])
    err = capsys.readouterr().err
    assert code == 2
    assert "quantize='int4'" in err and "int8" in err
    assert not (tmp_path / "bad" / "a.png").exists()
    code = main(
        [
            "inpaint",
            *common,
            "--out",
            str(tmp_path / "gpu"),
            "--quantize",
            "int8",
            "--device",
            "cuda",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "CPU only" in err and "cuda" in err
