"""The wheel installs and works; the PyInstaller spec and bundle script agree with the package."""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (path,) = out.glob("lm_explorer-*.whl")
    return path


def test_wheel_holds_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("explorer/data/catalogue.toml", "explorer/data/icon.svg", "explorer/data/icon.png",
                     "explorer/core/runner.py", "explorer/ui/panels/base.py"):
        assert required in names, required
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "lm-explorer = explorer.__main__:main" in entry_points


def test_wheel_installs_into_fresh_venv_and_runs(wheel, tmp_path):
    """A fresh venv that reuses this environment's torch (a .pth link, like --system-site-packages)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    site.mkdir(parents=True, exist_ok=True)
    (site / "_reuse_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--disable-pip-version-check", str(wheel)], check=True, timeout=300)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "LM_EXPLORER_CACHE": str(tmp_path / "cache")}
    exe = venv / "bin" / "lm-explorer"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True, env=env,
                             cwd=tmp_path, timeout=120)
    assert version.stdout.strip() == "lm-explorer 0.1.0"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import explorer; print(explorer.__file__)"],
                           capture_output=True, text=True, check=True, env=env, cwd=tmp_path, timeout=120)
    assert str(venv) in where.stdout, "the installed wheel, not the source tree, must be imported"
    out = tmp_path / "run.npz"
    subprocess.run([str(exe), "capture", "--model", "tiny-llama", "--prompt", "Hello from a wheel",
                    "--max-new-tokens", "3", "--out", str(out)], check=True, env=env, cwd=tmp_path, timeout=300,
                   capture_output=True)
    assert out.stat().st_size > 0
    inspect = subprocess.run([str(exe), "inspect", str(out)], capture_output=True, text=True, check=True, env=env,
                             cwd=tmp_path, timeout=120)
    assert "tiny-llama" in inspect.stdout and "3 generated" in inspect.stdout


def test_bundle_spec_matches_package():
    spec = (ROOT / "packaging" / "lm-explorer.spec").read_text()
    tree = ast.parse(spec)
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    entry = ROOT / "packaging" / "bundle_entry.py"
    assert "bundle_entry.py" in strings and entry.is_file()
    assert "from explorer.__main__ import main" in entry.read_text()
    # the spec bundles explorer/data, whose every entry must resolve to a real file
    assert "explorer" in strings and "data" in strings
    data = sorted((ROOT / "explorer" / "data").iterdir())
    assert {p.name for p in data} >= {"catalogue.toml", "kv_configs.toml", "icon.svg", "icon.png"}
    assert all(p.resolve().is_file() for p in data)
    script = (ROOT / "packaging" / "build-bundle.sh").read_text()
    assert "packaging/lm-explorer.spec" in script and "--screenshot" in script and "tiny-llama" in script
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lm-explorer"] == "explorer.__main__:main"


def test_desktop_entry_and_metainfo():
    desktop = configparser.ConfigParser(interpolation=None)
    desktop.optionxform = str
    desktop.read(ROOT / "packaging" / "linux" / "io.github.lm_explorer.LMExplorer.desktop")
    entry = desktop["Desktop Entry"]
    assert entry["Exec"].split()[0] == "lm-explorer" and entry["Type"] == "Application"
    import xml.etree.ElementTree as ET

    meta = ET.parse(ROOT / "packaging" / "linux" / "io.github.lm_explorer.LMExplorer.metainfo.xml").getroot()
    assert meta.findtext("id") == "io.github.lm_explorer.LMExplorer"
    assert meta.find("launchable").text == "io.github.lm_explorer.LMExplorer.desktop"


def test_linux_install_script_installs_and_removes(tmp_path):
    share = tmp_path / "share"
    env = {**os.environ, "XDG_DATA_HOME": str(share)}
    script = ROOT / "packaging" / "linux" / "install.sh"
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, timeout=60)
    assert (share / "applications" / "io.github.lm_explorer.LMExplorer.desktop").is_file()
    assert (share / "icons" / "hicolor" / "256x256" / "apps" / "io.github.lm_explorer.LMExplorer.png").is_file()
    subprocess.run(["bash", str(script), "--uninstall"], check=True, env=env, capture_output=True, timeout=60)
    assert not any(p.is_file() for p in share.rglob("*"))
