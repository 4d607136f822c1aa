"""GUI-thread work that arrives on its own (background results, coalesced redraws) runs within a per-slot budget
and paints as it goes (widgets/frame_work.py); redrawing a scatter reuses the symbols pyqtgraph rendered."""

from __future__ import annotations

import time

import pyqtgraph as pg
import pytest
from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QApplication, QGraphicsView, QTabWidget

from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runner import Session
from explorer.ui.panels import REGISTRY, panel_class
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background
from explorer.ui.widgets.frame_work import FrameWork

pytest.importorskip("pytestqt")


class _Paints(QObject):
    def __init__(self):
        super().__init__()
        self.n = 0

    def eventFilter(self, obj, event):  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Paint:
            self.n += 1
        return False


def test_a_served_plot_paints_once_its_auto_range_and_axes_included(qtbot):
    """pyqtgraph settles auto-ranges (and regenerates the axes) just before a scene renders; the updates that asks
    for were a second paint after the slice, outside its budget. paint_now settles them first: nothing is left."""
    from explorer.ui.widgets.frame_work import paint_now

    plot = pg.PlotWidget()
    qtbot.addWidget(plot)
    plot.resize(400, 300)
    plot.show()
    qtbot.waitExposed(plot)
    curve = plot.plot([0, 1], [0, 1])
    qtbot.wait(50)
    paints = _Paints()
    plot.viewport().installEventFilter(paints)
    for top in (10.0, 40.0, 70.0):  # new ranges, tick labels of the same width (wider ones resize the axis)
        curve.setData([0, 1, 2], [0, 1, top])
        paints.n = 0
        paint_now(plot)
        assert paints.n >= 1  # it painted within the slice
        paints.n = 0
        for _ in range(3):
            QApplication.processEvents()
        assert paints.n == 0, f"a second paint after the slice (range up to {top})"


def test_a_slot_runs_work_oldest_first_within_its_budget_newest_per_key_and_paints_each_piece(qtbot):
    plot = pg.PlotWidget()
    qtbot.addWidget(plot)
    plot.resize(300, 200)
    plot.show()
    qtbot.waitExposed(plot)
    qtbot.wait(50)  # its first layout
    curve = plot.plot([0, 1], [0, 1])
    paints = _Paints()
    plot.viewport().installEventFilter(paints)
    work = FrameWork(budget_ms=150.0, gap_ms=1)  # (a budget a first paint on a busy machine stays under)
    ran: list[str] = []

    def piece(name: str, ms: float = 0.0, y: float = 1.0):
        def fn():
            ran.append(name)
            curve.setData([0, 1], [0, y])
            end = time.perf_counter() + ms / 1e3
            while time.perf_counter() < end:
                pass
        return fn

    work.post("a", plot, piece("a-old"))
    work.post("b", plot, piece("b", ms=160.0, y=2.0))  # spends the slot's budget
    work.post("c", plot, piece("c", y=3.0))
    work.post("a", plot, piece("a", y=4.0))  # the newest under "a" replaces the older, in its place
    assert ran == [] and work.pending() == 3  # nothing runs at posting time
    work.run_slot()
    assert ran == ["a", "b"] and paints.n >= 1  # painted within the slot, before it returned
    assert work.pending() == 1
    qtbot.waitUntil(lambda: ran == ["a", "b", "c"], timeout=2000)  # the rest at the next slot
    work.post("gone", plot, piece("gone"))
    plot.deleteLater()  # its panel closed meanwhile: skipped, nothing raised
    qtbot.waitUntil(lambda: work.pending() == 0, timeout=2000)
    assert "gone" not in ran


def test_a_piece_expected_not_to_fit_waits_for_the_next_slot_and_goes_first(qtbot):
    """A slot used to be its budget plus whatever piece came next (8 ms of small pieces, then a 40 ms first draw):
    a piece whose key last took more than what is left now waits, and runs first in the next slot."""
    work = FrameWork(budget_ms=60.0, gap_ms=1)
    ran: list[str] = []

    def piece(name: str, ms: float):
        def fn():
            ran.append(name)
            end = time.perf_counter() + ms / 1e3
            while time.perf_counter() < end:
                pass
        return fn

    work.post("big", None, piece("big", 45.0))  # its cost is learnt
    work.run_slot()
    ran.clear()
    time.sleep(0.01)
    work.post("small", None, piece("small", 30.0))
    work.post("big", None, piece("big", 45.0))
    work.post("tiny", None, piece("tiny", 0.0))
    work.run_slot()
    assert ran == ["small"]  # 30 ms spent + 45 expected > 60: the big piece waits (tiny waits behind it)
    assert work.slots_ms[-1] < 45.0 + 30.0
    time.sleep(0.01)  # (a breather: the next turn of the event loop)
    work.run_slot()
    assert ran == ["small", "big", "tiny"]  # first in the next slot (tiny, expected to fit, after it)


def _views(panel):
    return [v for v in panel.findChildren(QGraphicsView) if v.scene() is not None]


def test_redrawing_a_scatter_reuses_its_rendered_symbols(qtbot, tiny_llama):
    """pyqtgraph renders a symbol per (pen, brush) object: a panel that makes new pens or brushes for every redraw
    renders every point again (and its atlas grows without end). Every panel's scatters, on every tab, redrawn as
    the selection moves, keep the symbols they rendered."""
    session = Session(tiny_llama)
    request = RunRequest("one two three four", settings=GenerationSettings(max_new_tokens=3, stop_at_eos=False))
    events = list(session.stream(request))
    run = session.new_run(request)
    for event in events:
        run.apply(event)
    checked = 0
    for name in REGISTRY:
        sel = Selection()
        sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers,
                       heads=run.info.n_heads)
        panel = panel_class(name)(sel)
        qtbot.addWidget(panel)
        panel.resize(1000, 700)
        panel.show()
        panel.set_run(run)
        tabs = getattr(panel, "tabs", None)
        for index in range(tabs.count() if isinstance(tabs, QTabWidget) else 1):
            if isinstance(tabs, QTabWidget):
                tabs.setCurrentIndex(index)
            for position in (1, 2, 1, 2):  # settle: the first redraws may add the selected point's style
                sel.set("position", position)
                Background.wait_idle()
                QApplication.processEvents()
                panel.frames.flush()
            scatters = [i for v in _views(panel) for i in v.scene().items() if isinstance(i, pg.ScatterPlotItem)]
            before = [len(s.fragmentAtlas) for s in scatters]
            for position in (1, 2, 1, 2, 1, 2):
                sel.set("position", position)
                Background.wait_idle()
                QApplication.processEvents()
                panel.frames.flush()
            after = [len(s.fragmentAtlas) for s in scatters]
            assert after == before, f"{name} tab {index}: a redraw rendered new symbols ({before} -> {after})"
            checked += sum(n > 0 for n in after)
    assert checked >= 2  # (the embeddings views draw scatters)


def test_the_streamed_steps_and_the_queue_share_one_budget_per_turn_of_the_event_loop(qtbot, monkeypatch):
    """Their timers often fall due together and Qt runs them back to back: what one spent in this turn counts for
    the other, and after a breather the budget is whole again."""
    from explorer.ui.widgets import frame_work

    work = FrameWork(budget_ms=8.0, gap_ms=1)
    ran: list[int] = []
    work.post("x", None, lambda: ran.append(1))
    frame_work.turn.begin()
    frame_work.turn.charge(9.0)  # a slice of streamed steps just spent more than the budget
    work.run_slot()
    assert ran == [] and work.pending() == 1  # deferred to after a breather
    time.sleep(2 * frame_work.BREATHER_MS / 1e3)
    work.run_slot()
    assert ran == [1]
    assert frame_work.turn.begin() > 0  # the slot charged the turn in its turn
