"""Cyclic garbage collection on the GUI thread only, and never a full collection of the whole heap mid-stream.

Python's collector runs on whichever thread happens to allocate; if that is a pool thread or the engine reader
thread and the garbage holds Qt objects (pyqtgraph's menus and items form cycles), Qt destroys widgets off the
GUI thread, which deadlocks or crashes (seen while profiling: a QMenu destroyed in a non-GUI thread waited for a
Qt lock the GUI thread held while it waited for the GIL). So automatic collection is off in the window's process
and the GUI thread collects on a timer (as pyqtgraph's GarbageCollector does).

Unlike that class, a full (generation 2) collection follows Python's own rule (only when the objects that reached
generation 2 since the last one are a quarter more than it had then), and what the window holds for good once
started (the libraries' ~450,000 objects: modules, the tokenizer, the widgets) is moved out of the collector's
sight (`gc.freeze`) once a model is loaded: a full collection then scans what runs created, not the whole heap.
Measured on the 2-core machine: 330 ms per full collection before, under 1 ms after; pyqtgraph's rule (every
tenth generation-1 collection) made that a 330 ms freeze about every 25 s while a run streamed.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QTimer

INTERVAL_MS = 250  # the GUI thread checks this often
GROWTH = 1.25  # a full collection once generation 2 holds this many times what it held after the last one


class Collector:
    def __init__(self, interval_ms: int = INTERVAL_MS):
        self.threshold = gc.get_threshold()  # (700, 10, 10) by default
        gc.disable()
        self.survivors = len(gc.get_objects(2))  # generation 2 after the last full collection (or at start)
        self.full = 0  # full collections done (for tests)
        self.frozen = False
        self.timer = QTimer()
        self.timer.timeout.connect(self.check)
        self.timer.start(interval_ms)

    def check(self) -> None:
        c0, c1, c2 = gc.get_count()
        t0, t1, t2 = self.threshold
        if c0 <= t0:
            return
        if c1 <= t1:
            gc.collect(0)
            return
        if c2 <= t2 or len(gc.get_objects(2)) <= GROWTH * self.survivors:
            gc.collect(1)
            return
        gc.collect(2)
        self.full += 1
        self.survivors = len(gc.get_objects(2))

    def freeze_once(self) -> None:
        """Once per process, when start-up is over (the first model is loaded): move every object alive now out of
        the collector's sight. They stay alive (freed by reference counting as usual); only cycles among them are
        no longer looked for, so this is done once, not for what later runs and windows create."""
        if self.frozen:
            return
        self.frozen = True
        gc.collect(2)
        gc.freeze()
        self.survivors = len(gc.get_objects(2))


_collector: Collector | None = None


def collect_on_gui_thread() -> Collector:
    """Turn automatic collection off in this process and collect on the GUI thread's timer; call on the GUI thread.
    Later calls return the same collector."""
    global _collector
    if _collector is None:
        _collector = Collector()
    return _collector
