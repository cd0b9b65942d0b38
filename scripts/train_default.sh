#!/usr/bin/env bash
# Trains the embedded default model (v3: 8x8 tokens, mixed emoji styles; Twitter held out).
# Usage: bash scripts/train_default.sh [RUN_ROOT]   (data/emoji-mix from `maskgit prepare-data`)
# Each stage resumes its run folder when it is there (--resume), so the script can be rerun
# after an interruption. Wall times go to RUN_ROOT/times.txt.
set -euo pipefail
RUN=${1:-runs/v3}
MASKGIT=${MASKGIT:-maskgit}
mkdir -p "$RUN"
stage() {  # stage NAME COMMAND...: run it, resuming when its run folder has a state
  local name=$1; shift
  local started=$SECONDS
  "$@"
  echo "$name $((SECONDS - started)) s" >> "$RUN/times.txt"
}
resume_flag() { [ -f "$1/latest.state.pt" ] && echo --resume || true; }
done_stage() { grep -q "^$1 " "$RUN/times.txt" 2>/dev/null; }
MODEL=(--set tokenizer.channel_mult=[1,2,2,4] --set tokenizer.base_channels=32
  --set tokenizer.codebook_size=1024 --set transformer.codebook_size=1024
  --set transformer.num_tokens=64 --set transformer.dim=256 --set transformer.depth=6
  --set transformer.heads=8 --set transformer.mlp_dim=1024)

if ! done_stage tokenizer; then
  stage tokenizer $MASKGIT train-tokenizer --config emoji-demo --data data/emoji-mix/train \
    --out "$RUN/tokenizer" --checkpoint-steps 100 $(resume_flag "$RUN/tokenizer") "${MODEL[@]}" \
    --set tokenizer_training.epochs=4 --set tokenizer_training.disc_start=600
fi
if ! done_stage tokenize; then
  stage tokenize $MASKGIT tokenize --tokenizer "$RUN/tokenizer" --data data/emoji-mix/train \
    --out "$RUN/tokens" --hflip
fi
stage transformer $MASKGIT train --config emoji-demo --tokens "$RUN/tokens" --out "$RUN/model" \
  --checkpoint-steps 100 $(resume_flag "$RUN/model") "${MODEL[@]}" \
  --set transformer_training.epochs=11 --set transformer_training.warmup_steps=300
