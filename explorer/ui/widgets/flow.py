"""A toolbar row that wraps: `FlowLayout` lays its widgets left to right and starts a new line when the next one
does not fit, so a panel's controls are never clipped in a narrow dock or with presenter fonts (Qt's flow-layout
example, plus the QHBoxLayout calls panels already make: addWidget(w, stretch), addStretch, addSpacing).

`labelled("Layer", spin_box)` keeps a label with its control, so a wrap never separates them.
"""

from __future__ import annotations

from PySide6.QtCore import QMargins, QPoint, QRect, QSize, Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLayout, QLayoutItem, QSizePolicy, QStyle, QWidget


class FlowLayout(QLayout):
    """Widgets left to right, wrapping onto more lines when the width runs out (height follows the width)."""

    def __init__(self, parent: QWidget | None = None, spacing: int = -1):
        super().__init__(parent)
        self._items: list[QLayoutItem] = []
        self._stretch: dict[int, int] = {}  # id(item) -> stretch: it takes the rest of its line
        self._spacing = spacing
        self.setContentsMargins(QMargins(0, 0, 0, 0))

    # --- the QHBoxLayout calls panels make ------------------------------------------------------------
    def addWidget(self, widget: QWidget, stretch: int = 0, alignment=None) -> None:  # noqa: N802 - Qt's name
        super().addWidget(widget)
        if stretch > 0:
            self._stretch[id(self._items[-1])] = stretch

    def addStretch(self, stretch: int = 0) -> None:  # noqa: N802 - a flow has no stretch: items stay left
        pass

    def addSpacing(self, size: int) -> None:  # noqa: N802
        spacer = QWidget()
        spacer.setFixedSize(size, 1)
        self.addWidget(spacer)

    # --- QLayout --------------------------------------------------------------------------------------
    def addItem(self, item: QLayoutItem) -> None:  # noqa: N802 - Qt override
        self._items.append(item)

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, index: int) -> QLayoutItem | None:  # noqa: N802 - Qt override
        return self._items[index] if 0 <= index < len(self._items) else None

    def takeAt(self, index: int) -> QLayoutItem | None:  # noqa: N802 - Qt override
        if not 0 <= index < len(self._items):
            return None
        item = self._items.pop(index)
        self._stretch.pop(id(item), None)
        return item

    def expandingDirections(self) -> Qt.Orientation:  # noqa: N802 - Qt override
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt override
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802 - Qt override
        return self._arrange(QRect(0, 0, width, 0), move=False)

    def setGeometry(self, rect: QRect) -> None:  # noqa: N802 - Qt override
        super().setGeometry(rect)
        self._arrange(rect, move=True)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override: everything on one line
        m = self.contentsMargins()
        shown = self._shown()
        width = sum(i.sizeHint().width() for i in shown) + self._gap() * max(0, len(shown) - 1)
        height = max((i.sizeHint().height() for i in shown), default=0) + m.top() + m.bottom()
        return QSize(width + m.left() + m.right(), height)

    def minimumSize(self) -> QSize:  # noqa: N802 - Qt override: the widest single item
        size = QSize()
        for item in self._shown():
            size = size.expandedTo(item.minimumSize())
        m = self.contentsMargins()
        size += QSize(m.left() + m.right(), m.top() + m.bottom())
        return size

    # --- layout -----------------------------------------------------------------------------------------
    def _shown(self) -> list[QLayoutItem]:
        return [i for i in self._items if not (i.widget() is not None and i.widget().isHidden())]

    def _gap(self) -> int:
        if self._spacing >= 0:
            return self._spacing
        parent = self.parentWidget()
        style = parent.style() if parent is not None else None
        gap = style.pixelMetric(QStyle.PM_LayoutHorizontalSpacing) if style is not None else -1
        return gap if gap >= 0 else 6

    def _arrange(self, rect: QRect, move: bool) -> int:
        m = self.contentsMargins()
        area = rect.adjusted(m.left(), m.top(), -m.right(), -m.bottom())
        gap = self._gap()
        lines: list[list[tuple[QLayoutItem, int]]] = [[]]
        x = 0
        for item in self._shown():
            w = min(item.sizeHint().width(), max(item.minimumSize().width(), area.width()))
            if lines[-1] and x + w > area.width():  # does not fit: next line
                lines.append([])
                x = 0
            lines[-1].append((item, w))
            x += w + gap
        y = area.y()
        for line in lines:
            if not line:
                continue
            spare = area.width() - sum(w for _, w in line) - gap * (len(line) - 1)
            weights = [self._stretch.get(id(item), 0) for item, _ in line]
            total = sum(weights)
            height = max(item.sizeHint().height() for item, _ in line)
            x = area.x()
            for (item, w), weight in zip(line, weights, strict=True):
                if total and spare > 0:
                    w += spare * weight // total
                if move:
                    hint = item.sizeHint().height()
                    item.setGeometry(QRect(QPoint(x, y + (height - hint) // 2), QSize(w, hint)))
                x += w + gap
            y += height + gap
        return y - gap - rect.y() + m.bottom() if any(lines) else m.top() + m.bottom()


def labelled(text: str, widget: QWidget) -> QWidget:
    """A label and its control as one item, so a wrapping row keeps them together."""
    holder = QWidget()
    row = QHBoxLayout(holder)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(QLabel(text))
    row.addWidget(widget)
    holder.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Fixed)
    return holder
