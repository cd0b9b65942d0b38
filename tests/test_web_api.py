"""The web demo's JSON API against a real uvicorn server on a free port (tiny random model)."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from extras import require_extra
from tiny_model import write_tiny_model
from web_server import running_server

require_extra("fastapi", module_level=True)
require_extra("multipart", module_level=True)
uvicorn = require_extra("uvicorn", module_level=True)

from maskgit.app import EMPTY_MASK_MESSAGE, LOADING_MESSAGE, create_app  # noqa: E402

torch.set_num_threads(1)
SIZE = 16  # the tiny preset's image size


# --------------------------------------------------------------------------- helpers


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """(status, decoded JSON) for any HTTP status."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post_form(url: str, fields: dict | None = None, files: dict | None = None):
    """multipart/form-data POST: fields {name: value}, files {name: (filename, bytes)}."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data) in (files or {}).items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return request("POST", url, body, headers)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def result_png(base: str, url: str) -> np.ndarray:
    """A result picture: served as PNG at its own URL (under /api/jobs/<id>/files/)."""
    assert url.startswith("/api/jobs/"), url[:40]
    with urllib.request.urlopen(base + url, timeout=60) as response:
        assert response.headers["Content-Type"] == "image/png"
        return np.asarray(Image.open(io.BytesIO(response.read())))


def make_image(size: int = 24) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.uint8)


def centre_mask(size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return mask


def wait_job(base: str, job_id: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, job = request("GET", f"{base}/api/jobs/{job_id}")
        assert status == 200, job
        if job["status"] in ("done", "error"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {job}")


def wait_ready(base: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, info = request("GET", f"{base}/api/health")
        if info["status"] != "loading":
            return info
        time.sleep(0.05)
    raise AssertionError("model did not load")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("samples")
    Image.fromarray(make_image(16)).save(folder / "gradient.png")
    (folder / "notes.txt").write_text("not a sample")
    return folder


@pytest.fixture(scope="module")
def base(model_dir, samples_dir):
    with running_server(create_app(str(model_dir), device="cpu", samples_dir=samples_dir)) as url:
        info = wait_ready(url)
        assert info["status"] == "ready", info
        yield url


def submit_inpaint(base: str, image: bytes, mask: bytes, **fields) -> tuple[int, dict]:
    fields = {"steps": "4", "schedule": "cosine", "seed": "1", **fields}
    return post_form(
        f"{base}/api/inpaint", fields, {"image": ("in.png", image), "mask": ("mask.png", mask)}
    )


# --------------------------------------------------------------------------- tests


def test_health_and_page(base):
    status, info = request("GET", f"{base}/api/health")
    assert status == 200 and info["status"] == "ready" and info["loaded"]
    assert info["image_size"] == SIZE and info["token_grid"] == 4
    with urllib.request.urlopen(f"{base}/", timeout=10) as response:
        html = response.read().decode()
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert 'id="mask-canvas"' in html and "/static/app.js" in html
    for name in ("index.html", "app.js", "app.css"):
        text = (Path(__file__).parents[1] / "src/maskgit/web" / name).read_text()
        assert "http://" not in text and "https://" not in text, f"{name} refers outside"
    with urllib.request.urlopen(f"{base}/static/app.js", timeout=10) as response:
        assert b"maskgitExportMask" in response.read()


def test_inpaint_end_to_end(base):
    source = make_image(24)  # not the model's 16x16: comes back 24x24
    status, answer = submit_inpaint(base, png(source), png(centre_mask(24)), steps="5")
    assert status == 200, answer
    job = wait_job(base, answer["job_id"])
    assert job["status"] == "done", job
    assert job["progress"] == {"done": 5, "total": 5}
    assert job["notices"] == []
    result = job["result"]
    assert result["image_size"] == SIZE and len(result["images"]) == 1
    expected_input = source
    np.testing.assert_array_equal(result_png(base, result["input"]), expected_input)
    mask = result_png(base, result["mask"]) > 127
    np.testing.assert_array_equal(mask, centre_mask(24) > 0)
    entry = result["images"][0]
    out = result_png(base, entry["image"])
    assert out.shape == (24, 24, 3) and (entry["width"], entry["height"]) == (24, 24)
    np.testing.assert_array_equal(out[~mask], expected_input[~mask])  # known pixels exact
    assert len(entry["steps"]) == 5
    assert [s["step"] for s in entry["steps"]] == [1, 2, 3, 4, 5]
    assert result_png(base, entry["token_mask"]).shape == (4, 4)
    assert entry["token_mask"] and result_png(base, entry["token_mask"]).max() == 255
    assert entry["steps"][-1]["unknown"] == 0
    start_unknown = int((result_png(base, entry["token_mask"]) > 127).sum())
    assert start_unknown == 4  # the centre 8x8 pixels = 2x2 tokens of 4x4 pixels
    assert sum(s["decoded"] for s in entry["steps"]) == start_unknown
    token_map = result_png(base, entry["steps"][-1]["token_map"])
    assert token_map.shape == (4, 4, 3)
    assert (token_map[0, 0] == (70, 76, 90)).all()  # a corner token is given by the input
    assert result_png(base, entry["steps"][0]["image"]).shape == (SIZE, SIZE, 3)
    # same seed -> same picture
    status, again = submit_inpaint(base, png(source), png(centre_mask()), steps="5")
    repeated = wait_job(base, again["job_id"])["result"]["images"][0]["image"]
    np.testing.assert_array_equal(result_png(base, repeated), result_png(base, entry["image"]))


def test_generate(base):
    status, answer = post_form(f"{base}/api/generate", {"n": "3", "steps": "3", "seed": "7"})
    assert status == 200, answer
    job = wait_job(base, answer["job_id"])
    assert job["status"] == "done", job
    images = job["result"]["images"]
    assert len(images) == 3 and all(len(entry["steps"]) == 3 for entry in images)
    assert "input" not in job["result"]
    status, answer = post_form(f"{base}/api/generate", {"n": "0"})
    assert status == 400 and "n=0" in answer["error"]


def test_concurrent_requests_all_answered(base):
    results: dict[int, dict] = {}

    def client(i: int) -> None:
        status, answer = submit_inpaint(base, png(make_image(16)), png(centre_mask()), seed=str(i))
        assert status == 200, answer
        results[i] = wait_job(base, answer["job_id"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == [0, 1, 2]
    assert all(job["status"] == "done" for job in results.values())


@pytest.mark.parametrize(
    "payload",
    [b"this is not an image", png(make_image(16))[:60], b""],
    ids=["text", "truncated-png", "empty"],
)
def test_corrupt_upload_is_400_and_server_survives(base, payload):
    status, answer = submit_inpaint(base, payload, png(centre_mask()))
    assert status == 400, answer
    assert answer["error"].startswith("upload is not a readable image"), answer
    status, info = request("GET", f"{base}/api/health")
    assert status == 200 and info["status"] == "ready"
    status, answer = submit_inpaint(base, png(make_image(16)), b"garbage")
    assert status == 400 and "mask" in answer["error"]


def test_empty_mask_is_400(base):
    status, answer = submit_inpaint(base, png(make_image(16)), png(np.zeros((16, 16), np.uint8)))
    assert status == 400 and answer["error"] == EMPTY_MASK_MESSAGE


def test_missing_upload_is_400(base):
    status, answer = post_form(f"{base}/api/inpaint", {"steps": "4"})
    assert status == 400 and "missing upload" in answer["error"]


def test_prefill_is_a_decoding_setting(base):
    results = {}
    for prefill in ("telea", "white"):
        status, answer = submit_inpaint(
            base, png(make_image(16)), png(centre_mask()), steps="3", prefill=prefill
        )
        assert status == 200, answer
        job = wait_job(base, answer["job_id"])
        assert job["status"] == "done", job
        results[prefill] = result_png(base, job["result"]["images"][0]["image"])
    assert (results["telea"] != results["white"]).any()  # the setting reached the pipeline


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"schedule": "wiggly"}, "unknown mask schedule"),
        ({"steps": "0"}, "steps=0"),
        ({"steps": "4", "sweet_spot": "5"}, "sweet_spot=5"),
        ({"steps": "many"}, "whole number"),
        ({"temperature": "-1"}, "temperature"),
        ({"temperature": "nan"}, "finite"),
        ({"steps": "1000"}, "at most"),
        ({"prefill": "blur"}, "prefill='blur': expected one of telea, white"),
    ],
)
def test_bad_decoding_params_are_400(base, fields, words):
    status, answer = submit_inpaint(base, png(make_image(16)), png(centre_mask()), **fields)
    assert status == 400, answer
    assert words in answer["error"], answer


def test_large_image_is_downscaled_with_notice(base):
    wide = np.zeros((4, 4100, 3), np.uint8)  # over 4096 px a side, a tiny PNG
    status, answer = submit_inpaint(base, png(wide), png(centre_mask()))
    assert status == 200, answer
    assert any("downscaled to 4096x" in note for note in answer["notices"]), answer
    assert wait_job(base, answer["job_id"])["status"] == "done"


def test_oversized_upload_is_413(base):
    status, answer = submit_inpaint(base, b"\0" * (21 * 1024 * 1024), png(centre_mask()))
    assert status == 413 and "too large" in answer["error"]
    # a declared body far over the limit is refused before it is read
    headers = {"Content-Length": str(10**9), "Content-Type": "multipart/form-data; boundary=x"}
    status, answer = request("POST", f"{base}/api/inpaint", b"--x--\r\n", headers)
    assert status == 413 and "too large" in answer["error"]
    assert request("GET", f"{base}/api/health")[0] == 200


def test_samples_and_unknown_job(base):
    status, samples = request("GET", f"{base}/api/samples")
    assert status == 200 and samples == [{"name": "gradient.png", "url": "/samples/gradient.png"}]
    with urllib.request.urlopen(f"{base}/samples/gradient.png", timeout=10) as response:
        assert response.read().startswith(b"\x89PNG")
    assert request("GET", f"{base}/samples/..%2Fnotes.txt")[0] == 404
    assert request("GET", f"{base}/samples/notes.txt")[0] == 404
    status, answer = request("GET", f"{base}/api/jobs/nope")
    assert status == 404 and "no job" in answer["error"]


def test_requests_while_loading_get_503(model_dir):
    release = threading.Event()

    def slow_loader():
        from maskgit.pipeline import MaskGIT

        assert release.wait(60)
        return MaskGIT.from_pretrained(model_dir, device="cpu")

    with running_server(create_app(loader=slow_loader)) as url:
        status, info = request("GET", f"{url}/api/health")
        assert status == 200 and info["status"] == "loading" and not info["loaded"]
        status, answer = submit_inpaint(url, png(make_image(16)), png(centre_mask()))
        assert status == 503 and answer["error"] == LOADING_MESSAGE
        status, answer = post_form(f"{url}/api/generate", {"n": "1"})
        assert status == 503 and answer["error"] == LOADING_MESSAGE
        release.set()
        assert wait_ready(url)["status"] == "ready"
        status, answer = submit_inpaint(url, png(make_image(16)), png(centre_mask()))
        assert status == 200 and wait_job(url, answer["job_id"])["status"] == "done"


def test_failed_load_is_reported(tmp_path):
    with running_server(create_app(tmp_path / "missing", device="cpu")) as url:
        info = wait_ready(url)
        assert info["status"] == "error" and "not a model folder" in info["error"]
        status, answer = post_form(f"{url}/api/generate", {"n": "1"})
        assert status == 503 and "could not be loaded" in answer["error"]


def test_serve_command_is_registered():
    from maskgit.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "0", "--model", "somewhere"])
    assert args.command == "serve" and args.port == 0 and args.host == "127.0.0.1"
    assert args.model == "somewhere"


# --------------------------------------------------------------------------- one way in (#16, #17)

SAME = {"steps": "3", "schedule": "cosine", "seed": "2"}  # spelled out: older builds agree


def stroke_on_transparent(size: int = SIZE) -> np.ndarray:
    """What a browser or an image editor writes: a white stroke on a transparent layer
    (transparent pixels are (0, 0, 0, 0) here, or white with alpha 0 from some editors)."""
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[: size // 2, :] = (255, 255, 255, 0)  # invisible white: still not painted
    rgba[size // 2 - 2 : size // 2 + 2, 2:-2] = (255, 255, 255, 255)
    return rgba


def test_a_transparent_mask_file_gives_the_same_mask_on_every_way_in(
    base, model_dir, tmp_path, capsys
):
    from maskgit.cli import main
    from maskgit.pipeline import MaskGIT

    image, mask = make_image(SIZE), stroke_on_transparent()
    stroke = mask[..., 3] == 255
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "x.png")
    Image.fromarray(mask, "RGBA").save(tmp_path / "mask.png")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SAME.items()]
    code = main(
        ["inpaint", "--images", str(tmp_path / "in"), "--masks", str(tmp_path / "mask.png")]
        + ["--out", str(tmp_path / "out"), "--model", str(model_dir), "--device", "cpu"]
        + ["--no-progress", *flags]
    )
    assert code == 0, capsys.readouterr().err
    with Image.open(tmp_path / "out" / "x.png") as done:
        cli = np.asarray(done.convert("RGB"))
    model = MaskGIT.from_pretrained(model_dir, device="cpu")
    with Image.open(tmp_path / "mask.png") as painted:
        python = np.asarray(
            model.inpaint(image, painted, steps=3, schedule="cosine", seed=2).images[0]
        )
    status, answer = submit_inpaint(base, png(image), (tmp_path / "mask.png").read_bytes(), **SAME)
    assert status == 200, answer
    job = wait_job(base, answer["job_id"])
    assert job["status"] == "done", job
    web = result_png(base, job["result"]["images"][0]["image"])
    assert np.array_equal(result_png(base, job["result"]["mask"]) > 0, stroke)
    for name, result in (("cli", cli), ("python", python), ("web", web)):
        assert np.array_equal(result[~stroke], image[~stroke]), f"{name} repainted kept pixels"
    assert np.array_equal(cli, python) and np.array_equal(python, web)


def test_the_page_starts_at_the_default_decoding(base):
    from maskgit.options import DEFAULT_DECODING

    status, info = request("GET", f"{base}/api/health")
    assert status == 200 and info["decoding"] == DEFAULT_DECODING.as_dict()
    status, defaults = request("GET", f"{base}/api/defaults")
    assert defaults == DEFAULT_DECODING.as_dict()
    status, answer = submit_inpaint(base, png(make_image(16)), png(centre_mask()), steps="")
    job = wait_job(base, answer["job_id"])
    assert job["params"]["steps"] == DEFAULT_DECODING.steps  # empty = the default
    assert job["progress"] == {"done": DEFAULT_DECODING.steps, "total": DEFAULT_DECODING.steps}


@pytest.mark.parametrize("value", ["1e-320", "5e-324"])
def test_a_temperature_that_underflows_is_argmax(base, value):
    status, answer = submit_inpaint(
        base, png(make_image(16)), png(centre_mask()), temperature=value, choice_temperature=value
    )
    assert status == 200, answer
    job = wait_job(base, answer["job_id"])
    assert job["status"] == "done", job
    assert job["params"]["temperature"] == 0.0 and job["params"]["choice_temperature"] == 0.0


@pytest.mark.parametrize("field", ["temperature", "choice_temperature"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_temperatures_are_refused(base, field, value):
    status, answer = submit_inpaint(base, png(make_image(16)), png(centre_mask()), **{field: value})
    assert status == 400 and f"{field}={value}" in answer["error"], answer


def test_a_16_bit_upload_is_scaled_not_clipped(base):
    deep = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE), 30000, np.uint16)).save(deep, format="PNG")
    status, answer = submit_inpaint(base, deep.getvalue(), png(centre_mask()))
    assert status == 200, answer
    job = wait_job(base, answer["job_id"])
    kept = result_png(base, job["result"]["images"][0]["image"])[centre_mask() == 0]
    assert (kept == round(30000 / 65535 * 255)).all()  # 117, not 255


def test_an_upload_is_used_as_the_browser_shows_it(base):
    stored = np.zeros((SIZE // 2, SIZE, 3), np.uint8)  # wide as stored ...
    stored[:, : SIZE // 4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # ... shown rotated by 90 degrees clockwise: tall, white on top
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif)
    status, answer = submit_inpaint(base, buffer.getvalue(), png(centre_mask()))
    assert status == 200, answer
    job = wait_job(base, answer["job_id"])
    shown = result_png(base, job["result"]["input"])  # 8x16 (w x h), as displayed
    assert shown.shape == (SIZE, SIZE // 2, 3)
    assert shown[:3].min() == 255 and shown[-3:].max() == 0
    assert any("fitted to the image (8x16)" in note for note in job["notices"])  # 16x16 mask
    result = result_png(base, job["result"]["images"][0]["image"])
    assert result.shape == (SIZE, SIZE // 2, 3)


def test_outpaint_returns_the_image_at_full_size_inside_the_generated_margin(base):
    picture = make_image(40)[:24]  # 40x24: larger than the model and not square
    status, answer = post_form(
        f"{base}/api/outpaint", {**SAME, "pad": "4"}, {"image": ("in.png", png(picture))}
    )
    assert status == 200, answer
    job = wait_job(base, answer["job_id"])
    assert job["status"] == "done" and job["kind"] == "outpaint" and job["params"]["pad"] == "4"
    entry = job["result"]["images"][0]
    assert (entry["width"], entry["height"]) == (48, 32)  # the page shows the size returned
    result = result_png(base, entry["image"])
    assert result.shape == (32, 48, 3)
    np.testing.assert_array_equal(result[4:28, 4:44], picture)  # the user's pixels, exact
    mask = result_png(base, job["result"]["mask"]) > 0
    assert mask.shape == (32, 48) and not mask[4:28, 4:44].any()
    assert mask.sum() == 48 * 32 - 40 * 24
    assert result_png(base, entry["steps"][0]["image"]).shape == (SIZE, SIZE, 3)  # model steps
    status, answer = post_form(f"{base}/api/outpaint", SAME, {"image": ("in.png", png(picture))})
    job = wait_job(base, answer["job_id"])  # default: 50% on every side
    assert job["params"]["pad"] == "50%"
    assert result_png(base, job["result"]["images"][0]["image"]).shape == (48, 80, 3)
    for pad, fragment in (("-3", "negative"), ("wide", "neither pixels"), ("5000", "limit")):
        status, answer = post_form(
            f"{base}/api/outpaint", {"pad": pad}, {"image": ("in.png", png(picture))}
        )
        assert status == 400 and fragment in answer["error"], answer
