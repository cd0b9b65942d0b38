#!/usr/bin/env bash
# Trains the embedded default model, v3 leg 2: the v2 design (16x16 tokens, 512 codes, the
# emoji-demo preset) warm-started from the shipped weights and trained on mixed emoji styles
# (data/emoji-mix from `maskgit prepare-data emoji`, docs/model-history.md; Twitter held out).
# Usage: bash scripts/train_default.sh [RUN_ROOT] [INIT_FROM]
# Each stage resumes its run folder when it is there (--resume), so the script can be rerun
# after an interruption (a folder killed before its first `latest` starts afresh: --overwrite). Wall times go to RUN_ROOT/times.txt.
set -euo pipefail
RUN=${1:-runs/v3-leg2}
INIT=${2:-src/maskgit/weights/emoji-demo}
MASKGIT=${MASKGIT:-maskgit}
TOKENIZER_EPOCHS=${TOKENIZER_EPOCHS:-3}
TRANSFORMER_EPOCHS=${TRANSFORMER_EPOCHS:-4}
mkdir -p "$RUN"
stage() {  # stage NAME COMMAND...: run it and record its wall time
  local name=$1; shift
  local started=$SECONDS
  "$@"
  echo "$name $((SECONDS - started)) s" >> "$RUN/times.txt"
}
resume_flag() { [ -f "$1/latest.state.pt" ] && echo --resume || echo --overwrite; }
done_stage() { grep -q "^$1 " "$RUN/times.txt" 2>/dev/null; }

if ! done_stage tokenizer; then
  stage tokenizer $MASKGIT train-tokenizer --config emoji-demo --data data/emoji-mix/train \
    --out "$RUN/tokenizer" --init-from "$INIT" --checkpoint-steps 50 \
    $(resume_flag "$RUN/tokenizer") \
    --set tokenizer_training.epochs="$TOKENIZER_EPOCHS" --set tokenizer_training.lr=2e-4 \
    --set tokenizer_training.warmup_steps=50 --set tokenizer_training.disc_start=150
fi
if ! done_stage tokenize; then
  stage tokenize $MASKGIT tokenize --tokenizer "$RUN/tokenizer" --data data/emoji-mix/train \
    --out "$RUN/tokens" --hflip
fi
stage transformer $MASKGIT train --config emoji-demo --tokens "$RUN/tokens" --out "$RUN/model" \
  --init-from "$INIT" --checkpoint-steps 100 $(resume_flag "$RUN/model") \
  --set transformer_training.epochs="$TRANSFORMER_EPOCHS" --set transformer_training.lr=3e-4 \
  --set transformer_training.warmup_steps=200
