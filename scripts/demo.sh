#!/usr/bin/env bash
# Set up a fresh machine and run the main job: the FIRST pipeline on the embedded default
# task (CPU, no downloads, a few minutes), then the dashboard on http://localhost:8501.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
python -m first_core demo "$@"
