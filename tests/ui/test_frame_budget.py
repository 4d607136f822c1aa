"""Streamed steps are shown within a per-frame budget: the window serves panels oldest first until the frame's
budget is spent and the rest at the next frame; a panel that missed frames gets all its steps in one call
(`draw_steps`), and the panels that draw incrementally end exactly where drawing every step would have."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6.QtWidgets import QApplication

from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runner import Session
from explorer.ui import run_control
from explorer.ui.panels import REGISTRY, panel_class
from explorer.ui.selection import Selection
from explorer.ui.widgets import frame_work
from explorer.ui.widgets.background import Background

pytest.importorskip("pytestqt")

REQUEST = RunRequest("one two three four", settings=GenerationSettings(max_new_tokens=5, stop_at_eos=False))


def _breather() -> None:
    """Let a turn of the event loop end: budgeted work right before (a slice, a queued result) shares its budget."""
    time.sleep(2 * frame_work.BREATHER_MS / 1e3)


def _settle(panel=None) -> None:
    for _ in range(3):
        Background.wait_idle()
        QApplication.processEvents()
        if panel is not None:
            panel.frames.flush()


def test_a_frame_serves_panels_within_its_budget_and_the_rest_follow(qtbot, tiny_window, tiny_llama, monkeypatch):
    monkeypatch.setattr(run_control, "BUDGET_MS", 0.0)  # a budget spent by the first panel: one panel per frame
    w = tiny_window(panels=("tokens", "next_token", "attention"))
    session = Session(tiny_llama)
    events = list(session.stream(REQUEST))
    runs = w.runs
    on_screen = [d.panel for d in w.docks.values() if not d.panel.off_screen()]
    assert len(on_screen) >= 2
    shown: list[int] = []
    runs.steps_shown.connect(lambda n, _ms: shown.append(n))
    runs.host.active_id = 7  # as if the engine streamed run 7
    runs._run_started(7, session.new_run(REQUEST))
    runs._step(7, events[0])  # a new run: the panels draw it from the next turn of the event loop, a few per frame
    assert all(p._update_skipped for p in on_screen)
    runs._frame.stop()
    _breather()
    runs._next_frame()  # the first frame: its budget is spent by the first panel
    assert sum(not p._update_skipped for p in on_screen) == 1
    qtbot.waitUntil(lambda: not any(p._update_skipped for p in on_screen), timeout=3000)

    for event in events[1:]:  # a burst within one frame
        runs._step(7, event)
    _breather()
    runs.flush_steps(budget_ms=0.0)
    tokens = w.docks["tokens"].panel
    assert w.run.n_tokens == events[-1].start + events[-1].n_new  # the run holds every step at once
    assert shown == [] and w.selection.step == 0  # the selection moves once every panel shows the steps
    waiting = [p for p in on_screen if p in runs._backlog]
    assert 1 <= len(waiting) < len(on_screen)  # one panel was served in this frame, the others wait
    qtbot.waitUntil(lambda: bool(shown), timeout=3000)
    assert shown == [len(events) - 1]
    assert w.selection.step == len(events) - 1 and w.selection.position == w.run.n_tokens - 1
    assert [t.text for t in tokens.view.tokens] == [t.text for t in w.run.tokens]
    assert w.docks["attention"].panel.heatmap.data.shape == (w.run.n_tokens, w.run.n_tokens)
    assert len(runs.lag_ms) >= 1 and all(lag >= 0 for lag in runs.lag_ms)
    assert all(p.error is None for p in on_screen)


def test_the_selection_follows_a_streamed_run_one_panel_per_slice(qtbot, tiny_window, tiny_llama, monkeypatch):
    """Moving the selection to the newest step redraws every panel: all at once that blocked input for 30-50 ms
    per frame. The panels show it as part of their budgeted work, one panel per slice with a spent budget, and
    `steps_shown` comes once every panel shows the newest step selected."""
    monkeypatch.setattr(run_control, "BUDGET_MS", 0.0)
    w = tiny_window(panels=("tokens", "next_token", "attention"))
    session = Session(tiny_llama)
    events = list(session.stream(REQUEST))
    runs = w.runs
    runs.host.active_id = 7
    runs._run_started(7, session.new_run(REQUEST))
    runs._step(7, events[0])
    shown: list[int] = []
    runs.steps_shown.connect(lambda n, _ms: shown.append(n))
    qtbot.waitUntil(lambda: not runs._backlog and runs._frame.isActive() is False, timeout=3000)
    on_screen = [d.panel for d in w.docks.values() if not d.panel.off_screen()]
    assert len(on_screen) >= 2
    slices = [0]
    runs.frame_drawn.connect(lambda _ms: slices.append(slices[-1] + 1))
    drawn: list[tuple[int, object, str]] = []  # (slice, panel, what)
    for panel in on_screen:
        for name in ("draw_selection", "draw_steps", "draw_step"):
            real = getattr(panel, name)
            monkeypatch.setattr(panel, name, lambda *a, real=real, panel=panel, name=name: (
                drawn.append((slices[-1], panel, name if name != "draw_selection" else f"selection:{a[0]}")),
                real(*a)))
    for event in events[1:]:
        runs._step(7, event)
    qtbot.waitUntil(lambda: bool(shown), timeout=5000)
    per_slice: dict[int, set] = {}
    for index, panel, _what in drawn:
        per_slice.setdefault(index, set()).add(panel)
    assert all(len(panels) == 1 for panels in per_slice.values()), per_slice
    assert w.selection.step == len(events) - 1 and w.selection.position == w.run.n_tokens - 1
    for panel in on_screen:  # each drew the steps, then the selection that followed them
        mine = [what for _i, p, what in drawn if p is panel]
        assert "selection:step" in mine and mine.index("selection:step") > max(
            i for i, what in enumerate(mine) if what.startswith("draw_step")), mine
        assert panel.error is None


def _drawn_prefill(qtbot, name: str, session: Session, prefill):
    """(panel, selection, run): panel `name` on screen, showing a new run of its first step (the prefill)."""
    run = session.new_run(REQUEST)
    run.apply(prefill)
    sel = Selection()
    sel.set_limits(steps=1, positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)
    panel = panel_class(name)(sel)
    qtbot.addWidget(panel)
    panel.resize(1000, 700)
    panel.show()
    panel.set_run(run)
    return panel, sel, run


def _fingerprint(name: str, panel) -> object:
    """What a panel shows that its incremental drawing keeps up to date."""
    if name == "tokens":
        return [(t.text, t.id) for t in panel.view.tokens], panel.counts.text()
    if name == "attention":
        return panel.heatmap.data.copy()
    if name == "kv_cache":
        return list(panel._steps), np.array(panel._per_layer)
    if name == "pipeline":
        return panel._groups.copy()
    if name == "depth":
        return panel.table.n, panel.table.done.copy(), np.nan_to_num(panel.table.top_probs.copy(), nan=-1.0)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["tokens", "attention", "kv_cache", "pipeline", "depth"])
def test_several_steps_at_once_draw_what_each_step_in_turn_draws(qtbot, tiny_llama, name, monkeypatch):
    session = Session(tiny_llama)
    events = list(session.stream(REQUEST))
    shown = []
    for batched in (False, True):
        panel, _sel, run = _drawn_prefill(qtbot, name, session, events[0])
        _settle(panel)
        full = []
        monkeypatch.setattr(panel, "draw_run", lambda r, real=panel.draw_run, full=full: (full.append(1), real(r)))
        if batched:  # the window served other panels first: every step at once, the run already holds them
            for event in events[1:]:
                run.apply(event)
            panel.on_steps(run, events[1:])
        else:
            for event in events[1:]:
                run.apply(event)
                panel.on_step(run, event)
        assert full == [], f"{name} redrew the whole run instead of adding the steps"
        _settle(panel)
        assert panel.error is None, panel.error
        shown.append(_fingerprint(name, panel))
    one_by_one, at_once = shown
    if isinstance(one_by_one, np.ndarray):
        np.testing.assert_allclose(at_once, one_by_one, rtol=1e-6, atol=1e-7)
    else:
        for a, b in zip(at_once, one_by_one, strict=True):
            if isinstance(a, np.ndarray):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
            else:
                assert a == b


def test_every_panel_takes_several_steps_at_once(qtbot, tiny_llama):
    session = Session(tiny_llama)
    events = list(session.stream(REQUEST))
    for name in REGISTRY:
        panel, sel, run = _drawn_prefill(qtbot, name, session, events[0])
        for event in events[1:]:
            run.apply(event)
        panel.on_steps(run, events[1:])
        sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)
        sel.set("step", len(run.steps) - 1)
        sel.set("position", run.n_tokens - 1)
        Background.wait_idle()
        QApplication.processEvents()
        assert panel.error is None, f"{name}: {panel.error}"
        assert panel.run is run and panel.full_run is run


def test_a_postponed_panel_draws_when_served_and_an_off_screen_one_when_shown(qtbot, tiny_llama):
    session = Session(tiny_llama)
    run = session.new_run(REQUEST)
    run.apply(list(session.stream(REQUEST))[0])
    sel = Selection()
    sel.set_limits(steps=1, positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)
    panel = panel_class("tokens")(sel)
    qtbot.addWidget(panel)
    panel.defer_when_hidden = True
    panel.resize(800, 400)
    panel.show()
    panel.set_run(run, postpone=True)
    assert panel.view.tokens == [] and panel._update_skipped  # nothing drawn yet
    assert panel.catch_up(on_screen_only=True) and len(panel.view.tokens) == run.n_tokens
    panel.hide()
    panel.set_run(run, postpone=True)
    assert not panel.catch_up(on_screen_only=True)  # off screen: it waits until it is shown
    assert panel._update_skipped
    panel.show()  # (showEvent catches up)
    assert not panel._update_skipped and len(panel.view.tokens) == run.n_tokens


def test_a_frame_paints_the_panels_it_served_within_its_slice(qtbot, tiny_window, tiny_llama):
    """The paint of what a slice drew is part of the slice (and its budget), not a later batch of every panel's
    paint: the served plot's view has painted before the slice returns."""
    from PySide6.QtCore import QEvent, QObject
    from PySide6.QtWidgets import QGraphicsView

    w = tiny_window(panels=("attention",))
    session = Session(tiny_llama)
    events = list(session.stream(REQUEST))
    runs, panel = w.runs, w.docks["attention"].panel
    views = [v for v in panel.findChildren(QGraphicsView) if v.isVisible()]
    assert views
    paints: list[QObject] = []

    class Count(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt override
            if event.type() == QEvent.Type.Paint:
                paints.append(obj)
            return False

    counter = Count()
    for v in views:
        v.viewport().installEventFilter(counter)
    runs.host.active_id = 7
    runs._run_started(7, session.new_run(REQUEST))
    runs._step(7, events[0])
    runs._frame.stop()
    paints.clear()
    _breather()
    runs._next_frame()  # the slice that draws the new run
    assert not panel._update_skipped and paints, "the panel drew but did not paint within its slice"
    qtbot.waitUntil(lambda: not runs._backlog, timeout=3000)
    runs._step(7, events[1])
    runs._frame.stop()
    paints.clear()
    _breather()
    runs._next_frame()  # a streamed step
    assert paints


def test_run_done_comes_once_every_panel_shows_the_last_steps(qtbot, tiny_window, tiny_llama, monkeypatch):
    monkeypatch.setattr(run_control, "BUDGET_MS", 0.0)  # one panel per frame: the end of the run spans frames
    w = tiny_window(panels=("tokens", "next_token", "attention"))
    session = Session(tiny_llama)
    events = list(session.stream(REQUEST))
    runs = w.runs
    on_screen = [d.panel for d in w.docks.values() if not d.panel.off_screen()]
    done: list[str] = []
    w.run_done.connect(done.append)
    runs.host.active_id = 7
    runs.running = True
    runs._run_started(7, session.new_run(REQUEST))
    for event in events:
        runs._step(7, event)
    runs._run_finished(7, "max_tokens")
    assert not runs.running  # the engine is done: Run is available again at once
    assert done == [] and runs._backlog  # the panels still drawing the last steps: not done yet
    qtbot.waitUntil(lambda: bool(done), timeout=3000)
    assert done == ["max_tokens"] and not runs._backlog
    assert all(not p._update_skipped and p.run is w.run for p in on_screen)
    assert w.run.n_tokens == events[-1].start + events[-1].n_new and w.selection.step == len(events) - 1
