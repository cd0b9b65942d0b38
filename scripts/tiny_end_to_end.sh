#!/usr/bin/env bash
# MaskGIT end to end in a few minutes on a CPU, with the `tiny` preset (16x16 images, 4x4
# tokens, 16 codes): the pictures are poor, the point is that every stage runs and connects.
#
#   bash scripts/tiny_end_to_end.sh [RUN_DIR]        (default: a new folder under $TMPDIR)
#
# 1. make 64 coloured-shape images     RUN/images/
# 2. train the VQGAN tokenizer         RUN/tok/       maskgit train-tokenizer
# 3. pre-tokenise the images once      RUN/tokens/    maskgit tokenize
# 4. train the transformer             RUN/model/     maskgit train (the tokenizer is copied in)
# 5. inpaint 4 images through a mask   RUN/inpainted/ maskgit inpaint --save-steps
#
# The preset trains each stage for 2 epochs (6 steps each): enough to run, not to learn much.
# TOKENIZER_EPOCHS=200 TRANSFORMER_EPOCHS=200 train longer (`--set ...epochs=N`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$ROOT/.venv/bin/maskgit" ]]; then  # the repository's venv when there is one
    export PATH="$ROOT/.venv/bin:$PATH"
fi
RUN="${1:-$(mktemp -d "${TMPDIR:-/tmp}/maskgit-tiny.XXXXXX")}"
mkdir -p "$RUN"
echo "run folder: $RUN"

# 1. 64 images: a disc and a box of random colours on a random background; 4 of them and one
#    mask (white = repaint, the centre) for the inpainting step.
python - "$RUN" <<'PY'
import random, sys
from pathlib import Path
from PIL import Image, ImageDraw

run = Path(sys.argv[1]); rng = random.Random(0); size = 16
(run / "images").mkdir(exist_ok=True); (run / "to-inpaint").mkdir(exist_ok=True)
colour = lambda: tuple(rng.randrange(256) for _ in range(3))
for i in range(64):
    img = Image.new("RGB", (size, size), colour()); draw = ImageDraw.Draw(img)
    for shape in (draw.ellipse, draw.rectangle):
        x, y, r = rng.randrange(2, 14), rng.randrange(2, 14), rng.randrange(2, 6)
        shape([x - r, y - r, x + r, y + r], fill=colour())
    img.save(run / "images" / f"shape{i:02d}.png")
    if i < 4:
        img.save(run / "to-inpaint" / f"shape{i:02d}.png")
mask = Image.new("L", (size, size), 0); ImageDraw.Draw(mask).rectangle([4, 4, 11, 11], fill=255)
mask.save(run / "mask.png")
PY

maskgit train-tokenizer --config tiny --data "$RUN/images" --out "$RUN/tok" \
    ${TOKENIZER_EPOCHS:+--set "tokenizer_training.epochs=$TOKENIZER_EPOCHS"}
maskgit tokenize --tokenizer "$RUN/tok" --data "$RUN/images" --out "$RUN/tokens"
maskgit train --config tiny --tokens "$RUN/tokens" --out "$RUN/model" \
    ${TRANSFORMER_EPOCHS:+--set "transformer_training.epochs=$TRANSFORMER_EPOCHS"}
maskgit inpaint --model "$RUN/model" --images "$RUN/to-inpaint" --masks "$RUN/mask.png" \
    --out "$RUN/inpainted" --steps 8 --save-steps

cat <<DONE

Outputs in $RUN:
  images/              64 training images (16x16)
  tok/                 tokenizer run: tokenizer.safetensors, metrics.csv, samples/recon-*.png
  tokens/              pre-tokenised images: tokens.safetensors, index.txt
  model/               transformer run + tokenizer copy: a complete model folder (--model)
  inpainted/           inpainted images; inpainted/steps/ shows every decoding step
DONE
