"""Soak test (issue 11, not part of the test suite): long sessions must not leak or fail.

1. N runs back to back in one process: an offscreen MainWindow with every panel, scripted
   (prompts vary, so prefix reuse and fresh prefills alternate; every few runs the selection
   moves and one run is stopped mid-way). Prints RSS, open file descriptors, threads, Qt
   widgets and live Qt wrappers after a warm-up and at the end; fails if RSS grew > 50 MB or a
   handle count grew.
2. A 4,096-token prompt with 256 generated tokens on the default model (core API), timed.

    .venv/bin/python scripts/soak.py [--runs 500] [--model tiny-llama] [--long-model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import collections
import gc
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "The capital of France is",
    "The capital of France is Paris, and the capital of Italy is",
    "Once upon a time there was a small robot who",
    "def fibonacci(n):\n    ",
    "東京は日本の首都です。",
    "User typed <|im_start|> and 👩‍👩‍👧",
]


class ErrorCounter(logging.Handler):
    """Counts ERROR records (a panel's caught exception is logged as one) by their first line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.counts[text[:160]] += 1


ERRORS = ErrorCounter()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def handles() -> dict[str, int]:
    from PySide6.QtWidgets import QApplication

    try:
        from shiboken6 import Shiboken

        wrappers = len(Shiboken.getAllValidWrappers())
    except Exception:  # noqa: BLE001 - optional figure
        wrappers = -1
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": len(os.listdir("/proc/self/task")),
            "py_threads": threading.active_count(), "widgets": len(QApplication.allWidgets()),
            "qt_wrappers": wrappers}


def soak_gui(n_runs: int, model: str, max_new: int) -> bool:
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from explorer.ui.main_window import MainWindow
    from explorer.ui.settings import open_settings
    from explorer.ui.widgets.background import Background

    app = QApplication.instance() or QApplication(["soak"])
    tmp = tempfile.TemporaryDirectory()
    window = MainWindow(open_settings(Path(tmp.name) / "soak.ini"), model=model, autoload=False, autorun=False)
    window.resize(1600, 1000)
    window.show()

    def wait_for(signal, timeout_s: float = 120.0):
        loop, got = QEventLoop(), []

        def done(*args):
            got.append(args)
            loop.quit()

        signal.connect(done)
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec()
        signal.disconnect(done)
        if not got:
            raise TimeoutError(f"no {signal} within {timeout_s} s")
        return got[0]

    window.load_model(model)
    wait_for(window.model_ready)
    print(f"soak: {n_runs} runs on {model}, {len(window.docks)} panels: {', '.join(window.docks)}")
    bar = window.prompt_bar
    reasons: dict[str, int] = {}
    baseline: tuple[float, dict[str, int]] | None = None
    warmup = min(25, max(1, n_runs // 10))
    started = time.perf_counter()
    for i in range(n_runs):
        bar.prompt.setPlainText(PROMPTS[i % len(PROMPTS)] + ("" if i % 3 else f" (run {i})"))
        bar.max_new.setValue(max_new)
        bar.temperature.setValue(0.0 if i % 2 else 0.8)
        stop_this = i % 50 == 49
        if stop_this:
            bar.max_new.setValue(200)
            QTimer.singleShot(30, window.stop)
        window.run_prompt()
        (reason,) = wait_for(window.run_done)
        reasons[reason] = reasons.get(reason, 0) + 1
        if reason == "error":
            print(f"  run {i}: error: {window.banner_label.text()[:200]}")
        if i % 7 == 0 and window.run is not None:  # move the selection like a user would
            window.selection.set("layer", i % window.run.info.n_layers)
            window.selection.set("position", max(0, window.run.n_tokens - 2))
        Background.wait_idle()
        app.processEvents()
        if i + 1 == warmup:
            gc.collect()
            baseline = (rss_mb(), handles())
            print(f"  after {warmup} warm-up runs: RSS {baseline[0]:.1f} MB, {baseline[1]}")
        if (i + 1) % 50 == 0:
            print(f"  run {i + 1}: RSS {rss_mb():.1f} MB, {handles()}, {time.perf_counter() - started:.0f} s",
                  flush=True)
    gc.collect()
    app.processEvents()
    end = (rss_mb(), handles())
    elapsed = time.perf_counter() - started
    print(f"  finished {n_runs} runs in {elapsed:.0f} s ({elapsed / n_runs * 1e3:.0f} ms/run; machine shared, "
          f"timings inflated); finish reasons {reasons}")
    assert baseline is not None
    growth = end[0] - baseline[0]
    grown = {k: (baseline[1][k], end[1][k]) for k in end[1] if end[1][k] > baseline[1][k]}
    print(f"  RSS {baseline[0]:.1f} -> {end[0]:.1f} MB (growth {growth:+.1f} MB, limit 50 MB)")
    print(f"  handles at the end: {end[1]}; grown: {grown or 'none'}")
    window.close()
    window.deleteLater()
    app.processEvents()
    print(f"  errors logged (panels' caught exceptions included): {dict(ERRORS.counts) or 'none'}")
    ok = growth < 50 and not {k for k in grown if k in ("fds", "threads", "py_threads", "widgets")} \
        and reasons.get("error", 0) == 0 and not ERRORS.counts
    print(f"soak GUI: {'PASS' if ok else 'FAIL'}")
    return ok


def long_prompt(model: str, n_prompt: int, n_new: int) -> bool:
    from explorer.core import budget
    from explorer.core.api import run_request
    from explorer.core.events import GenerationSettings, RunRequest
    from explorer.core.models import load_model
    from explorer.core.runner import Session

    session = Session(load_model(model))
    tok = session.loaded.tokenizer
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "a", "curious",
             "student", "watches", "attention", "heads", "light", "up", "across", "layers", "of", "a", "model"]
    text, n = "", 0
    i = 0
    while n < n_prompt:  # grow the text until it has exactly n_prompt tokens (or one short of it)
        chunk = " ".join(words[(i + j) % len(words)] for j in range(64)) + ". "
        i += 64
        if len(tok(text + chunk, add_special_tokens=True)["input_ids"]) > n_prompt:
            break
        text += chunk
        n = len(tok(text, add_special_tokens=True)["input_ids"])
    ids = tok(text, add_special_tokens=True)["input_ids"]
    if len(ids) < n_prompt:  # top up one short word at a time
        while len(tok(text + " a", add_special_tokens=True)["input_ids"]) <= n_prompt:
            text += " a"
    request = RunRequest(text, settings=GenerationSettings(max_new_tokens=n_new, stop_at_eos=False))
    fitted, plan = budget.fit_request(session, request)
    print(f"long prompt: {plan.n_positions - n_new} prompt tokens + {n_new} new on {model}; "
          f"capture estimate {plan.full_bytes / 2**20:.0f} MiB (budget {plan.budget / 2**30:.0f} GiB, "
          f"reduced: {plan.reduced})")
    rss0 = rss_mb()
    started = time.perf_counter()
    first = {}

    def on_step(event, run):
        if event.is_prefill:
            first["prefill_s"] = time.perf_counter() - started

    run = run_request(session, fitted, on_step=on_step)
    elapsed = time.perf_counter() - started
    decode_s = elapsed - first.get("prefill_s", 0.0)
    print(f"  prefill {first.get('prefill_s', 0):.1f} s ({run.n_prompt / first.get('prefill_s', 1):.0f} tok/s), "
          f"decode {run.n_generated} tokens in {decode_s:.1f} s ({run.n_generated / max(decode_s, 1e-9):.1f} tok/s), "
          f"total {elapsed:.1f} s (machine shared, timings inflated)")
    print(f"  finish: {run.finish_reason}, {run.n_tokens} tokens, capture {run.capture_bytes() / 2**20:.0f} MiB "
          f"(estimate {budget.estimate_capture_bytes(run.info, run.n_tokens, fitted.skip_arrays) / 2**20:.0f} MiB), "
          f"RSS {rss0:.0f} -> {rss_mb():.0f} MB")
    attention = run.attention(run.info.n_layers - 1, 0, rows=slice(run.n_tokens - 1, run.n_tokens))
    ok = run.n_generated == n_new and run.n_prompt >= n_prompt - 1 and abs(float(attention.sum()) - 1) < 1e-3
    print(f"long prompt: {'PASS' if ok else 'FAIL'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--model", default="tiny-llama", help="model for the GUI runs (the default model is slow here)")
    p.add_argument("--max-new", type=int, default=4)
    p.add_argument("--long-model", default="smollm2-135m-instruct")
    p.add_argument("--prompt-tokens", type=int, default=4096)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--skip-gui", action="store_true")
    p.add_argument("--skip-long", action="store_true")
    args = p.parse_args(argv)
    from explorer.logfile import setup_logging

    print(f"log file: {setup_logging()}")
    logging.getLogger().addHandler(ERRORS)
    ok = True
    if not args.skip_gui:
        ok &= soak_gui(args.runs, args.model, args.max_new)
    if not args.skip_long:
        ok &= long_prompt(args.long_model, args.prompt_tokens, args.new_tokens)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
