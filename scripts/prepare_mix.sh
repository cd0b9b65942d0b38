#!/usr/bin/env bash
# The embedded default's training data: five emoji styles from npm (Twitter held out, OpenMoji
# never used), split by `maskgit prepare-data emoji` (tone siblings in one split).
# Usage: bash scripts/prepare_mix.sh [OUT] (default data/emoji-mix); the packages go to
# data/npm/. Needs npm and the `data` extra (cairosvg, emoji). See docs/model-card.md.
set -euo pipefail
OUT=${1:-data/emoji-mix}
MASKGIT=${MASKGIT:-maskgit}
mkdir -p data/npm
cd data/npm
unpack() {  # unpack PACKAGE@VERSION FOLDER
  [ -d "$2" ] && return
  local tgz
  tgz=$(npm pack --silent "$1")
  mkdir -p "$2" && tar xzf "$tgz" -C "$2" --strip-components 1 && rm "$tgz"
}
unpack emoji-datasource-google@16.0.0 google
unpack @iconify-json/fluent-emoji-flat@1.2.6 fluent
unpack @iconify-json/noto-v1@1.2.5 noto-v1
unpack @iconify-json/fxemoji@1.2.2 fxemoji
unpack @iconify-json/streamline-emojis@1.2.4 streamline
cd - > /dev/null
$MASKGIT prepare-data emoji --out "$OUT" --source data/npm/google data/npm/fluent \
  data/npm/noto-v1 data/npm/fxemoji data/npm/streamline
