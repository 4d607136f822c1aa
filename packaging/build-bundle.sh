#!/usr/bin/env bash
# Build the one-folder bundle with PyInstaller and smoke-test it: start offscreen, run a prompt on a
# tiny model, save a screenshot, exit 0. Prints the bundle's size and the build time.
# Not part of the test suite (it takes minutes); tests/test_packaging.py checks this script and the spec.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install -q --disable-pip-version-check "pyinstaller>=6.10"
start=$(date +%s)
.venv/bin/pyinstaller --noconfirm --clean --distpath build/bundle --workpath build/pyinstaller packaging/lm-explorer.spec
took=$(( $(date +%s) - start ))
bundle=build/bundle/lm-explorer
size=$(du -sh "$bundle" | cut -f1)
echo "bundle: $bundle ($size), built in ${took} s"
shot=build/bundle-smoke.png
QT_QPA_PLATFORM=offscreen "$bundle/lm-explorer" --version
QT_QPA_PLATFORM=offscreen "$bundle/lm-explorer" --model tiny-llama --prompt "Hello bundle" \
  --max-new-tokens 4 --screenshot "$shot"
test -s "$shot"
echo "smoke test passed: $shot"
