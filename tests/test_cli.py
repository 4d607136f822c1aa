"""The headless command line, run as a user would: `python -m explorer ...` in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import explorer
from explorer.core.runfile import load_run

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "QT_QPA_PLATFORM": "offscreen"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "explorer", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def test_version(tmp_path):
    out = _cli("--version", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"lm-explorer {explorer.__version__}"


def test_capture_then_inspect(tmp_path):
    target = tmp_path / "x.npz"
    out = _cli("capture", "--model", "tiny-llama", "--prompt", "The capital of France is", "--max-new-tokens", "4",
               "--out", str(target), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "saved" in out.stdout and "capture:" in out.stderr and "load [100.0%]" in out.stderr
    run = load_run(target)
    assert run.info.name == "tiny-llama" and run.n_generated == 4 and run.text.startswith("The capital of France is")

    shown = _cli("inspect", str(target), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    table = dict(line.split(None, 1) for line in shown.stdout.splitlines() if line.strip() and "  " in line)
    assert table["model"].strip() == "tiny-llama"
    assert f"{run.n_tokens} ({run.n_prompt} prompt, 4 generated)" in shown.stdout
    assert "KV cache" in shown.stdout and "decode" in shown.stdout


def test_chat_capture(tmp_path):
    target = tmp_path / "chat.npz"
    out = _cli("capture", "--model", "tiny-llama", "--chat", "--system", "Be brief.", "--prompt", "Hi",
               "--max-new-tokens", "2", "--temperature", "0.8", "--seed", "3", "--out", str(target), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = load_run(target)
    assert run.request.chat and run.request.system == "Be brief." and run.request.settings.seed == 3
    assert run.text.startswith("<|im_start|>system\nBe brief.")


def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    out = _cli("inspect", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    out = _cli("capture", "--model", "tiny-llama", "--prompt", "", "--out", str(tmp_path / "z.npz"), cwd=tmp_path)
    assert out.returncode == 2 and "empty" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "z.npz").exists()
