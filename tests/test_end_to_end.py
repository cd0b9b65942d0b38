"""scripts/tiny_end_to_end.sh: make images, train the tokenizer, tokenise, train the
transformer and inpaint, each through the `maskgit` command, in one fresh run folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskgit.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "tiny_end_to_end.sh"
ARTIFACTS = ROOT / "test-artifacts" / "end_to_end"


@pytest.mark.slow
def test_tiny_end_to_end_script(tmp_path):
    run = tmp_path / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # two cores, maybe shared with a training job
        # the `maskgit` and `python` of this interpreter's environment come first
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # The timeout only guards against a hang: the run takes ~1 min on two idle cores.
    result = subprocess.run(
        ["bash", str(SCRIPT), str(run)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Outputs in {run}" in result.stdout

    assert len(list((run / "images").glob("*.png"))) == 64
    assert load_model(run / "tok" / "tokenizer.safetensors", expected_kind="tokenizer")
    assert (run / "tokens" / "tokens.safetensors").is_file()
    for kind in ("tokenizer", "transformer"):  # the model folder is complete for --model
        assert load_model(run / "model" / f"{kind}.safetensors", expected_kind=kind)

    mask = np.asarray(Image.open(run / "mask.png")) > 127  # white = repaint
    outputs = sorted((run / "inpainted").glob("*.png"))
    assert [p.name for p in outputs] == [f"shape{i:02d}.png" for i in range(4)]
    for path in outputs:
        source = np.asarray(Image.open(run / "to-inpaint" / path.name).convert("RGB"))
        result_image = np.asarray(Image.open(path).convert("RGB"))
        assert result_image.shape == source.shape == (16, 16, 3)
        assert np.array_equal(result_image[~mask], source[~mask])  # known pixels are exact
    assert (run / "inpainted" / "steps" / "shape00_compare.png").is_file()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in ("shape00_compare.png", "shape00_steps.png"):
        shutil.copy(run / "inpainted" / "steps" / name, ARTIFACTS / name)
    print(f"end-to-end step visuals: {ARTIFACTS}")
