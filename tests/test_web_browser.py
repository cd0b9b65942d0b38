"""The web demo in a real headless Chromium (Debian's /usr/bin/chromium driven by playwright).

Upload an image, paint a mask with mouse drags, Run, and check the result pixels: equal to
the input outside the mask, different inside. Screenshots go to test-artifacts/web/.
Without Chromium the test is skipped with the reason, except in CI (CI=true), where it
fails: CI installs it with scripts/ensure_chromium.sh.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_model import write_tiny_model
from web_server import running_server

torch.set_num_threads(1)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "web"
SIZE = 16  # tiny preset
CANVAS = 384  # the page's canvas size
TIMEOUT_MS = 120_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI must provide it: bash scripts/ensure_chromium.sh)")
    pytest.skip(reason)


def _require_browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: install it with `bash scripts/ensure_chromium.sh`")
    for module in ("playwright.sync_api", "fastapi", "uvicorn"):
        try:
            __import__(module)
        except ImportError:
            _unavailable(
                f"python package {module.split('.')[0]} is missing: pip install -e '.[dev,web]'"
            )
    from playwright.sync_api import expect, sync_playwright

    return sync_playwright, expect


def decode_data_url(url: str) -> np.ndarray:
    assert url and url.startswith("data:image/png;base64,"), (url or "")[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def shown_png(page, selector: str) -> np.ndarray:
    """The picture an <img> shows (the page loads results into blob: URLs), read back
    through a canvas as PNG."""
    assert page.get_attribute(selector, "src").startswith("blob:")
    url = page.evaluate(
        """async (selector) => {
          const img = document.querySelector(selector);
          await img.decode();
          const canvas = document.createElement("canvas");
          canvas.width = img.naturalWidth;
          canvas.height = img.naturalHeight;
          canvas.getContext("2d").drawImage(img, 0, 0);
          return canvas.toDataURL("image/png");
        }""",
        selector,
    )
    return decode_data_url(url)[..., :3]  # the canvas adds an opaque alpha channel


def served_png(base: str, url: str) -> np.ndarray:
    """A result picture from its own URL on the server."""
    with urllib.request.urlopen(base + url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def drag(page, box, points, steps=8):
    """Mouse drag through canvas coordinates (0..CANVAS) of the element box."""
    scale = box["width"] / CANVAS

    def at(p):
        return box["x"] + p[0] * scale, box["y"] + p[1] * scale

    page.mouse.move(*at(points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*at(point), steps=steps)
    page.mouse.up()


def test_inpaint_in_a_real_browser(tmp_path):
    sync_playwright, expect = _require_browser()
    from maskgit.app import create_app

    model_dir = tmp_path / "model"
    write_tiny_model(model_dir)

    # a colourful 48x48 picture (the model works at 16x16): it comes back 48x48
    y, x = np.mgrid[0:48, 0:48]
    picture = np.stack([x * 5, y * 5, np.where((x // 12 + y // 12) % 2 == 0, 230, 30)], -1).astype(
        np.uint8
    )
    picture_path = tmp_path / "picture.png"
    Image.fromarray(picture).save(picture_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with (
        running_server(create_app(str(model_dir), device="cpu")) as base,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            requests: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto(base + "/")
            page.wait_for_selector("#model-badge.ready")
            assert "Model ready" in page.inner_text("#status")

            # Run without an image or a mask: a visible message, no request
            page.click("#run-inpaint")
            assert "upload an image" in page.inner_text("#status.error")

            if page.locator("#samples .sample").count():  # bundled samples, when there are
                page.click("#samples .sample >> nth=0")
                page.wait_for_selector("#canvas-empty", state="hidden")
                assert "Loaded" in page.inner_text("#status")

            page.set_input_files("#file", str(picture_path))
            # a locator assertion, not wait_for_function: the page's CSP (script-src 'self')
            # forbids evaluating strings, and Playwright's string predicates do that
            expect(page.locator("#status")).to_contain_text("picture.png")
            page.wait_for_selector("#canvas-empty", state="hidden")

            box = page.locator("#mask-canvas").bounding_box()
            # a brush stroke along the bottom, then a rectangle in the middle
            drag(page, box, [(40, 330), (120, 330)])
            page.click("label:has(#tool-rect)")
            drag(page, box, [(96, 96), (200, 170), (288, 240)])
            page.fill("#steps", "6")
            page.fill("#seed", "3")
            page.click("#run-inpaint")
            page.wait_for_selector("#result-img[src^='blob:']")
            page.wait_for_selector("#status.ok")

            result = shown_png(page, "#result-img")
            job = get_json(f"{base}/api/jobs/{page.get_attribute('#result-img', 'data-job-id')}")
            assert job["status"] == "done" and job["params"]["steps"] == 6
            used_mask = served_png(base, job["result"]["mask"]) > 127
            seen = served_png(base, job["result"]["input"])
            page_mask = (
                decode_data_url(page.evaluate("() => window.maskgitExportMask()"))[..., 0] > 127
            )

            # the mask the server used is the one painted on the page...
            np.testing.assert_array_equal(used_mask, page_mask)
            # at the picture's own size (48 px on the 384 px canvas: 8 canvas px a pixel)
            assert used_mask.shape == (48, 48)
            assert used_mask[13:29, 13:35].all(), "rectangle (canvas 96..288 x 96..240) missing"
            assert used_mask[41, 6:14].all(), "brush stroke along canvas y=330 missing"
            assert not used_mask[0, :].any() and not used_mask[:, 47].any()
            # ...the input is the upload itself...
            np.testing.assert_array_equal(seen, picture)
            # ...and the result, at its size, keeps it exactly outside the mask, repaints inside
            assert result.shape == (48, 48, 3)
            assert "48×48" in page.inner_text("#result-size")
            np.testing.assert_array_equal(result[~used_mask], seen[~used_mask])
            inside = np.abs(result[used_mask].astype(int) - seen[used_mask].astype(int))
            assert inside.mean() > 3, f"the masked area barely changed ({inside.mean():.2f})"

            # every decoding step is shown; clicking one shows its prediction
            assert page.locator("#strip .step-thumb").count() == 6
            page.click("#strip .step-thumb >> nth=1")
            assert "step 2" in page.inner_text("#step-caption")
            page.fill("#step-slider", "3")  # the screenshot shows a step halfway
            assert "step 3" in page.inner_text("#step-caption")
            href = page.get_attribute("#download", "href")
            assert href == page.get_attribute("#result-img", "src")
            shot = ARTIFACTS / "inpaint.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot: {shot}")

            # a server-side error is shown in the status area and the page keeps working
            page.fill("#steps", "4")
            page.fill("#sweet-spot", "9")
            page.click("#run-inpaint")
            message = page.inner_text("#status.error")
            assert "sweet_spot=9" in message, message
            page.fill("#sweet-spot", "")

            # the controls started at DEFAULT_DECODING, which the page lists
            assert "linear" in page.inner_text("#decoding-defaults")

            # Outpaint tab: the loaded picture at its own size, a 4 px margin generated around
            page.click("#tab-outpaint")
            page.fill("#outpaint-pad", "4")
            page.click("#run-outpaint")
            page.wait_for_selector("#results[data-kind='outpaint']")
            page.wait_for_selector("#status.ok")
            assert "56×56" in page.inner_text("#result-size")
            extended = shown_png(page, "#result-img")
            np.testing.assert_array_equal(extended[4:52, 4:52], picture)

            # Generate tab
            page.click("#tab-generate")
            page.fill("#gen-n", "4")
            page.click("#run-generate")
            page.wait_for_selector("#results[data-kind='generate']")
            assert page.locator("#gallery img").count() == 4
            page.click("#gallery img >> nth=2")
            assert page.locator("#strip .step-thumb").count() == 4
            shot = ARTIFACTS / "generate.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")

            assert not errors, errors
            outside = [u for u in requests if not u.startswith((base, "data:", "blob:"))]
            assert not outside, f"the page fetched from outside the app: {outside}"
        except Exception:
            shot = ARTIFACTS / "failure.png"
            with contextlib.suppress(Exception):
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nfailure screenshot: {shot}; status: {page.inner_text('#status')!r}")
            raise
        finally:
            browser.close()
