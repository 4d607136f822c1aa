"""GUI-thread stalls per panel and tab, and the redraw per step, while a run streams (part of `lm-explorer bench`).

A QTimer ticks every 5 ms on the GUI thread and records the gaps between its ticks: any work that
blocks the GUI thread (a panel's per-step drawing, a background result landing, a table filling
after the run, the engine holding the interpreter) shows up as a long gap. For each panel (its dock
raised, so it draws) and each tab of a panel's `tabs` widget (Attention > Head statistics among them)
two figures are taken:

    streaming  the real window runs the prompt: the engine streams the steps and the window shows them
               as it does for a user (RunController, steps coalesced to the frame rate); the meter runs
               from Run until the background analyses the run started are done and shown
    replay     the panels alone: a recorded run's events are fed to the panels with the event loop
               running between steps and no engine working, so what remains is the panels' own cost

The redraw per frame at 1,024 tokens is measured while streaming too (after one run of the same prompt, whose
frames are reported on their own as the first run at that length): for every frame that shows steps, the
panels' updates (RunController.frame_drawn: the window serves panels within a per-frame budget and the rest at
the next frame) plus the paint that follows; and the lag from a step's arrival until
every panel shows it (RunController.lag_ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QElapsedTimer, QTimer
from PySide6.QtWidgets import QApplication, QTabWidget

from ..core.events import GenerationSettings, RunRequest
from .widgets.background import Background

TICK_MS = 5


class StallMeter:
    """Longest gap between ticks of a 5 ms timer on the GUI thread while `running`."""

    def __init__(self, interval_ms: int = TICK_MS):
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.clock = QElapsedTimer()
        self.longest_ms = 0.0
        self._last = 0

    def start(self) -> None:
        self.longest_ms, self._last = 0.0, 0
        self.clock.start()
        self.timer.start()

    def _tick(self) -> None:
        now = self.clock.elapsed()
        self.longest_ms = max(self.longest_ms, float(now - self._last))
        self._last = now

    def stop(self) -> float:
        self._tick()  # a stall at the very end counts too
        self.timer.stop()
        return self.longest_ms


def pump(app: QApplication, ms: float) -> None:
    """Run the event loop for `ms` milliseconds (the time between two decode steps)."""
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)


def drain(app: QApplication, limit_s: float = 600.0) -> None:
    """Run the event loop until background analyses are done and their results are shown."""
    end = time.perf_counter() + limit_s
    quiet = 0
    while time.perf_counter() < end and quiet < 20:
        app.processEvents()
        busy = Background.pool().activeThreadCount() > 0
        quiet = 0 if busy else quiet + 1
        time.sleep(0.005)


def _views(window, panels: dict) -> list[tuple[str, object, QTabWidget | None, int]]:
    """(label, panel, tab widget or None, tab index) for every panel and every tab of its `tabs`."""
    out = []
    for name, panel in panels.items():
        tabs = getattr(panel, "tabs", None)
        if isinstance(tabs, QTabWidget) and tabs.count() > 1:
            out += [(f"{name} > {tabs.tabText(i).replace('&&', '&')}", panel, tabs, i) for i in range(tabs.count())]
        else:
            out.append((name, panel, None, 0))
    return out


def raise_view(panel, tabs: QTabWidget | None, index: int) -> None:
    """Put a panel (and one of its tabs) on screen, as a user clicking its dock tab would."""
    dock = panel.parentWidget()
    while dock is not None and not hasattr(dock, "setFloating"):
        dock = dock.parentWidget()
    if dock is not None:
        dock.show()
        dock.raise_()
    if tabs is not None:
        tabs.setCurrentIndex(index)


class RedrawMeter:
    """Per frame that shows streamed steps: the panels' updates plus the paint that follows, in ms."""

    def __init__(self, window):
        self.times: list[float] = []
        self._app = QApplication.instance()
        window.runs.frame_drawn.connect(self._shown)

    def _shown(self, update_ms: float) -> None:
        t0 = time.perf_counter()
        self._app.sendPostedEvents()  # the paint the updates asked for (update requests are posted events)
        self.times.append(update_ms + (time.perf_counter() - t0) * 1e3)


def stream_once(app: QApplication, window, request: RunRequest, limit_s: float = 600.0) -> str:
    """Run `request` in the window and process events until it has finished and background work is shown."""
    done: list[str] = []
    window.run_done.connect(done.append)
    try:
        window.submit(request)
        end = time.perf_counter() + limit_s
        while not done and time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)
        drain(app)
    finally:
        window.run_done.disconnect(done.append)
    return done[0] if done else "timed out"


def measure_streaming(window, panels: dict, request: RunRequest, log: Callable[[str], None] = print) -> dict:
    """{"per_view_ms": {label: longest stall}, "longest_ms", "worst"}: the window streams `request` once per view."""
    app = QApplication.instance()
    meter = StallMeter()
    per_view: dict[str, float] = {}
    stream_once(app, window, request)  # warm-up: first-use costs (fonts, caches) are not a stall of a panel
    for label, panel, tabs, index in _views(window, panels):
        raise_view(panel, tabs, index)
        drain(app)
        meter.start()
        reason = stream_once(app, window, request)
        per_view[label] = meter.stop()
        log(f"    longest GUI stall with {label} showing, engine streaming: {per_view[label]:.0f} ms ({reason})")
    worst = max(per_view, key=per_view.get) if per_view else None
    return {"per_view_ms": per_view, "longest_ms": per_view[worst] if worst else None, "worst": worst,
            "tick_ms": TICK_MS}


def measure_redraw_streaming(window, request: RunRequest, repeats: int = 2, warmup: int = 1) -> dict:
    """Redraw per frame that shows streamed steps (panel updates + paint), over `repeats` runs in the default layout,
    after `warmup` runs of the same request whose frames are reported on their own ("first_run": what a first run
    at this length costs once, its token texts measured and their glyphs rendered for the first time)."""
    app = QApplication.instance()
    window.reset_layout()
    meter = RedrawMeter(window)
    lags = window.runs.lag_ms
    first: list[float] = []
    for i in range(warmup + repeats):
        if i == warmup:
            first, meter.times = meter.times, []
            lags.clear()
        stream_once(app, window, request)
    t = meter.times or [float("nan")]
    lag = list(lags) or [float("nan")]
    out = {"frames": len(meter.times), "median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
           "max_ms": float(max(t)), "lag_median_ms": float(np.median(lag)),
           "lag_p95_ms": float(np.percentile(lag, 95)), "warmup_runs": warmup}
    if first:
        out["first_run"] = {"frames": len(first), "median_ms": float(np.median(first)),
                            "p95_ms": float(np.percentile(first, 95)), "max_ms": float(max(first))}
    return out


def measure_stalls(session, window, panels: dict, n_tokens: int, steps: int, prompt_of: Callable,
                   step_ms: float = 20.0, log: Callable[[str], None] = print) -> dict:
    """Replay (the panels' own cost, no engine working): {"per_view_ms": {label: longest stall}, "longest_ms",
    "worst"} for a recorded run of `n_tokens` + `steps`."""
    app = QApplication.instance()
    prompt, _ = prompt_of(session.loaded.tokenizer, n_tokens)
    request = RunRequest(prompt=prompt, settings=GenerationSettings(max_new_tokens=steps, stop_at_eos=False),
                         reuse_prefix=False)
    session.forget_cache()
    events = list(session.stream(request))
    info, selection = session.info, window.selection
    meter = StallMeter()
    per_view: dict[str, float] = {}
    for label, panel, tabs, index in _views(window, panels):
        raise_view(panel, tabs, index)
        run = session.new_run(request)
        run.apply(events[0])
        selection.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=info.n_layers, heads=info.n_heads)
        for p in panels.values():
            p.set_run(run)
        drain(app)
        meter.start()
        for event in events[1:]:
            run.apply(event)
            selection.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=info.n_layers,
                                 heads=info.n_heads)
            selection.set("step", len(run.steps) - 1)
            for p in panels.values():
                p.on_step(run, event)
            pump(app, step_ms)
        drain(app)
        per_view[label] = meter.stop()
        log(f"    longest GUI stall with {label} showing, replay: {per_view[label]:.0f} ms")
    worst = max(per_view, key=per_view.get) if per_view else None
    return {"tokens": n_tokens, "steps": steps, "tick_ms": TICK_MS, "per_view_ms": per_view,
            "longest_ms": per_view[worst] if worst else None, "worst": worst}
