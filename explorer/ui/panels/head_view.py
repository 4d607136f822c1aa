"""BertViz-like head view, painted with one QPainter pass: the selected query token on the left,
key tokens on the right, a line to each of its top-k keys per head, width and opacity by weight.

With few tokens both columns list every token; with many, the left column is a window around the
query and the right column lists only the keys that some head attends to (sorted by position).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from ...core.labels import readable_label
from ..theme import SERIES

# Okabe-Ito (colour-blind safe), then three of Tol's, repeated for models with many heads
HEAD_COLOURS = SERIES + ("#882255", "#117733", "#44AA99")
ALL_TOKENS_MAX = 48


@dataclass(frozen=True)
class HeadLines:
    head: int
    keys: np.ndarray  # [k] key positions
    weights: np.ndarray  # [k]


class HeadView(QWidget):
    """`set_data(labels, query, lines)`; `clicked(position)` when a token on the left is clicked."""

    clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMinimumHeight(200)
        self.labels: list[str] = []
        self.query = 0
        self.lines: list[HeadLines] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self._left_rects: list[tuple[QRectF, int]] = []

    def set_data(self, labels: list[str], query: int, lines: list[HeadLines]) -> None:
        self.labels, self.query, self.lines = labels, query, lines
        n = len(labels)
        if n <= ALL_TOKENS_MAX:
            self.left = self.right = list(range(n))
        else:
            lo = max(0, min(query - 12, n - 25))
            self.left = list(range(lo, min(n, lo + 25)))
            keys = set()
            for hl in lines:
                keys.update(int(k) for k in hl.keys)
            keys.add(query)
            self.right = sorted(keys)
        self.update()

    def clear(self) -> None:
        self.set_data([], 0, [])

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt naming)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        pal = self.palette()  # the theme's: light or dark
        text, faint = pal.color(QPalette.Text), pal.color(QPalette.PlaceholderText)
        p.fillRect(self.rect(), pal.color(QPalette.Base))
        p.setPen(text)
        if not self.labels:
            p.drawText(self.rect(), Qt.AlignCenter, "No run yet")
            return
        w, h = self.width(), self.height()
        rows = max(len(self.left), len(self.right), 1)
        step = max(6.0, min(20.0, (h - 24) / rows))
        font = QFont(p.font())
        font.setPointSizeF(max(5.0, min(10.0, step * 0.6)))
        p.setFont(font)
        col_w = min(160.0, w * 0.3)
        lx, rx = 8.0, w - col_w - 8.0
        p.setPen(faint)
        p.drawText(QRectF(lx, 0, col_w, 18), Qt.AlignRight | Qt.AlignVCenter, "query")
        p.drawText(QRectF(rx, 0, col_w, 18), Qt.AlignLeft | Qt.AlignVCenter, "keys")
        ly = {pos: 20 + i * step for i, pos in enumerate(self.left)}
        ry = {pos: 20 + i * step for i, pos in enumerate(self.right)}
        # lines first, under the text
        y0 = ly.get(self.query, 20.0) + step / 2
        for hl in self.lines:
            colour = QColor(HEAD_COLOURS[hl.head % len(HEAD_COLOURS)])
            for key, weight in zip(hl.keys.tolist(), hl.weights.tolist(), strict=True):
                if key not in ry:
                    continue
                colour.setAlphaF(float(min(1.0, 0.15 + 0.85 * weight)))
                pen = QPen(colour)
                pen.setWidthF(0.5 + 6.0 * weight)
                p.setPen(pen)
                p.drawLine(QPointF(lx + col_w + 4, y0), QPointF(rx - 4, ry[key] + step / 2))
        self._left_rects = []
        for pos, y in ly.items():
            rect = QRectF(lx, y, col_w, step)
            if pos == self.query:
                p.fillRect(rect, pal.color(QPalette.Highlight))
            p.setPen(pal.color(QPalette.HighlightedText) if pos == self.query else text)
            p.drawText(rect, Qt.AlignRight | Qt.AlignVCenter, _label(pos, self.labels[pos]))
            self._left_rects.append((rect, pos))
        gap = -1
        for pos, y in ry.items():
            if gap >= 0 and pos > gap + 1:  # positions skipped: a thin dotted rule
                p.setPen(QPen(faint, 1, Qt.DotLine))
                p.drawLine(QPointF(rx, y), QPointF(rx + col_w * 0.5, y))
            p.setPen(text)
            p.drawText(QRectF(rx, y, col_w, step), Qt.AlignLeft | Qt.AlignVCenter, _label(pos, self.labels[pos]))
            gap = pos
        p.end()

    def mousePressEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        for rect, pos in self._left_rects:
            if rect.contains(event.position()):
                self.clicked.emit(pos)
                return


def _label(pos: int, text: str) -> str:
    return f"{pos}: {readable_label(text, 14, spaces=False)}"
