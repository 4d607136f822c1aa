"""scripts/check-qt-libs.sh names the system packages Qt's xcb plugin lacks, and is silent when none are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check-qt-libs.sh"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the check is for Linux")


def _run(tmp_path: Path, ldd_output: str, platform: str = "xcb") -> subprocess.CompletedProcess:
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"\x7fELF")
    ldd = tmp_path / "fake-ldd"
    ldd.write_text(f"#!/bin/sh\ncat <<'OUT'\n{ldd_output}\nOUT\n")
    ldd.chmod(0o755)
    env = {**os.environ, "LDD": str(ldd), "LMX_QXCB_PLUGIN": str(plugin), "QT_QPA_PLATFORM": platform}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_missing_libraries_are_named_with_their_packages(tmp_path):
    out = _run(tmp_path, "\tlibxcb-cursor.so.0 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"
                         "\tlibxkbcommon-x11.so.0 => not found")
    assert out.returncode == 1
    assert "libxcb-cursor.so.0" in out.stderr and "libc.so.6" not in out.stderr
    assert "sudo apt-get install libxcb-cursor0 libxkbcommon-x11-0" in out.stderr


def test_nothing_missing_or_offscreen_passes(tmp_path):
    assert _run(tmp_path, "\tlibc.so.6 => /lib/libc.so.6 (0x1)").returncode == 0
    assert _run(tmp_path, "\tlibxcb-cursor.so.0 => not found", platform="offscreen").returncode == 0


def test_run_app_checks_before_launching():
    text = (ROOT / "scripts" / "run-app.sh").read_text()
    assert text.index("check-qt-libs.sh") < text.index("exec ")
