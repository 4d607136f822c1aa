"""One time budget per frame for GUI-thread work that arrives on its own (results of background analyses, redraws
coalesced to the frame rate), and painting what each piece changed at once.

Qt handles every posted event and due timer of one turn of its event loop together, and a plot's scene repaints
its views when its posted update runs: ten panels whose results land in the same frame drew, and then painted,
in one block that input waited for. Here each piece runs, then its widget paints (`paint_now`), and once
BUDGET_MS of GUI-thread time is spent the rest waits GAP_MS, so input and the next frame's paint go first.
The streamed steps have the same kind of budget in RunController (ui/run_control.py).

    frame_work().post(key, widget, fn)   # fn() at the next slot, newest fn per key, then widget paints
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

from PySide6.QtCore import QCoreApplication, QEvent, QObject, QTimer
from PySide6.QtWidgets import QGraphicsView, QWidget
from shiboken6 import isValid

log = logging.getLogger(__name__)

BUDGET_MS = 8.0  # GUI-thread time per slot; what does not fit waits for the next
GAP_MS = 4  # between two slots: paint and input events go first
BREATHER_MS = 2.0  # a gap this long since the last budgeted work ended: the event loop ran in between


class _Turn:
    """The GUI-thread time budgeted work has spent in the current turn of the event loop, shared by the streamed
    steps (RunController) and this queue: their timers often fall due together, and Qt then runs them back to back
    (as one block for input). A turn ends when the loop had a breather (BREATHER_MS without budgeted work)."""

    def __init__(self):
        self.spent_ms, self._end = 0.0, 0.0

    def begin(self) -> float:
        """Milliseconds already spent in this turn (0 after a breather)."""
        if (time.perf_counter() - self._end) * 1e3 >= BREATHER_MS:
            self.spent_ms = 0.0
        return self.spent_ms

    def left(self, budget_ms: float) -> float | None:
        """What is left of `budget_ms` in this turn; None when other work spent it (wait for a breather). A turn
        nothing has spent in always lets at least one piece run, even with a budget of 0."""
        spent = self.begin()
        return None if 0 < spent >= budget_ms else budget_ms - spent

    def charge(self, ms: float) -> None:
        self.spent_ms += ms
        self._end = time.perf_counter()


turn = _Turn()


class PieceCosts:
    """What the last piece of budgeted work under each key took. A slice used to be its budget plus whatever piece
    came next (8 ms of small pieces, then a 40 ms first draw); a piece expected not to fit in what is left of the
    budget now waits for the next slice, where it goes first (shared by this queue and RunController's steps)."""

    LIMIT = 4096  # keys remembered (those of closed panels are forgotten all at once now and then)

    def __init__(self):
        self._ms: dict[Hashable, float] = {}

    def fits(self, key: Hashable, t0: float, budget_ms: float) -> bool:
        """Whether the piece under `key` is expected to end within `budget_ms` of `t0` (unknown pieces: yes)."""
        return (time.perf_counter() - t0) * 1e3 + self._ms.get(key, 0.0) < budget_ms

    def record(self, key: Hashable, started: float) -> None:
        if len(self._ms) >= self.LIMIT:
            self._ms.clear()
        self._ms[key] = (time.perf_counter() - started) * 1e3


def paint_now(widget: QWidget) -> None:
    """Paint what `widget` (a panel) changed, now: the posted updates of its plots' scenes (a scene repaints its
    views when its update runs) and the window's posted update request (plain widgets).

    What the paint would set off is settled first, so it is part of this one paint and not a second one after the
    slice: sizes that changed (a label's new text) are laid out, and a pyqtgraph scene's auto-ranges and axes, which
    it settles just before it renders, are settled before its update. (A second round for what the paint itself
    changes, an axis whose tick labels grew wider, measured no better: that is rare.)"""
    send = QCoreApplication.sendPostedEvents
    send(None, QEvent.Type.LayoutRequest)
    views = widget.findChildren(QGraphicsView)
    for view in [widget, *views] if isinstance(widget, QGraphicsView) else views:
        scene = view.scene() if view.isVisible() else None
        if scene is None:
            continue
        prepare = getattr(scene, "prepareForPaint", None)
        if prepare is not None:
            prepare()
        send(scene, QEvent.Type.MetaCall)
    window = widget.window()
    if window is not None:
        send(window, QEvent.Type.UpdateRequest)


class FrameWork(QObject):
    def __init__(self, budget_ms: float = BUDGET_MS, gap_ms: int = GAP_MS):
        super().__init__()
        self.budget_ms, self.gap_ms = budget_ms, gap_ms
        self._queue: dict[Hashable, tuple[QWidget | None, Callable[[], None]]] = {}  # oldest first
        self._timer = QTimer(self, singleShot=True)
        self._timer.timeout.connect(self.run_slot)
        self._cost = PieceCosts()
        self.slots_ms: list[float] = []  # GUI-thread time of the latest slots (for tests and the benchmark)

    def post(self, key: Hashable, widget: QWidget | None, fn: Callable[[], None]) -> None:
        """Run `fn` at the next slot (a newer post under `key` replaces it, keeping its place in the queue), then
        paint `widget`."""
        self._queue[key] = (widget, fn)
        if not self._timer.isActive():
            self._timer.start(0)

    def pending(self) -> int:
        return len(self._queue)

    def run_slot(self) -> None:
        """Run queued work oldest first until the budget is spent (at least one piece); the rest at the next slot.
        A piece whose key's last run would not fit in what is left waits for the next slot, where it goes first."""
        self._timer.stop()
        budget = turn.left(self.budget_ms)
        if budget is None:  # the streamed steps spent this turn's budget: after a breather
            self._timer.start(self.gap_ms)
            return
        t0 = time.perf_counter()
        served = False
        while self._queue:
            key = next(iter(self._queue))
            if served and not self._cost.fits(key, t0, budget):
                break  # expected not to fit in what is left: first in the next slot
            t_piece = time.perf_counter()
            widget, fn = self._queue.pop(key)
            if widget is not None and not isValid(widget):  # its panel was closed meanwhile
                continue
            try:
                fn()
            except Exception:  # one failing piece must not stop the others (panels show their own errors)
                log.exception("GUI work failed")
            if widget is not None and isValid(widget):
                paint_now(widget)
            served = True
            self._cost.record(key, t_piece)
            if (time.perf_counter() - t0) * 1e3 >= budget:
                break
        ms = (time.perf_counter() - t0) * 1e3
        turn.charge(ms)
        self.slots_ms = [*self.slots_ms[-255:], ms]
        if self._queue:
            self._timer.start(self.gap_ms)

    def run_all(self) -> None:
        """Everything queued, now (tests, and before a screenshot)."""
        budget, self.budget_ms = self.budget_ms, float("inf")
        try:
            while self._queue:
                self.run_slot()
        finally:
            self.budget_ms = budget


_work: FrameWork | None = None


def frame_work() -> FrameWork:
    """The GUI thread's one queue of budgeted work (created on first use, on the GUI thread)."""
    global _work
    if _work is None:
        _work = FrameWork()
    return _work
