"""`maskgit inpaint` / `maskgit generate` end to end on a tiny random model, file pairing and
validation (nothing written when an input is bad), and the step visuals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskgit.cli import main
from maskgit.inpaint_files import pair_inputs
from maskgit.visualize import (
    KNOWN_COLOUR,
    UNKNOWN_COLOUR,
    masked_preview,
    save_step_visuals,
    side_by_side,
    step_strip,
    token_mask_grid,
)
from tiny_model import write_tiny_model

torch.set_num_threads(1)

SIZE = 16  # tiny preset
NAMES = ("a", "b", "c")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model folder as `--model` expects it: tiny random tokenizer + transformer."""
    return write_tiny_model(tmp_path_factory.mktemp("model"))


def hole(size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    return mask


def write_image(path: Path, size: int = SIZE, seed: int = 0) -> np.ndarray:
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def write_mask(path: Path, repaint: np.ndarray, white_keep: bool = False) -> None:
    white = ~repaint if white_keep else repaint
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(white, 255, 0).astype(np.uint8)).save(path)


@pytest.fixture
def lab(tmp_path) -> Path:
    """The lab layout: images/, masks/ (white = repaint), gt/ with equal file names."""
    for i, name in enumerate(NAMES):
        write_image(tmp_path / "images" / f"{name}.png", seed=i)
        write_mask(tmp_path / "masks" / f"{name}.png", hole())
        write_image(tmp_path / "gt" / f"{name}.png", seed=10 + i)
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def inpaint_args(root: Path, model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "inpaint",
        "--images",
        str(root / "images"),
        "--masks",
        str(root / "masks"),
        "--out",
        str(out),
        "--model",
        str(model_dir),
        *extra,
    ]


def read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------- end to end


def test_inpaint_folder_end_to_end_with_step_visuals(capsys, lab, model_dir):
    out = lab / "out"
    code, stdout, err = run(
        capsys,
        *inpaint_args(lab, model_dir, out, "--steps", "5", "--save-steps", "--gt", str(lab / "gt")),
    )
    assert code == 0, err
    assert "wrote 3 inpainted images" in stdout and " s\n" in stdout
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    for i, name in enumerate(NAMES):
        result = read(out / f"{name}.png")
        original = read(lab / "images" / f"{name}.png")
        assert result.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(result[~hole()], original[~hole()])
        assert not np.array_equal(result[hole()], original[hole()])
        steps = out / "steps"
        tokens, strip, compare = (
            steps / f"{name}_{kind}.png" for kind in ("tokens", "steps", "compare")
        )
        for path in (tokens, strip, compare):
            with Image.open(path) as img:
                assert img.format == "PNG" and img.width > img.height > SIZE
        with Image.open(compare) as img:  # input | result | ground truth, each upscaled x8
            assert img.width >= 3 * 8 * SIZE and img.height >= 8 * SIZE
        with Image.open(strip) as img:  # five 128-pixel tiles
            assert img.width >= 5 * 8 * SIZE
        with Image.open(steps / f"{name}.gif") as gif:
            assert gif.format == "GIF" and gif.n_frames == 5
        if i == 0:
            ARTIFACTS.mkdir(exist_ok=True)
            for path in (tokens, strip, compare, steps / f"{name}.gif"):
                (ARTIFACTS / f"cli_{path.name}").write_bytes(path.read_bytes())
    assert len(list((out / "steps").iterdir())) == 12
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_outputs_do_not_depend_on_the_batch_size(capsys, lab, model_dir):
    assert run(capsys, *inpaint_args(lab, model_dir, lab / "b1", "--batch-size", "1"))[0] == 0
    assert run(capsys, *inpaint_args(lab, model_dir, lab / "b2", "--batch-size", "2"))[0] == 0
    for name in NAMES:
        np.testing.assert_array_equal(
            read(lab / "b1" / f"{name}.png"), read(lab / "b2" / f"{name}.png")
        )


def test_white_keep_masks_and_stem_pairing(capsys, lab, model_dir):
    """The lab's files: white = keep; images may be .jpg while masks are .png."""
    keep = lab / "keep-masks"
    for name in NAMES:
        write_mask(keep / f"{name}.png", hole(), white_keep=True)
    assert run(capsys, *inpaint_args(lab, model_dir, lab / "repaint"))[0] == 0
    args = inpaint_args(lab, model_dir, lab / "keep", "--white-keep")
    args[args.index(str(lab / "masks"))] = str(keep)
    assert run(capsys, *args)[0] == 0
    for name in NAMES:
        np.testing.assert_array_equal(
            read(lab / "keep" / f"{name}.png"), read(lab / "repaint" / f"{name}.png")
        )
    # the long form is the same option
    args[args.index("--white-keep")] = "--mask-convention=white-keep"
    args[args.index(str(lab / "keep"))] = str(lab / "keep2")
    assert run(capsys, *args)[0] == 0
    np.testing.assert_array_equal(read(lab / "keep2" / "a.png"), read(lab / "keep" / "a.png"))

    jpgs = lab / "jpgs"
    jpgs.mkdir()
    Image.open(lab / "images" / "a.png").save(jpgs / "a.jpg", quality=95)
    pairs = pair_inputs(jpgs, lab / "masks")
    assert [(p.image.name, p.mask.name, p.output_name) for p in pairs] == [
        ("a.jpg", "a.png", "a.png")
    ]


def test_single_files_and_one_mask_for_a_folder(capsys, lab, model_dir, tmp_path):
    one = ["--images", str(lab / "images" / "b.png"), "--masks", str(lab / "masks" / "b.png")]
    code, _, err = run(
        capsys, "inpaint", *one, "--out", str(tmp_path / "one"), "--model", str(model_dir)
    )
    assert code == 0, err
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["b.png"]
    # a folder of images with a single mask file: every image takes it
    pairs = pair_inputs(lab / "images", lab / "masks" / "a.png")
    assert [p.mask.name for p in pairs] == ["a.png"] * 3
    # an image file picks its mask from a folder by name
    assert pair_inputs(lab / "images" / "c.png", lab / "masks")[0].mask.name == "c.png"


def test_any_image_size_comes_back_at_its_size_exact_outside_the_mask(capsys, tmp_path, model_dir):
    image = np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8)  # 40 wide
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "wide.png")
    repaint = np.zeros((24, 40), dtype=bool)
    repaint[6:18, 10:30] = True
    write_mask(tmp_path / "masks" / "wide.png", repaint)
    out = tmp_path / "out"
    code, _, err = run(capsys, *inpaint_args(tmp_path, model_dir, out, "--save-steps"))
    assert code == 0, err
    assert not [line for line in err.splitlines() if line.startswith("note:")]
    result = np.asarray(Image.open(out / "wide.png"))
    assert result.shape == (24, 40, 3)  # not squashed to the model's 16x16
    np.testing.assert_array_equal(result[~repaint], image[~repaint])
    assert (out / "steps" / "wide_steps.png").is_file()
    with Image.open(out / "steps" / "wide_compare.png") as compare:  # input | result, full size
        assert compare.width > compare.height


def test_generate_writes_n_images_and_visuals(capsys, tmp_path, model_dir):
    out = tmp_path / "gen"
    args = ["generate", "--n", "3", "--out", str(out), "--model", str(model_dir), "--steps", "4"]
    code, stdout, err = run(capsys, *args, "--save-steps", "--batch-size", "2")
    assert code == 0, err
    assert "wrote 3 generated images" in stdout
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
    assert len(list((out / "steps").iterdir())) == 12
    with Image.open(out / "steps" / "sample_0001.gif") as gif:
        assert gif.n_frames == 4
    # same seed -> same images, whatever the batch size
    assert run(capsys, *[a if a != str(out) else str(tmp_path / "again") for a in args])[0] == 0
    for name in names:
        np.testing.assert_array_equal(read(out / name), read(tmp_path / "again" / name))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "generate_steps.png").write_bytes(
        (out / "steps" / "sample_0000_steps.png").read_bytes()
    )


# --------------------------------------------------------------------------- bad input


def assert_usage_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("maskgit: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_image_without_a_mask_lists_its_name(capsys, lab, model_dir):
    (lab / "masks" / "b.png").unlink()
    out = lab / "out"
    code, _, err = run(capsys, *inpaint_args(lab, model_dir, out))
    assert_usage_error(code, err, "b.png", "1 of 3", "no mask")
    assert not out.exists()


def test_many_missing_masks_are_listed_briefly(tmp_path):
    for i in range(8):
        write_image(tmp_path / "images" / f"img{i}.png", seed=i)
    write_mask(tmp_path / "masks" / "img0.png", hole())
    with pytest.raises(ValueError, match=r"7 of 8 .*img1.png, .*img5.png \.\.\. and 2 more"):
        pair_inputs(tmp_path / "images", tmp_path / "masks")


def test_size_mismatch_names_both_files(capsys, lab, model_dir):
    write_mask(lab / "masks" / "c.png", hole(8))
    code, _, err = run(capsys, *inpaint_args(lab, model_dir, lab / "out"))
    assert_usage_error(code, err, "c.png is 16x16", "masks/c.png is 8x8")
    assert not (lab / "out").exists()


@pytest.mark.parametrize("which", ["images", "masks"])
def test_zero_byte_file_is_named_and_nothing_is_written(capsys, lab, model_dir, which):
    (lab / which / "c.png").write_bytes(b"")  # the last file: a.png and b.png come first
    code, _, err = run(capsys, *inpaint_args(lab, model_dir, lab / "out"))
    assert_usage_error(code, err, f"{which}/c.png", "empty file")
    assert not (lab / "out").exists()


def test_unreadable_ground_truth_is_found_before_writing(capsys, lab, model_dir):
    (lab / "gt" / "c.png").write_bytes(b"not a png")
    code, _, err = run(capsys, *inpaint_args(lab, model_dir, lab / "out", "--gt", str(lab / "gt")))
    assert_usage_error(code, err, "gt/c.png", "not a readable image")
    assert not (lab / "out").exists()


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (["--steps", "0"], ["steps=0"]),
        (["--steps", "4", "--sweet-spot", "5"], ["sweet_spot=5", "steps=4"]),
        (["--schedule", "wiggly"], ["'wiggly'", "linear, cosine, lab-cosine"]),
        (["--batch-size", "0"], ["batch_size=0"]),
        (["--top-k", "0"], ["top_k=0"]),
        (["--feather", "-1"], ["feather=-1"]),
        (["--mask-convention", "black"], ["white-repaint, white-keep"]),
        (["--temperature", "nan"], ["temperature=nan", "finite"]),
        (["--temperature", "inf"], ["temperature=inf", "finite"]),
        (["--choice-temperature", "nan"], ["choice_temperature=nan", "finite"]),
        (["--steps", "many"], ["steps='many'", "whole number"]),
    ],
)
def test_bad_options_are_one_line_exit_2(capsys, lab, model_dir, options, fragments):
    code, _, err = run(capsys, *inpaint_args(lab, model_dir, lab / "out", *options))
    assert_usage_error(code, err, *fragments)
    assert not (lab / "out").exists()


def test_bad_generate_options_and_missing_model(capsys, tmp_path, model_dir):
    out = str(tmp_path / "gen")
    for options, fragment in (
        (["--n", "0"], "--n 0"),
        (["--n", "2", "--steps", "0"], "steps=0"),
        (["--n", "2", "--schedule", "nope"], "valid: linear"),
    ):
        code, _, err = run(capsys, "generate", *options, "--out", out, "--model", str(model_dir))
        assert_usage_error(code, err, fragment)
    code, _, err = run(
        capsys, "generate", "--n", "1", "--out", out, "--model", str(tmp_path / "nowhere")
    )
    assert_usage_error(code, err, "nowhere", "not a model folder")
    assert not (tmp_path / "gen").exists()


def test_out_must_not_be_the_input_folder(capsys, lab, model_dir):
    before = {p.name: p.read_bytes() for p in (lab / "images").iterdir()}
    code, _, err = run(capsys, *inpaint_args(lab, model_dir, lab / "images"))
    assert_usage_error(code, err, "input folder")
    assert {p.name: p.read_bytes() for p in (lab / "images").iterdir()} == before


def test_ambiguous_stems_are_an_error(lab):
    Image.open(lab / "images" / "a.png").save(lab / "images" / "a.jpg")
    with pytest.raises(ValueError, match="a.jpg and a.png|a.png and a.jpg"):
        pair_inputs(lab / "images", lab / "masks")


# --------------------------------------------------------------------------- visuals


class Frame:
    def __init__(self, step, token_mask, image):
        self.step, self.token_mask, self.image = step, token_mask, image


def frames(count: int = 3, grid: int = 4, size: int = SIZE) -> list[Frame]:
    out = []
    for step in range(count):
        mask = np.zeros((grid, grid), dtype=bool)
        mask.flat[: count - 1 - step] = True  # 2, 1, 0 unknown tokens
        out.append(Frame(step, mask, Image.new("RGB", (size, size), (step * 60, 100, 200))))
    return out


def test_token_mask_grid_draws_unknown_dark_and_known_light():
    picture = np.asarray(token_mask_grid(frames(), cell=10, labels=False))
    # first tile: tokens 0 and 1 unknown; token (0, 2) known. Tiles start at pad 2.
    assert tuple(picture[2 + 5, 2 + 5]) == UNKNOWN_COLOUR
    assert tuple(picture[2 + 5, 2 + 15]) == UNKNOWN_COLOUR
    assert tuple(picture[2 + 5, 2 + 25]) == KNOWN_COLOUR
    third = 2 + 2 * (40 + 2)
    assert tuple(picture[2 + 5, third + 5]) == KNOWN_COLOUR
    assert picture.shape[1] == 3 * 40 + 4 * 2
    labelled = token_mask_grid(frames(), start_mask=np.ones((4, 4), bool))
    assert labelled.width > 4 * 128  # four tiles (start + 3 steps), each ~128 pixels


def test_step_strip_upscales_small_images_with_nearest():
    strip = step_strip(frames(size=64), labels=False)
    assert strip.size == (3 * 128 + 4 * 2, 128 + 2 * 2)  # 64 -> x2
    assert tuple(np.asarray(strip)[2 + 64, 2 + 128 + 2 + 64]) == (60, 100, 200)
    assert step_strip(frames(size=256), labels=False).height == 256 + 4  # no upscaling


def test_side_by_side_and_masked_preview():
    image = Image.new("RGB", (SIZE, SIZE), (10, 200, 30))
    preview = np.asarray(masked_preview(image, hole()))
    assert (preview[~hole()] == (10, 200, 30)).all()
    assert not (preview[hole()] == (10, 200, 30)).all(axis=1).any()
    grey = preview[hole()]
    assert (grey[:, 0] == grey[:, 1]).all() and len(np.unique(grey[:, 0])) == 2  # checker
    two = side_by_side(image, image)
    three = side_by_side(image, image, image)
    assert three.width > two.width and two.height == three.height > 8 * SIZE


def test_save_step_visuals_writes_four_files(tmp_path):
    image = Image.new("RGB", (SIZE, SIZE), "white")
    paths = save_step_visuals(tmp_path, "x", image, image, frames(5))
    assert [p.name for p in paths] == ["x_tokens.png", "x_steps.png", "x_compare.png", "x.gif"]
    with Image.open(paths[3]) as gif:
        assert gif.n_frames == 5
    # nothing masked -> no step ran: still four files, one "no steps" frame
    paths = save_step_visuals(tmp_path, "y", image, image, [], start_mask=np.zeros((4, 4), bool))
    assert all(p.is_file() for p in paths)


def test_prefill_choices_change_the_result(capsys, lab, model_dir, tmp_path):
    from maskgit.options import PREFILLS

    outputs = {}
    for prefill in PREFILLS:
        out = tmp_path / prefill
        code, _, err = run(capsys, *inpaint_args(lab, model_dir, out, "--prefill", prefill))
        assert code == 0, err
        outputs[prefill] = [read(path) for path in sorted(out.glob("*.png"))]
    assert len(outputs["telea"]) == len(outputs["white"]) > 0
    assert any((a != b).any() for a, b in zip(outputs["telea"], outputs["white"], strict=True))


# --------------------------------------------------------------------------- images read right


def test_a_16_bit_png_is_scaled_not_clipped(capsys, tmp_path, model_dir):
    Image.fromarray(np.full((SIZE, SIZE), 30000, np.uint16)).save(tmp_path / "deep.png")
    write_mask(tmp_path / "mask.png", hole())
    code, _, err = run(
        capsys,
        "inpaint",
        "--images",
        str(tmp_path / "deep.png"),
        "--masks",
        str(tmp_path / "mask.png"),
        "--out",
        str(tmp_path / "out"),
        "--model",
        str(model_dir),
    )
    assert code == 0, err
    kept = read(tmp_path / "out" / "deep.png")[~hole()]
    assert (kept == round(30000 / 65535 * 255)).all()  # 117, not 255


def test_a_mask_drawn_on_the_image_as_displayed_fits_a_rotated_photo(capsys, tmp_path, model_dir):
    stored = np.zeros((SIZE // 2, SIZE, 3), np.uint8)  # 16 wide, 8 high as stored
    stored[:, : SIZE // 4] = 255  # left as stored = top as displayed (Orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    shown = np.zeros((SIZE, SIZE // 2), bool)  # drawn on the displayed picture: 8 wide, 16 high
    shown[-4:, :] = True  # repaint the bottom, black as displayed
    write_mask(tmp_path / "mask.png", shown)
    code, _, err = run(
        capsys,
        "inpaint",
        "--images",
        str(tmp_path / "phone.png"),
        "--masks",
        str(tmp_path / "mask.png"),
        "--out",
        str(tmp_path / "out"),
        "--model",
        str(model_dir),
    )
    assert code == 0, err
    result = read(tmp_path / "out" / "phone.png")  # 16 x 16 (the model's size)
    assert (result[:3] == 255).all()  # the top, white as displayed, is kept


def test_outpaint_command(capsys, tmp_path, model_dir):
    write_image(tmp_path / "images" / "a.png", seed=1)
    write_image(tmp_path / "images" / "b.png", seed=2)
    out = tmp_path / "out"
    common = ["--out", str(out), "--model", str(model_dir), "--steps", "3"]
    code, stdout, err = run(
        capsys, "outpaint", "--images", str(tmp_path / "images"), "--pad", "4", *common
    )
    assert code == 0, err
    assert "wrote 2 outpainted images" in stdout
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    from maskgit.pipeline import MaskGIT

    model = MaskGIT.from_pretrained(model_dir, device="cpu")
    with Image.open(tmp_path / "images" / "b.png") as image:
        expected = model.outpaint([image], pad=4, steps=3, seed=1).images[0]
        pixels = np.asarray(image.convert("RGB"))
    outpainted = read(out / "b.png")
    assert np.array_equal(outpainted, np.asarray(expected))  # image i uses seed + i
    assert outpainted.shape[:2] == (pixels.shape[0] + 8, pixels.shape[1] + 8)  # full size
    assert np.array_equal(outpainted[4:-4, 4:-4], pixels)  # the image's own pixels
    code, _, err = run(
        capsys,
        "outpaint",
        "--images",
        str(tmp_path / "images" / "a.png"),
        "--canvas",
        str(pixels.shape[1] + 10),
        str(pixels.shape[0]),
        "--at",
        "10",
        "0",
        "--out",
        str(tmp_path / "right"),
        *common[2:],
    )
    assert code == 0, err
    extended = read(tmp_path / "right" / "a.png")  # 10 new columns on the left
    assert extended.shape[:2] == (pixels.shape[0], pixels.shape[1] + 10)
    with Image.open(tmp_path / "images" / "a.png") as image:
        assert np.array_equal(extended[:, 10:], np.asarray(image.convert("RGB")))
    for bad, fragment in (
        (["--pad", "wide"], "neither pixels"),
        (["--pad", "1", "2", "3"], "1 value"),
        (["--canvas", "8", "8"], "does not fit"),
        (["--pad", "2", "--canvas", "40", "40"], "--pad and --canvas"),
        (["--at", "0", "0"], "--canvas"),
    ):
        code, _, err = run(
            capsys,
            "outpaint",
            "--images",
            str(tmp_path / "images"),
            *bad,
            *common[:1],
            str(tmp_path / "other"),
            *common[2:],
        )
        assert_usage_error(code, err, fragment)
