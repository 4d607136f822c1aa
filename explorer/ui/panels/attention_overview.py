"""The attention overview: every layer x head as a thumbnail in ONE image, and the head-statistics table.

Query heads that share a KV head (GQA: head // group_size) sit on a lighter frame, with a wider gap
between groups. The image is an RGB uint8 array painted with numpy and shown by one ImageItem.
The image (`rgb`, and the coordinates of head_x / layer_y / cell_at) always has layers as rows; on
screen it is shown transposed (layers as columns) when that makes the thumbnails bigger, and it
fills the available area (thumbnails stretched to at most MAX_STRETCH : 1).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import shiboken6
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFontMetricsF, QPen
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...core.analysis.attention import STAT_NAMES, LayerSummary, Thresholds, label_head
from .. import plot_style
from ..table_fill import append_rows, fill_table, interactive_columns
from ..widgets.frame_work import frame_work
from ..widgets.heatmap import tick_step
from ..widgets.status_line import StatusLine

BACKGROUND = (30, 30, 34)
FRAME = (120, 120, 128)
FILL_CHUNK = 24  # head-statistics rows added per event-loop turn (a few ms each)
MAX_STRETCH = 2.0  # a thumbnail is at most this many times wider than tall on screen (or taller than wide)


class OverviewGrid(QWidget):
    """Layers (rows) x heads (columns) thumbnails; `clicked(layer, head)` when one is clicked."""

    clicked = Signal(int, int)

    def __init__(self, size: int = 24, colormap: str = "sequential", parent: QWidget | None = None):
        super().__init__(parent)
        self.size = size
        self.role = colormap  # the theme's map for this role paints the thumbnails (set_layer)
        self.view = pg.GraphicsLayoutWidget()
        self.plot: pg.PlotItem = self.view.addPlot()
        self.plot.invertY(True)
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.showAxis("top")
        self.plot.hideAxis("bottom")
        self.image = pg.ImageItem()
        self.plot.addItem(self.image)
        self.marker = pg.QtWidgets.QGraphicsRectItem()
        pen = QPen(QColor(255, 60, 60))
        pen.setWidth(2)
        pen.setCosmetic(True)
        self.marker.setPen(pen)
        self.marker.setZValue(10)
        self.plot.addItem(self.marker)
        plot_style.style(self.view)
        self.status = StatusLine("", lines=2)  # "computing 3/30 layers…", then a two-line note
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status)
        self.rgb: np.ndarray | None = None
        self.n_layers = self.n_heads = 0
        self.group = 1
        self.transposed = False  # on screen: layers as columns, heads as rows
        self._selected = (0, 0)
        self._tick_steps: tuple[int, int] | None = None
        self.view.scene().sigMouseClicked.connect(self._on_click)
        self.plot.vb.sigResized.connect(lambda *_: self.fit())

    @property
    def cmap(self) -> pg.ColorMap:
        return plot_style.colormap(self.role)

    # --- geometry ---------------------------------------------------------------------------------
    @property
    def group_gap(self) -> int:
        return 4 if self.group > 1 else 0

    def head_x(self, head: int) -> int:
        return 2 + head * (self.size + 1) + (head // self.group) * self.group_gap

    def layer_y(self, layer: int) -> int:
        return 2 + layer * (self.size + 3)

    def reset(self, n_layers: int, n_heads: int, group: int) -> None:
        """An empty grid with GQA group frames; thumbnails arrive layer by layer."""
        self.n_layers, self.n_heads, self.group = n_layers, n_heads, max(1, group)
        key = (n_layers, n_heads, self.group, self.size)
        if self._blank is None or self._blank[0] != key:  # (drawn once per model: a new run copies it)
            self._blank = (key, self._empty_grid())
        self.rgb = self._blank[1].copy()  # [rows, cols, rgb]
        self._tick_steps = None
        self.fit(force=True)

    _blank: tuple[tuple, np.ndarray] | None = None  # (layers, heads, group, size) and its empty grid

    def _empty_grid(self) -> np.ndarray:
        n_layers, n_heads = self.n_layers, self.n_heads
        width = self.head_x(n_heads - 1) + self.size + 3
        height = self.layer_y(n_layers - 1) + self.size + 3
        rgb = np.empty((height, width, 3), np.uint8)  # [rows, cols, rgb]
        rgb[...] = BACKGROUND
        for layer in range(n_layers):
            y = self.layer_y(layer)
            for g in range(0, n_heads, self.group):
                x0 = self.head_x(g) - 1
                x1 = self.head_x(min(n_heads, g + self.group) - 1) + self.size + 1
                rgb[y - 1: y + self.size + 1, x0:x1] = FRAME
                rgb[y: y + self.size, x0 + 1: x1 - 1] = BACKGROUND
        return rgb

    # --- on-screen layout -------------------------------------------------------------------------
    def _show_image(self) -> None:
        height, width = self.rgb.shape[:2]
        shown = self.rgb.transpose(1, 0, 2) if self.transposed else self.rgb  # [rows, cols, rgb] on screen
        self.image.setImage(shown, levels=None, autoLevels=False)  # (RGB bytes as they are: no rescale)
        self.image.setRect(0, 0, *((height, width) if self.transposed else (width, height)))

    def fit(self, force: bool = False) -> None:
        """Pick the orientation with the bigger thumbnails for the current widget size, fill the area
        (stretching thumbnails up to MAX_STRETCH : 1) and label every Nth layer / head so labels never overlap."""
        if self.rgb is None:
            return
        height, width = self.rgb.shape[:2]
        vw, vh = self.plot.vb.width(), self.plot.vb.height()
        if vw > 1 and vh > 1:
            upright, across = min(vw / width, vh / height), min(vw / height, vh / width)
            transposed = across > upright * 1.1 or (self.transposed and across > upright / 1.1)
        else:
            transposed = self.transposed
        if transposed != self.transposed or force:
            self.transposed = transposed
            self._tick_steps = None
            self._show_image()
            self.select(*self._selected)
        dw, dh = (height, width) if self.transposed else (width, height)  # data extent on screen
        x_span, y_span = float(dw), float(dh)
        if vw > 1 and vh > 1:
            sx, sy = vw / dw, vh / dh  # screen pixels per image pixel
            if sx > MAX_STRETCH * sy:
                x_span = vw / (MAX_STRETCH * sy)
            elif sy > MAX_STRETCH * sx:
                y_span = vh / (MAX_STRETCH * sx)
        self.plot.setRange(xRange=((dw - x_span) / 2, (dw + x_span) / 2),
                           yRange=((dh - y_span) / 2, (dh + y_span) / 2), padding=0)
        self._label_axes(vw / x_span if vw > 1 else 0.0, vh / y_span if vh > 1 else 0.0)

    def _label_axes(self, px_x: float, px_y: float) -> None:
        metrics = QFontMetricsF(self.view.font())
        layer_px, head_px = (px_x, px_y) if self.transposed else (px_y, px_x)
        wide = metrics.horizontalAdvance(str(max(self.n_layers, self.n_heads) - 1)) + 6
        tall = metrics.height() + 1
        steps = (tick_step(layer_px * (self.size + 3), wide if self.transposed else tall),
                 tick_step(head_px * (self.size + 1), tall if self.transposed else wide))
        if steps == self._tick_steps:
            return
        self._tick_steps = steps
        layers = [(self.layer_y(i) + self.size / 2, str(i)) for i in range(0, self.n_layers, steps[0])]
        heads = [(self.head_x(h) + self.size / 2, str(h)) for h in range(0, self.n_heads, steps[1])]
        head_title = "head" if self.group == 1 else f"head (KV groups of {self.group})" if self.transposed \
            else f"head (groups of {self.group} share a KV head)"
        (top, left), (top_title, left_title) = ((layers, heads), ("layer", head_title)) if self.transposed \
            else ((heads, layers), (head_title, "layer"))
        self.plot.getAxis("top").setTicks([top])
        self.plot.getAxis("left").setTicks([left])
        self.plot.getAxis("top").setLabel(top_title)
        self.plot.getAxis("left").setLabel(left_title)

    def set_layer(self, layer: int, thumbs: np.ndarray, show: bool = True) -> None:
        """Paint one layer's thumbnails [heads, size, size] (values 0..1) into the image; `show=False` leaves
        putting it on screen to `show_image` (results of many layers arriving in one frame: one upload)."""
        if self.rgb is None:
            return
        colours = self.cmap.map(np.clip(thumbs, 0, 1).reshape(-1), mode="byte")[:, :3]  # [heads*size*size, 3]
        colours = colours.reshape(thumbs.shape[0], self.size, self.size, 3)
        y = self.layer_y(layer)
        for h in range(min(self.n_heads, thumbs.shape[0])):
            x = self.head_x(h)
            self.rgb[y: y + self.size, x: x + self.size] = colours[h]
        if show:
            self._show_image()

    def show_image(self) -> None:
        if self.rgb is not None:
            self._show_image()

    def select(self, layer: int, head: int) -> None:
        self._selected = (layer, head)
        if self.rgb is not None:
            x, y = self.head_x(head) - 1, self.layer_y(layer) - 1
            self.marker.setRect(*((y, x) if self.transposed else (x, y)), self.size + 2, self.size + 2)

    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        layer = int((y - 2) // (self.size + 3))
        for head in range(self.n_heads):
            if self.head_x(head) - 1 <= x < self.head_x(head) + self.size + 1 and 0 <= layer < self.n_layers:
                return layer, head
        return None

    def _on_click(self, event) -> None:
        if event.button() != Qt.LeftButton or self.rgb is None:
            return
        p = self.plot.vb.mapSceneToView(event.scenePos())
        cell = self.cell_at(p.y(), p.x()) if self.transposed else self.cell_at(p.x(), p.y())
        if cell is not None:
            self.clicked.emit(*cell)


class _Num(QTableWidgetItem):
    def __init__(self, value: float, text: str):
        super().__init__(text)
        self.setData(Qt.UserRole, float(value))
        self.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.data(Qt.UserRole), other.data(Qt.UserRole)
        if a is None or b is None:
            return super().__lt__(other)
        return a < b


COLUMNS = ("layer", "head", "kv head", "label", *STAT_NAMES)


class HeadStatsTable(QWidget):
    """Sortable table of every head's statistics; `open_head(layer, head)` on a row click."""

    open_head = Signal(int, int)
    induction_test = Signal()

    def __init__(self, thresholds: Thresholds, parent: QWidget | None = None):
        super().__init__(parent)
        self.thresholds = thresholds
        self._fill_id = 0
        self.note = QLabel("Labels: " + thresholds.describe())
        self.note.setWordWrap(True)
        self.button = QPushButton("Run induction test")
        self.button.setToolTip("Runs a prompt of random words repeated twice: induction heads attend from the "
                               "second copy to the token after the same word in the first copy.")
        self.button.clicked.connect(self.induction_test)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c.replace("previous", "prev-token") for c in COLUMNS])
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.verticalHeader().hide()
        interactive_columns(self.table)
        self.table.horizontalHeader().setSortIndicator(0, Qt.AscendingOrder)  # layer 0 first until the user sorts
        self.table.setSortingEnabled(True)
        self.table.cellClicked.connect(self._on_cell)
        top = QHBoxLayout()
        top.addWidget(self.note, 1)
        top.addWidget(self.button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)

    def set_summaries(self, summaries: list[LayerSummary], group: int) -> None:
        """Fill the table a few rows per event-loop turn (270 rows x 14 items at once blocked the GUI thread for
        60 ms); the row count reaches its final value with the last chunk. A newer call replaces a fill in progress."""
        heads = [(s.layer, head, scores) for s in summaries for head, scores in enumerate(s.scores)]
        self._fill_id += 1
        fill_id = self._fill_id
        fill_table(self.table, [], resize=False)

        def row(layer: int, head: int, scores: np.ndarray) -> list:
            kv = head // group
            return [_Num(layer, str(layer)), _Num(head, str(head)), _Num(kv, str(kv)),
                    label_head(scores, self.thresholds), *(_Num(v, f"{v:.3f}") for v in scores)]

        def chunk(start: int) -> None:
            if fill_id != self._fill_id or not shiboken6.isValid(self.table):
                return  # a newer fill started (or the table is gone)
            stop = min(len(heads), start + FILL_CHUNK)
            append_rows(self.table, [row(*h) for h in heads[start:stop]], resize=start == 0,
                        sort=stop == len(heads))
            if stop < len(heads):  # the next chunk within the GUI queue's frame budget, then the table paints
                frame_work().post((id(self), "fill"), self, lambda: chunk(stop))

        chunk(0)

    def labels(self) -> dict[tuple[int, int], str]:
        out = {}
        for i in range(self.table.rowCount()):
            key = (int(self.table.item(i, 0).data(Qt.UserRole)), int(self.table.item(i, 1).data(Qt.UserRole)))
            out[key] = self.table.item(i, 3).text()
        return out

    def _on_cell(self, row: int, _col: int) -> None:
        layer, head = self.table.item(row, 0), self.table.item(row, 1)
        if layer is not None and head is not None:
            self.open_head.emit(int(layer.data(Qt.UserRole)), int(head.data(Qt.UserRole)))
