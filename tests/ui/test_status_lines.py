"""Text that changes while a run streams never resizes anything: a label whose size followed its text (a status
going from one line to two, a title naming the selected token) moved every plot under it at each change, a
relayout and a full repaint of the panel (20-45 ms of the GUI thread), and a long one-line title widened its
dock's minimum. Status text lives in `StatusLine`s, sized by design."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QEvent, QObject
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QApplication, QWidget

from explorer.core.events import GenerationSettings, RunRequest
from explorer.ui.bench_stalls import _views, raise_view, stream_once
from explorer.ui.panels import REGISTRY
from explorer.ui.widgets.status_line import StatusLine

pytest.importorskip("pytestqt")


def test_a_status_lines_size_does_not_follow_its_text(qtbot):
    line = StatusLine("short", lines=2)
    qtbot.addWidget(line)
    line.resize(200, line.height())
    line.show()
    before = (line.sizeHint(), line.minimumSizeHint(), line.height())
    long = "a much longer status text that wraps onto more lines than two at this width, " * 4
    line.setText(long)
    assert (line.sizeHint(), line.minimumSizeHint(), line.height()) == before
    assert line.minimumSizeHint().width() == 0  # it never widens what holds it
    assert line.toolTip() == long  # the whole text, where it is clipped
    one = StatusLine("x", lines=1)
    qtbot.addWidget(one)
    assert line.height() > one.height() >= one.fontMetrics().lineSpacing()
    font = QFont(line.font())
    font.setPointSizeF(font.pointSizeF() * 2)  # presenter fonts: two lines of the bigger font
    line.setFont(font)
    assert line.height() >= 2 * line.fontMetrics().lineSpacing() > before[2]


def test_a_streamed_step_relays_out_nothing(qtbot, tiny_window):
    """Every panel and tab on screen in turn: a run of 8 steps relays out no more widgets than a run of 2. Text that
    changes at every step (a status, a figure, a caption) used to relay out its panel, the dock's scroll area and the
    main window at each step, even when its size did not change: QLabel.setText always asks for a new layout."""
    w = tiny_window(panels=tuple(REGISTRY))
    app = QApplication.instance()
    relayouts: list[str] = []

    class Count(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt override
            if event.type() == QEvent.LayoutRequest and isinstance(obj, QWidget) and obj.layout() is not None:
                relayouts.append(f"{type(obj).__name__} in {type(obj.parentWidget()).__name__}")
            return False

    def streamed(steps: int) -> list[str]:
        request = RunRequest("The capital of France is", reuse_prefix=False,
                             settings=GenerationSettings(max_new_tokens=steps, stop_at_eos=False))
        relayouts.clear()
        app.installEventFilter(counter)
        try:
            stream_once(app, w, request)
        finally:
            app.removeEventFilter(counter)
        return list(relayouts)

    counter = Count()
    panels = {name: dock.panel for name, dock in w.docks.items() if dock.panel is not None}
    views = _views(w, panels)
    assert len(views) > len(panels)  # the tabs too
    streamed(8)  # first use
    for label, panel, tabs, index in views:
        raise_view(panel, tabs, index)
        streamed(8)  # the view's first run (it was drawn when shown)
        short, long = streamed(2), streamed(8)
        assert len(long) <= len(short), f"{label}: {sorted(long)}"
