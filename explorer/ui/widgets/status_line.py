"""A line of text that changes while a run streams (progress, a figure, a caption), sized by design, not by its text.

A plain QLabel asks for the size of its current text: a status that goes from "computing 3/30 layers…" to a
two-line note, or a title that names the selected token, grows or shrinks the label, which moves every plot under
it (a relayout and a full repaint of the panel, 20-45 ms of the GUI thread at each change while streaming), and a
long single-line title even widened the dock's minimum.

Even a label whose size does not change costs a relayout: QLabel::setText always calls updateGeometry, which
invalidates the layout it sits in, and every layout that activates asks its widget's parent to lay out again, up
through the panel, its dock's scroll area and the main window (a chain of seven relayouts for the attention
overview's progress line, four times a step). So a `StatusLine` is a plain widget that holds its QLabel by hand,
outside any layout: the label's new text ends at the StatusLine, which has no layout to redo, and repaints the
label and nothing else. The StatusLine is always `lines` lines high at any width and asks for `chars` average
characters of width but needs none (`policy` says how it takes width in a row). Text that does not fit is clipped
at the last line, and the whole text is in the tooltip. With `fit=True` (a caption that must be read whole) it is
as many lines high as its text needs at its width, never fewer than `lines`, and asks for a relayout only when
that number of lines changes, not at every new text. With `chars=0` (a figure in a status bar) a one-line
StatusLine is as wide as the widest text it has shown, so it asks for a relayout only when a text is wider.

    status = StatusLine("Computing…", lines=2)
    figure = StatusLine("—", chars=11, policy=QSizePolicy.Preferred)
    caption = StatusLine(lines=2, fit=True)
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QSize, Qt
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget


class StatusLine(QWidget):
    def __init__(self, text: str = "", lines: int = 1, chars: int = 40, parent: QWidget | None = None,
                 policy: QSizePolicy.Policy = QSizePolicy.Ignored, fit: bool = False):
        super().__init__(parent)
        self.lines, self.chars, self.fit = max(1, lines), chars, fit
        self._widest = 0  # (chars=0: the widest text shown so far, in pixels)
        self.label = QLabel(text, self)  # not in a layout: its updateGeometry stops here
        self.label.setWordWrap(self.lines > 1 or fit)
        self.label.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        self.setSizePolicy(policy, QSizePolicy.Fixed)
        self._fit()
        self.setToolTip(text)

    # --- the QLabel calls its users make ------------------------------------------------------------------------
    def text(self) -> str:
        return self.label.text()

    def setText(self, text: str) -> None:  # noqa: N802 - Qt naming
        if text == self.label.text():
            return
        self.label.setText(text)
        self.setToolTip(text)
        if self.fit:
            self._fit()
        if not self.chars and self.label.sizeHint().width() > self._widest:
            self._widest = self.label.sizeHint().width()
            self.updateGeometry()

    def setAlignment(self, alignment) -> None:  # noqa: N802 - Qt naming
        self.label.setAlignment(alignment)

    def setTextFormat(self, fmt) -> None:  # noqa: N802 - Qt naming
        self.label.setTextFormat(fmt)

    def wordWrap(self) -> bool:  # noqa: N802 - Qt naming
        return self.label.wordWrap()

    def __getattr__(self, name: str):  # the label's other settings (text interaction, links...) are the label's
        if name == "label":
            raise AttributeError(name)
        return getattr(self.label, name)

    # --- a size that does not depend on the text ------------------------------------------------------------
    def _height(self) -> int:
        m = self.label.contentsMargins()
        lines = self.fontMetrics().lineSpacing() * self.lines + m.top() + m.bottom() + 2 * self.label.margin()
        if self.fit and self.width() > 0:
            return max(lines, self.label.heightForWidth(self.width()))
        return lines

    def _fit(self) -> None:
        height = self._height()
        if height != self.maximumHeight() or height != self.minimumHeight():  # (a relayout only when it changes)
            self.setFixedHeight(height)
        self.label.setGeometry(self.rect())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        if not self.chars:
            self._widest = max(self._widest, self.label.sizeHint().width())
            return QSize(self._widest, self.minimumHeight())
        return QSize(self.fontMetrics().averageCharWidth() * self.chars, self.minimumHeight())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(0, self.minimumHeight())

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.fit and event.oldSize().width() != event.size().width():
            self._fit()  # a new width wraps the text differently
        self.label.setGeometry(self.rect())

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt override: a theme's font (presenter) re-sizes it
        super().changeEvent(event)
        if event.type() in (QEvent.FontChange, QEvent.StyleChange):
            self._widest = 0
            self._fit()
            self.updateGeometry()
