"""A line of text that changes while a run streams (progress, a figure, a caption), sized by design, not by its text.

A plain QLabel asks for the size of its current text: a status that goes from "computing 3/30 layers…" to a
two-line note, or a title that names the selected token, grows or shrinks the label, which moves every plot under
it (a relayout and a full repaint of the panel, 20-45 ms of the GUI thread at each change while streaming), and a
long single-line title even widened the dock's minimum. A `StatusLine` is always `lines` lines high at any width
and asks for `chars` average characters of width but needs none: a new text repaints the label and nothing else.
Text that does not fit is clipped at the last line, and the whole text is in the tooltip.

    status = StatusLine("Computing…", lines=2)
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QSize
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget


class StatusLine(QLabel):
    def __init__(self, text: str = "", lines: int = 1, chars: int = 40, parent: QWidget | None = None):
        super().__init__(text, parent)
        self.lines, self.chars = max(1, lines), chars
        self.setWordWrap(self.lines > 1)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self._fit()
        self.setToolTip(text)

    def _height(self) -> int:
        m = self.contentsMargins()
        return self.fontMetrics().lineSpacing() * self.lines + m.top() + m.bottom() + 2 * self.margin()

    def _fit(self) -> None:
        self.setFixedHeight(self._height())

    def setText(self, text: str) -> None:  # noqa: N802 - Qt override
        if text == self.text():
            return
        super().setText(text)
        self.setToolTip(text)

    # --- a size that does not depend on the text ------------------------------------------------------------
    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(self.fontMetrics().averageCharWidth() * self.chars, self._height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(0, self._height())

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt override
        return False

    def heightForWidth(self, _width: int) -> int:  # noqa: N802 - Qt override
        return self._height()

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt override: a theme's font (presenter) re-sizes it
        super().changeEvent(event)
        if event.type() in (QEvent.FontChange, QEvent.StyleChange):
            self._fit()
