#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser test
# (tests/test_web_browser.py drives it with the Python playwright package; never run
# `playwright install`, which downloads its own browser).
set -uo pipefail

CHROMIUM=/usr/bin/chromium

# Cannot install: say why. Exit 1 in CI (CI=true), where the browser test must run; else 0,
# and tests/test_web_browser.py is skipped with the same reason.
give_up() {
  for line in "$@"; do echo "ensure_chromium: $line" >&2; done
  if [ "${CI:-}" = "true" ]; then
    exit 1
  fi
  echo "ensure_chromium: the browser test will be skipped (it fails when CI=true)" >&2
  exit 0
}
if [ -x "$CHROMIUM" ]; then
  echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo present) at $CHROMIUM"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    give_up "$CHROMIUM is missing and this user cannot run apt-get (not root, no" \
      "  password-less sudo). Install it by hand: sudo apt-get install chromium"
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  give_up "$CHROMIUM is missing and there is no apt-get here (not Debian/Ubuntu);" \
    "  install Chromium with your package manager so that $CHROMIUM exists."
fi

echo "ensure_chromium: installing Debian's chromium (apt-get; a minute or two)..."
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; then
  if [ -x "$CHROMIUM" ]; then
    echo "chromium: $("$CHROMIUM" --version 2>/dev/null) at $CHROMIUM"
    exit 0
  fi
  give_up "apt-get installed chromium but $CHROMIUM does not exist"
fi
give_up "could not install chromium with apt-get (offline? no package 'chromium' in the" \
  "  configured sources?). Install it by hand: apt-get install chromium"
