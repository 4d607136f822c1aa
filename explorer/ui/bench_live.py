"""The window against the headless API, both streaming from a real engine process (issue 18 item 2).

For each prompt (a short one and one of about 1,000 tokens) and each round, interleaved: the headless
`EngineClient` runs the request; then each window (default layout, every panel open; one per engine thread
count) runs the same request through its public surface (`run_text`) and the clock stops when the last step
has been applied and painted. Reported per case, best of the rounds: seconds from Run to the last step,
decode tokens/s (steps after the first over the time between the first and the last step), the window's ratio
to headless, and the longest gap of a 5 ms timer on the GUI thread while the window streamed. Neither side reuses
a previous round's prefix cache. (The JSON also keeps a decode rate per side, timed as steps reach the panels: once a
frame in the window, so it reads high when several steps share a frame; the table shows Run to the last step.)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication

from ..core.analysis.jobs import PromptOfLength
from ..core.engine_client import EngineClient
from .bench_stalls import StallMeter

CASES = (("short", 29, 32), ("long", 1000, 16))  # (name, prompt tokens, new tokens)


def _app() -> QApplication:
    return QApplication.instance() or QApplication([])


def _window(model: str, threads: int, folder: Path):
    from .main_window import MainWindow
    from .settings import open_settings

    settings = open_settings(folder / f"settings-{threads}.json")
    settings.setValue("engine", "process")
    settings.setValue("engine_threads", threads)
    w = MainWindow(settings, model=model, autoload=False, autorun=False)
    w.resize(1600, 1000)
    w.show()
    _wait(w.model_ready, lambda: w.load_model(model), 600)
    return w


def _wait(signal, start: Callable[[], None], timeout_s: float) -> list:
    loop, got = QEventLoop(), []

    def done(*args) -> None:
        got.append(args)
        loop.quit()

    signal.connect(done)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    start()
    if not got:
        loop.exec()
    signal.disconnect(done)
    if not got:
        raise TimeoutError(f"no {signal} within {timeout_s} s")
    return got[0]


def _window_run(w, text: str, max_new: int) -> dict:
    app = _app()
    stamps: list[float] = []

    def shown(n: int, _ms: float) -> None:  # steps applied and handed to the panels (once a frame)
        stamps.extend([time.perf_counter()] * n)

    w.runs.steps_shown.connect(shown)
    meter = StallMeter()
    w.prompt_bar.max_new.setValue(max_new)
    w.show_run(None)  # no prefix reuse from the previous round: the headless run recomputes its prompt too
    meter.start()
    t0 = time.perf_counter()
    reason = _wait(w.run_done, lambda: w.run_text(text), 600)[0]
    app.processEvents()  # the last step painted
    t1 = time.perf_counter()
    stall = meter.stop()
    w.runs.steps_shown.disconnect(shown)
    return {"total_s": t1 - t0, "decode_tps": _rate(stamps), "stall_ms": stall, "reason": reason,
            "n_new": w.run.n_generated if w.run is not None else 0}


def _headless_run(client: EngineClient, request) -> dict:
    stamps: list[float] = []
    t0 = time.perf_counter()
    run = client.run(request, on_step=lambda *_: stamps.append(time.perf_counter()))
    return {"total_s": time.perf_counter() - t0, "decode_tps": _rate(stamps), "n_new": run.n_generated}


def _rate(stamps: list[float]) -> float:
    if len(stamps) < 3:
        return 0.0
    return (len(stamps) - 2) / max(1e-9, stamps[-1] - stamps[1])  # decode steps after the first decoded token


def measure_live(model: str, *, rounds: int = 3, threads: tuple[int, ...] = (1, 2), log=print) -> dict:
    """Window vs headless on the engine process, interleaved, best of `rounds`; per engine thread count."""
    _app()
    folder = Path(tempfile.mkdtemp(prefix="lm-explorer-live-"))
    log(f"live: starting the headless engine and {len(threads)} windows")
    client = EngineClient(model, threads=threads[0])
    windows = {t: _window(model, t, folder) for t in threads}
    out: dict = {"threads": list(threads), "cases": {}}
    try:
        for name, n_prompt, n_new in CASES:
            n_prompt = min(n_prompt, client.info.context_length - n_new - 8)  # (a small model's context)
            text, n_tokens = client.submit(PromptOfLength(n_prompt))
            w0 = windows[threads[0]]
            base = w0.prompt_bar.request()
            request = replace(base, prompt=text, chat=False, system=None,
                              settings=replace(base.settings, max_new_tokens=n_new))
            for w in windows.values():
                w.prompt_bar.show_request(request)
            case = {"prompt_tokens": n_tokens, "new_tokens": n_new, "headless": [],
                    **{f"window_{t}": [] for t in threads}}
            for r in range(rounds):
                log(f"live: {name} round {r + 1}/{rounds}")
                case["headless"].append(_headless_run(client, request))
                for t, w in windows.items():
                    case[f"window_{t}"].append(_window_run(w, text, n_new))
            out["cases"][name] = summarize(case, threads)
    finally:
        for w in windows.values():
            w.close()
        client.close()
    return out


def summarize(case: dict, threads) -> dict:
    def best(runs: list[dict]) -> dict:
        return {"total_s": min(r["total_s"] for r in runs), "decode_tps": max(r["decode_tps"] for r in runs),
                "stall_ms": min((r["stall_ms"] for r in runs if "stall_ms" in r), default=None),
                "stall_ms_max": max((r["stall_ms"] for r in runs if "stall_ms" in r), default=None)}

    out = {"prompt_tokens": case["prompt_tokens"], "new_tokens": case["new_tokens"], "headless": best(case["headless"]),
           "generated": sorted({r["n_new"] for runs in case.values() if isinstance(runs, list) for r in runs})}
    for t in threads:
        b = best(case[f"window_{t}"])
        h = out["headless"]
        b["ratio_total"] = h["total_s"] / b["total_s"] if b["total_s"] else 0.0  # >= 0.8: the target
        b["ratio_decode"] = b["decode_tps"] / h["decode_tps"] if h["decode_tps"] else 0.0
        out[f"window_{t}"] = b
    return out


def rows(live: dict) -> list[tuple[str, str, str, str]]:
    """(figure, headless, window, ratio) rows for the README table."""
    out = []
    for name, case in live.get("cases", {}).items():
        h = case["headless"]
        label = f"{case['prompt_tokens']} + {case['new_tokens']} tokens"
        for t in live["threads"]:
            w = case[f"window_{t}"]
            out.append((f"{name} prompt ({label}), Run to last step, s ({t} engine thread{'s' * (t > 1)})",
                        f"{h['total_s']:.2f}", f"{w['total_s']:.2f}", f"{w['ratio_total']:.2f}x"))
            out.append((f"{name} prompt, longest GUI stall while streaming, ms ({t} thread{'s' * (t > 1)}; "
                        "best / worst round)", "", f"{w['stall_ms']:.0f} / {w['stall_ms_max']:.0f}", ""))
    return out


def worst_ratios(live: dict) -> dict:
    """Per case, the window's ratio to headless with the automatic engine thread count (Run to last step)."""
    from ..core.engine_process import default_threads

    auto = default_threads()
    key = f"window_{auto}" if auto in live["threads"] else f"window_{live['threads'][0]}"
    return {name: case[key]["ratio_total"] for name, case in live["cases"].items()}
