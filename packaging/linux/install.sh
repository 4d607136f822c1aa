#!/usr/bin/env bash
# Install (or with --uninstall, remove) LM Explorer's desktop entry, AppStream metainfo and icons
# into the user's share folders. The `lm-explorer` command itself comes from pip (or the bundle).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
assets=$(cd "$here/../../assets" && pwd)
share=${XDG_DATA_HOME:-$HOME/.local/share}
app=io.github.lm_explorer.LMExplorer
targets=(
  "$share/applications/$app.desktop"
  "$share/metainfo/$app.metainfo.xml"
  "$share/icons/hicolor/scalable/apps/$app.svg"
)
for size in 16 32 48 64 128 256; do
  targets+=("$share/icons/hicolor/${size}x${size}/apps/$app.png")
done
if [ "${1:-}" = "--uninstall" ]; then
  rm -f "${targets[@]}"
  echo "removed LM Explorer's desktop integration from $share"
  exit 0
fi
install -Dm644 "$here/$app.desktop" "$share/applications/$app.desktop"
install -Dm644 "$here/$app.metainfo.xml" "$share/metainfo/$app.metainfo.xml"
install -Dm644 "$assets/icon.svg" "$share/icons/hicolor/scalable/apps/$app.svg"
for size in 16 32 48 64 128 256; do
  install -Dm644 "$assets/icon-$size.png" "$share/icons/hicolor/${size}x${size}/apps/$app.png"
done
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$share/applications" || true
echo "installed LM Explorer's desktop entry, metainfo and icons into $share"
