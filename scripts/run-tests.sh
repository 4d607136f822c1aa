#!/usr/bin/env bash
# Set up if needed, then run the linter and the whole test suite (offscreen Qt, no GPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check explorer tests scripts benchmarks
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
