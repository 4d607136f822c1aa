"""GUI part of `lm-explorer bench` (offscreen): per-step redraw of every registered panel, head selection.

Every panel in the registry is built as the app builds it: a dock of the main window in its default
layout at 1600x1000, so panels in background dock tabs defer their work as they do for a user.
A run of N prompt tokens plus a few generated tokens is captured first; its events are
then fed to the panels as the main window does while streaming (Run.apply, selection limits and
step, `panel.on_step`, then Qt event processing, which paints). Background analyses are let
finish between steps, outside the timed region. A panel whose import or construction fails is
skipped and its error recorded; so is a panel that shows an error while drawing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import shiboken6
from PySide6.QtWidgets import QApplication, QWidget

from ..core.events import GenerationSettings, RunRequest
from .bench_stalls import measure_redraw_streaming, measure_stalls, measure_streaming
from .panels import REGISTRY
from .selection import Selection
from .widgets.background import Background

STALL_TOKENS, STALL_STEPS = 29, 16  # the stall figure: a short prompt, as a newcomer types it


def _app() -> QApplication:
    return QApplication.instance() or QApplication([])


def _settle(app: QApplication, rounds: int = 400) -> None:
    """Let background analyses finish and deliver their results, including the chains a result
    starts (the depth panel's progressive logit lens), so no leftover work lands in a timed region."""
    for _ in range(rounds):
        Background.wait_idle()
        app.processEvents()
        if Background.pool().activeThreadCount() == 0:
            return


def build_panels(errors: dict[str, str], model: str | None = None) -> tuple[QWidget, dict]:
    """The main window (default layout, private settings) and its panels; with `model`, that model loaded in
    the window's own engine (for runs the window streams), else no model."""
    import tempfile
    from pathlib import Path

    from .main_window import MainWindow
    from .settings import open_settings

    settings = open_settings(Path(tempfile.mkdtemp(prefix="lmx-bench-")) / "settings.ini")
    window = MainWindow(settings, model=model, autoload=False, autorun=False)
    if model is not None:
        ready: list = []
        window.model_ready.connect(ready.append)
        window.model_failed.connect(lambda message: errors.setdefault("(window model)", message[:300]))
        window.load_model(model)
        end = time.perf_counter() + 300
        while not ready and "(window model)" not in errors and time.perf_counter() < end:
            _app().processEvents()
            time.sleep(0.005)
    panels = {}
    for name, dock in window.docks.items():
        if dock.panel is None:
            errors[name] = (dock.error or "could not be built")[:300]
            continue
        panels[name] = dock.panel
    window.resize(1600, 1000)
    window.show()
    _app().processEvents()
    return window, panels


def _panel_error(panel) -> str | None:
    label = panel._error
    return label.text() if not label.isHidden() and label.text() else None


def measure_size(session, n_tokens: int, steps: int, prompt_of: Callable, errors: dict[str, str]) -> tuple[dict, tuple]:
    """Stream a captured run of `n_tokens` prompt tokens + `steps` decode steps into all panels."""
    app = _app()
    prompt, _ = prompt_of(session.loaded.tokenizer, n_tokens)
    request = RunRequest(prompt=prompt, settings=GenerationSettings(max_new_tokens=steps, stop_at_eos=False),
                         reuse_prefix=False)
    session.forget_cache()
    events = list(session.stream(request))
    run = session.new_run(request)
    window, panels = build_panels(errors)
    selection = window.selection
    info = session.info

    def limits() -> None:
        selection.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=info.n_layers, heads=info.n_heads)

    run.apply(events[0])
    limits()
    first = {}
    for name, panel in panels.items():
        t0 = time.perf_counter()
        panel.set_run(run)
        first[name] = (time.perf_counter() - t0) * 1e3
    app.processEvents()
    _settle(app)
    totals, per_panel, paint = [], {name: [] for name in panels}, {name: [] for name in panels}
    parts = {"selection_ms": [], "on_step_ms": [], "events_paint_ms": []}
    for event in events[1:]:
        run.apply(event)
        t0 = time.perf_counter()
        limits()
        selection.set("step", len(run.steps) - 1)
        t1 = time.perf_counter()
        for name, panel in panels.items():
            t2 = time.perf_counter()
            panel.on_step(run, event)
            per_panel[name].append((time.perf_counter() - t2) * 1e3)
        t3 = time.perf_counter()
        for name, panel in panels.items():  # paint each panel now, to see who costs what
            t5 = time.perf_counter()
            panel.repaint()
            paint[name].append((time.perf_counter() - t5) * 1e3)
        app.processEvents()
        t4 = time.perf_counter()
        for name, panel in panels.items():
            message = _panel_error(panel)
            if message:
                errors.setdefault(name, message[:300])
        totals.append((t4 - t0) * 1e3)
        for key, ms in zip(parts, ((t1 - t0) * 1e3, (t3 - t1) * 1e3, (t4 - t3) * 1e3), strict=True):
            parts[key].append(ms)
        _settle(app)
    for name, panel in panels.items():
        message = _panel_error(panel)
        if message:
            errors.setdefault(name, message[:300])
    result = {
        "tokens": run.n_prompt, "steps": len(totals),
        "median_ms": float(np.median(totals)) if totals else float("nan"),
        "p95_ms": float(np.percentile(totals, 95)) if totals else float("nan"),
        "first_draw_ms": float(sum(first.values())),
        **{f"median_{k}": float(np.median(v)) if v else float("nan") for k, v in parts.items()},
        "per_panel_median_ms": {k: float(np.median(v)) if v else float("nan") for k, v in per_panel.items()},
        "per_panel_paint_median_ms": {k: float(np.median(v)) if v else float("nan") for k, v in paint.items()},
        "per_panel_first_draw_ms": first,
    }
    return result, (window, panels, selection, run)


def measure_head_selection(app: QApplication, panels: dict, selection: Selection, heads: int,
                           repeats: int = 4) -> dict:
    """Time selection.set("head", h) until every panel has reacted and background analyses are shown."""
    times, per_panel_last = [], {}
    for i in range(repeats):
        head = (selection.head + 1 + i) % max(heads, 1)
        if head == selection.head:
            head = (head + 1) % max(heads, 1)
        t0 = time.perf_counter()
        selection.set("head", head)
        app.processEvents()
        _settle(app)
        times.append((time.perf_counter() - t0) * 1e3)
    per_panel_last.update({name: _panel_error(p) for name, p in panels.items() if _panel_error(p)})
    return {"median_ms": float(np.median(times)), "max_ms": float(np.max(times)), "repeats": repeats,
            "errors": per_panel_last}


def measure_gui(session, sizes: tuple[int, ...], steps: int, head_tokens: int, prompt_of: Callable,
                log: Callable[[str], None] = print) -> dict:
    panel_log = logging.getLogger("explorer.ui.panels.base")
    level = panel_log.level
    panel_log.setLevel(logging.CRITICAL)  # failures go to the JSON, not the console
    try:
        return _measure_gui(session, sizes, steps, head_tokens, prompt_of, log)
    finally:
        panel_log.setLevel(level)


def _measure_gui(session, sizes: tuple[int, ...], steps: int, head_tokens: int, prompt_of: Callable,
                 log: Callable[[str], None]) -> dict:
    app = _app()
    errors: dict[str, str] = {}
    out: dict = {"panels": list(REGISTRY), "errors": errors, "sizes": {}, "head_select": None}
    head_done = False
    for n in sorted(set(sizes) | {head_tokens}):
        log(f"  GUI at {n} tokens")
        result, (window, panels, selection, run) = measure_size(session, n, steps, prompt_of, errors)
        if n in sizes:
            out["sizes"][str(n)] = result
        if n == head_tokens and not head_done:
            head = measure_head_selection(app, panels, selection, session.info.n_heads)
            out["head_select"] = {"tokens": run.n_prompt, **head}
            head_done = True
        for name, panel in panels.items():
            panel.set_run(None)
            message = _panel_error(panel)
            if message:
                errors.setdefault(name, f"when cleared: {message}"[:300])
        window.close()
        _settle(app)
        shiboken6.delete(window)  # now, not at interpreter exit
        app.processEvents()
        del window, panels, selection, run
    stall_steps = min(steps, STALL_STEPS)
    log("  GUI-thread stalls per panel and tab, the panels alone (replay of a recorded run, no engine working)")
    window, panels = build_panels(errors)
    out["stalls_replay"] = measure_stalls(session, window, panels, STALL_TOKENS, stall_steps, prompt_of, log=log)
    _close(app, window)
    log("  GUI-thread stalls per panel and tab while the window's engine streams the run")
    window, panels = build_panels(errors, model=session.info.name)
    if window.info is not None:
        short = RunRequest(prompt=prompt_of(session.loaded.tokenizer, STALL_TOKENS)[0], reuse_prefix=False,
                           settings=GenerationSettings(max_new_tokens=stall_steps, stop_at_eos=False))
        out["stalls"] = {"tokens": STALL_TOKENS, "steps": stall_steps,
                         **measure_streaming(window, panels, short, log=log)}
        at = 1024 if 1024 in sizes else max(sizes)
        long = RunRequest(prompt=prompt_of(session.loaded.tokenizer, at)[0], reuse_prefix=False,
                          settings=GenerationSettings(max_new_tokens=steps, stop_at_eos=False))
        log(f"  redraw per step at {at} tokens while the window's engine streams")
        out["redraw_streaming"] = {"tokens": at, "steps": steps, **measure_redraw_streaming(window, long)}
        out["redraw_p95_ms_at_1024"] = out["redraw_streaming"]["p95_ms"]
        out["redraw_reference_tokens"] = at
    else:  # no model in the window: the replay figure stands in
        at = "1024" if "1024" in out["sizes"] else (max(out["sizes"], key=int) if out["sizes"] else None)
        out["redraw_p95_ms_at_1024"] = out["sizes"][at]["p95_ms"] if at else None
        out["redraw_reference_tokens"] = out["sizes"][at]["tokens"] if at else None
    _close(app, window)
    out["panels_measured"] = [name for name in REGISTRY if name not in errors]
    return out


def _close(app: QApplication, window) -> None:
    window.close()
    _settle(app)
    shiboken6.delete(window)  # now, not at interpreter exit
    app.processEvents()
