"""Text that changes while a run streams never resizes anything: a label whose size followed its text (a status
going from one line to two, a title naming the selected token) moved every plot under it at each change, a
relayout and a full repaint of the panel (20-45 ms of the GUI thread), and a long one-line title widened its
dock's minimum. Status text lives in `StatusLine`s, sized by design."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QApplication, QLabel, QStatusBar

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


def test_no_label_in_a_panel_changes_size_while_a_run_streams(qtbot, tiny_window, monkeypatch):
    """Every panel and tab on screen in turn, a run streamed as the window does: a label inside a panel whose
    text changes keeps its size hint (height for a wrapped one at its width, minimum width for a one-line one)."""
    w = tiny_window(panels=tuple(REGISTRY))
    app = QApplication.instance()
    request = RunRequest("The capital of France is", reuse_prefix=False,
                         settings=GenerationSettings(max_new_tokens=4, stop_at_eos=False))
    changed: list[str] = []
    real = QLabel.setText

    def size(label):
        if label.wordWrap():
            return label.heightForWidth(label.width())
        return label.minimumSizeHint().width(), label.sizeHint().height()

    def spy(label, text):
        watched = label.isVisible() and not isinstance(label.parentWidget(), QStatusBar)
        before = size(label) if watched else None
        real(label, text)
        if watched and size(label) != before:
            changed.append(f"{type(label.parentWidget()).__name__}: {text[:50]!r}")

    panels = {name: dock.panel for name, dock in w.docks.items() if dock.panel is not None}
    stream_once(app, w, request)  # first use
    views = _views(w, panels)
    assert len(views) > len(panels)  # the tabs too
    for label, panel, tabs, index in views:
        raise_view(panel, tabs, index)
        stream_once(app, w, request)  # the view's first run (it was drawn when shown)
        monkeypatch.setattr(QLabel, "setText", spy)
        stream_once(app, w, request)
        monkeypatch.setattr(QLabel, "setText", real)
        assert not changed, f"{label}: {changed}"
