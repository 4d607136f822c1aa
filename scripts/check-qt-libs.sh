#!/usr/bin/env bash
# Check that Qt's X11 (xcb) platform plugin finds every system library it needs, and name the packages to
# install when it does not (otherwise Qt aborts with "could not load the Qt platform plugin xcb").
# Exit 0: fine (or not applicable: not Linux, Wayland or offscreen chosen); 1: libraries missing (listed).
# Usage: scripts/check-qt-libs.sh [path/to/python]   (LDD=... overrides the ldd used, for tests)
set -uo pipefail
PY="${1:-.venv/bin/python}"
LDD="${LDD:-ldd}"
[ "$(uname -s)" = "Linux" ] || exit 0
case "${QT_QPA_PLATFORM:-xcb}" in xcb*) ;; *) exit 0 ;; esac
plugin="${LMX_QXCB_PLUGIN:-}"
if [ -z "$plugin" ]; then
  plugin="$("$PY" -c 'import os, PySide6; print(os.path.join(os.path.dirname(PySide6.__file__), "Qt", "plugins", "platforms", "libqxcb.so"))' 2>/dev/null)" || exit 0
fi
[ -f "$plugin" ] || exit 0
missing="$("$LDD" "$plugin" 2>/dev/null | awk '/not found/ {print $1}' | sort -u)"
[ -z "$missing" ] && exit 0
# library -> Debian/Ubuntu package (Fedora: dnf install xcb-util-cursor xcb-util-wm xcb-util-keysyms ...)
package_for() {
  case "$1" in
    libxcb-cursor.so.*) echo libxcb-cursor0 ;;
    libxcb-icccm.so.*) echo libxcb-icccm4 ;;
    libxcb-keysyms.so.*) echo libxcb-keysyms1 ;;
    libxcb-image.so.*) echo libxcb-image0 ;;
    libxcb-randr.so.*) echo libxcb-randr0 ;;
    libxcb-render-util.so.*) echo libxcb-render-util0 ;;
    libxcb-shape.so.*) echo libxcb-shape0 ;;
    libxcb-xinerama.so.*) echo libxcb-xinerama0 ;;
    libxcb-xkb.so.*) echo libxcb-xkb1 ;;
    libxcb-util.so.*) echo libxcb-util1 ;;
    libxkbcommon-x11.so.*) echo libxkbcommon-x11-0 ;;
    libxkbcommon.so.*) echo libxkbcommon0 ;;
    libX11-xcb.so.*) echo libx11-xcb1 ;;
    libEGL.so.*) echo libegl1 ;;
    libGL.so.*|libOpenGL.so.*|libGLX.so.*) echo libgl1 ;;
    libfontconfig.so.*) echo libfontconfig1 ;;
    libfreetype.so.*) echo libfreetype6 ;;
    libdbus-1.so.*) echo libdbus-1-3 ;;
    *) echo "(the package that provides $1)" ;;
  esac
}
packages="$(for lib in $missing; do package_for "$lib"; done | sort -u | tr '\n' ' ')"
{
  echo "LM Explorer cannot open a window: Qt's X11 plugin needs system libraries that are not installed:"
  for lib in $missing; do echo "  $lib"; done
  echo "Install them (Debian/Ubuntu):"
  echo "  sudo apt-get install ${packages% }"
  echo "Or run without a window: QT_QPA_PLATFORM=offscreen (screenshots, benchmarks), or use Wayland."
} >&2
exit 1
