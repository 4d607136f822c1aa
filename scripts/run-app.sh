#!/usr/bin/env bash
# Set up if needed, then launch LM Explorer on the default model. Extra arguments go to the app.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/check-qt-libs.sh .venv/bin/python || exit 1
exec .venv/bin/lm-explorer "$@"
