"""TokenView: a run's text drawn as token boxes that wrap like text, in one custom-painted widget.

No widget per token: a cached line layout (QFontMetrics advances) is painted line by line, only
the visible lines; appending streamed tokens lays out only the new ones. Whitespace is made
visible without moving the text: a space keeps its width and gets a faint dot, a tab a faint
arrow, a newline a faint ↵ and then a real line break. Byte-fallback pieces (a token holding only
part of a character) and inserted special tokens, which own no characters, show a small label.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PySide6.QtCore import QEvent, QPoint, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QScrollArea, QSizePolicy, QToolTip, QWidget

from ...core.events import Token
from ...core.labels import NEWLINE, SPACE, TAB

PAD = 2  # horizontal padding inside a token box
GAP = 2  # space between two token boxes
MARGIN = 6
WS_GLYPH = {" ": SPACE, "\t": TAB, "\u00a0": "°"}  # the glyphs every token label uses (core.labels)
NEWLINE_GLYPH = NEWLINE
FAINT = QColor(110, 110, 110, 190)


@dataclass(frozen=True, slots=True)
class Run_:
    """A piece of one fragment: `text` drawn at `dx`; whitespace runs are drawn as faint glyphs."""

    dx: int
    text: str
    whitespace: bool


@dataclass(frozen=True, slots=True)
class Fragment:
    """The part of one token that sits on one line; `start:end` is the text it draws."""

    token: int
    line: int
    x: int
    width: int
    start: int
    end: int
    runs: tuple[Run_, ...]
    label: bool = False  # a label for a token that owns no characters (bytes / inserted special)


class TokenView(QWidget):
    """Draws tokens; `hovered(index)` (-1 when off a token) and `clicked(index)` report the token."""

    hovered = Signal(int)
    clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self.tooltip_for: Callable[[int], str] | None = None
        self._take_font()
        self.show_ids = False
        self.tokens: list[Token] = []
        self._labels: list[str | None] = []  # label for tokens without characters
        self._fill: list[QColor] = []
        self._outline: list[QColor | None] = []
        self.selected = -1
        self.hover_index = -1
        self._clear_layout()

    # --- data ---------------------------------------------------------------------------------
    def set_tokens(self, tokens: Sequence[Token], fill: Sequence[QColor], outline: Sequence[QColor | None],
                   labels: Sequence[str | None]) -> None:
        self.tokens, self._fill, self._outline, self._labels = list(tokens), list(fill), list(outline), list(labels)
        self.relayout()

    def append_tokens(self, tokens: Sequence[Token], fill: Sequence[QColor], outline: Sequence[QColor | None],
                      labels: Sequence[str | None]) -> None:
        """Streamed tokens: lay out and repaint only the new ones."""
        first_line = self._line
        start = len(self.tokens)
        self.tokens += tokens
        self._fill += fill
        self._outline += outline
        self._labels += labels
        for i in range(start, len(self.tokens)):
            self._layout_token(i)
        self._update_height()
        top = first_line * self.line_height
        self.update(QRect(0, top, self.width(), (self._line + 1 - first_line) * self.line_height))

    def set_colors(self, fill: Sequence[QColor], outline: Sequence[QColor | None]) -> None:
        self._fill, self._outline = list(fill), list(outline)
        self.update()

    def set_show_ids(self, on: bool) -> None:
        self.show_ids = on
        self.relayout()

    def set_selected(self, index: int) -> None:
        if index != self.selected:
            old, self.selected = self.selected, index
            for i in (old, index):
                for rect in self.token_rects(i):
                    self.update(rect.adjusted(-3, -3, 3, 3))

    # --- layout -------------------------------------------------------------------------------
    @property
    def line_height(self) -> int:
        return self._fm.height() + 6 + (self._fm_small.height() if self.show_ids else 0)

    def _take_font(self) -> None:
        self._font = QFont(self.font())
        self._small = QFont(self._font)
        self._small.setPointSizeF(max(6.0, self._font.pointSizeF() * 0.75))
        self._fm = QFontMetrics(self._font)
        self._fm_small = QFontMetrics(self._small)
        self._advance: dict[str, int] = {}
        self._measured: dict[str, tuple[tuple[Run_, ...], int]] = {}  # a piece of token text -> (runs, width)

    def changeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """The application font changed (presenter mode): measure the tokens again."""
        super().changeEvent(event)
        if event.type() == QEvent.Type.FontChange:
            self._take_font()
            self.relayout()

    def _clear_layout(self) -> None:
        self.fragments: list[Fragment] = []
        self._token_frags: list[list[int]] = []  # token -> fragment indices
        self._line_frags: list[list[int]] = [[]]  # line -> fragment indices (in x order)
        self._line, self._x = 0, MARGIN

    def relayout(self) -> None:
        self._clear_layout()
        for i in range(len(self.tokens)):
            self._layout_token(i)
        self._update_height()
        self.update()

    def _adv(self, text: str) -> int:
        w = self._advance.get(text)
        if w is None:
            w = self._advance[text] = self._fm.horizontalAdvance(text.replace("\t", "    "))
        return w

    def _runs(self, text: str) -> tuple[tuple[Run_, ...], int]:
        """Text and whitespace runs of a piece of token text and its width (measured once per text: a long run
        repeats its tokens, and laying out 1,000 tokens again must not measure them all again)."""
        measured = self._measured.get(text)
        if measured is None:
            measured = self._measured[text] = self._measure(text)
        return measured

    def _measure(self, text: str) -> tuple[tuple[Run_, ...], int]:
        runs, dx, i = [], 0, 0
        while i < len(text):
            ws = text[i].isspace()
            j = i
            while j < len(text) and text[j].isspace() == ws:
                j += 1
            chunk = text[i:j]
            runs.append(Run_(dx, chunk, ws))
            dx += self._adv(chunk)
            i = j
        return tuple(runs), dx

    def _layout_token(self, i: int) -> None:
        tok = self.tokens[i]
        self._token_frags.append([])
        id_w = self._fm_small.horizontalAdvance(str(tok.id)) if self.show_ids else 0
        if tok.end <= tok.start:
            label = self._labels[i] or tok.text or f"#{tok.id}"
            w = max(self._fm_small.horizontalAdvance(label), id_w) + 2 * PAD
            self._place(i, w, tok.start, tok.start, (Run_(0, label, False),), label=True)
            return
        parts = tok.text.split("\n")
        cursor = tok.start
        for k, part in enumerate(parts):
            runs, w = self._runs(part)
            last = k == len(parts) - 1
            if not last:
                runs += (Run_(w, NEWLINE_GLYPH, True),)
                w += self._adv(NEWLINE_GLYPH)
            end = cursor + len(part) + (0 if last else 1)
            if part or not last:
                self._place(i, max(w, id_w) + 2 * PAD, cursor, end, runs)
            if not last:
                self._line += 1
                self._line_frags.append([])
                self._x = MARGIN
            cursor = end

    def _place(self, i: int, w: int, start: int, end: int, runs: tuple[Run_, ...], label: bool = False) -> None:
        if self._x > MARGIN and self._x + w > max(self.width(), 120) - MARGIN:
            self._line += 1
            self._line_frags.append([])
            self._x = MARGIN
        frag = Fragment(i, self._line, self._x, w, start, end, runs, label)
        self._token_frags[i].append(len(self.fragments))
        self._line_frags[self._line].append(len(self.fragments))
        self.fragments.append(frag)
        self._x += w + GAP

    def _update_height(self) -> None:
        h = (self._line + 1) * self.line_height + 2 * MARGIN
        if self.minimumHeight() != h:
            self.setMinimumHeight(h)

    def sizeHint(self) -> QSize:
        return QSize(400, (self._line + 1) * self.line_height + 2 * MARGIN)

    def resizeEvent(self, event) -> None:
        if event.oldSize().width() != event.size().width():
            self.relayout()
        super().resizeEvent(event)

    # --- geometry -----------------------------------------------------------------------------
    def frag_rect(self, f: Fragment) -> QRect:
        return QRect(f.x, MARGIN + f.line * self.line_height, f.width, self.line_height - 3)

    def token_rects(self, i: int) -> list[QRect]:
        if not 0 <= i < len(self._token_frags):
            return []
        return [self.frag_rect(self.fragments[k]) for k in self._token_frags[i]]

    def token_at(self, pos: QPoint) -> int:
        line = (pos.y() - MARGIN) // self.line_height
        if not 0 <= line < len(self._line_frags):
            return -1
        frags = self._line_frags[line]
        xs = [self.fragments[k].x for k in frags]
        j = bisect_right(xs, pos.x()) - 1
        if j >= 0:
            f = self.fragments[frags[j]]
            if pos.x() < f.x + f.width + GAP:
                return f.token
        return -1

    # --- painting -----------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        rect = event.rect()
        p.fillRect(rect, self.palette().base())
        lh = self.line_height
        first = max(0, (rect.top() - MARGIN) // lh)
        last = min(len(self._line_frags) - 1, (rect.bottom() - MARGIN) // lh)
        ascent = self._fm.ascent()
        text_pen, faint_pen = QPen(QColor(20, 20, 20)), QPen(FAINT)
        for line in range(first, last + 1):
            for k in self._line_frags[line]:
                f = self.fragments[k]
                box = self.frag_rect(f)
                i = f.token
                fill = self._fill[i] if i < len(self._fill) else QColor(230, 230, 230)
                outline = self._outline[i] if i < len(self._outline) else None
                p.setPen(QPen(outline, 2) if outline is not None else QPen(fill.darker(125), 1))
                p.setBrush(fill)
                p.drawRoundedRect(QRectF(box).adjusted(0.5, 0.5, -0.5, -0.5), 3, 3)
                base = box.top() + 2 + ascent
                if f.label:
                    p.setFont(self._small)
                    p.setPen(QPen(QColor(70, 70, 70)))
                    p.drawText(box.left() + PAD, base, f.runs[0].text)
                    p.setFont(self._font)
                else:
                    for r in f.runs:
                        x = box.left() + PAD + r.dx
                        if r.whitespace:
                            p.setPen(faint_pen)
                            for ch in r.text:
                                glyph = WS_GLYPH.get(ch, NEWLINE_GLYPH if r.text == NEWLINE_GLYPH else "")
                                cw = self._adv(ch)
                                if glyph:
                                    gw = self._adv(glyph)
                                    p.drawText(x + (cw - gw) // 2 if ch != NEWLINE_GLYPH else x, base, glyph)
                                x += cw
                        else:
                            p.setPen(text_pen)
                            p.drawText(x, base, r.text)
                if self.show_ids:
                    p.setFont(self._small)
                    p.setPen(QPen(QColor(90, 90, 90)))
                    p.drawText(box.left() + PAD, box.bottom() - 2, str(self.tokens[i].id))
                    p.setFont(self._font)
                if i == self.selected:
                    p.setPen(QPen(QColor(0, 0, 0), 2))
                    p.setBrush(Qt.BrushStyle.NoBrush)
                    p.drawRoundedRect(QRectF(box).adjusted(-1, -1, 1, 1), 3, 3)
        p.end()

    # --- mouse --------------------------------------------------------------------------------
    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        i = self.token_at(event.position().toPoint())
        if i != self.hover_index:
            self.hover_index = i
            self.hovered.emit(i)
            if i >= 0 and self.tooltip_for is not None:
                QToolTip.showText(event.globalPosition().toPoint(), self.tooltip_for(i), self)
            else:
                QToolTip.hideText()
        super().mouseMoveEvent(event)

    def leaveEvent(self, event) -> None:
        self.hover_index = -1
        self.hovered.emit(-1)
        super().leaveEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        i = self.token_at(event.position().toPoint())
        if i >= 0 and event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(i)
        super().mousePressEvent(event)


def scrolling(view: TokenView) -> QScrollArea:
    """The view inside a scroll area that keeps it as wide as the viewport (text wraps)."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(view)
    return area
