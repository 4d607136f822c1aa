"""A heatmap: one pyqtgraph ImageItem fed a numpy array, explicit levels, a colour bar,
optional token labels on the axes, hover readout and click signals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

MAX_LABELS = 48  # beyond this many rows/columns the axes show numbers instead of token text


class Heatmap(QWidget):
    """Rows x columns image; `hovered(row, col)` and `clicked(row, col)` give cell indices."""

    hovered = Signal(int, int)
    clicked = Signal(int, int)

    def __init__(self, colormap: str = "viridis", parent: QWidget | None = None, colorbar: bool = True):
        super().__init__(parent)
        self.view = pg.GraphicsLayoutWidget()
        self.plot: pg.PlotItem = self.view.addPlot()
        self.plot.invertY(True)
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(x=False, y=False)
        self.image = pg.ImageItem()
        self.plot.addItem(self.image)
        self.detail: pg.ImageItem | None = None  # optional full-resolution overlay of a zoomed region
        self.levels: tuple[float, float] = (0.0, 1.0)
        self.colorbar = None
        if colorbar:
            self.colorbar = pg.ColorBarItem(colorMap=pg.colormap.get(colormap), interactive=False, width=12)
            self.colorbar.setImageItem(self.image, insert_in=self.plot)
        else:
            self.image.setColorMap(pg.colormap.get(colormap))
        self.readout = QLabel(" ")
        self.readout.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.readout)
        self.data: np.ndarray | None = None
        self.row_scale = 1.0  # rows of the source per image row (when downsampled)
        self.col_scale = 1.0
        self.view.scene().sigMouseMoved.connect(self._on_move)
        self.view.scene().sigMouseClicked.connect(self._on_click)

    def set_colormap(self, name: str) -> None:
        cmap = pg.colormap.get(name)
        if self.colorbar is not None:
            self.colorbar.setColorMap(cmap)
        else:
            self.image.setColorMap(cmap)

    def set_data(self, data: np.ndarray, levels: tuple[float, float] = (0.0, 1.0),
                 row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                 shape: tuple[int, int] | None = None, auto_range: bool = True) -> None:
        """Show `data` ([rows, cols]); `shape` is the logical size when `data` is downsampled."""
        self.data = data
        self.levels = levels
        self.clear_detail()
        rows, cols = shape or data.shape
        self.row_scale = rows / max(1, data.shape[0])
        self.col_scale = cols / max(1, data.shape[1])
        self.image.setImage(data, levels=levels, autoLevels=False)
        self.image.setRect(0, 0, cols, rows)
        if self.colorbar is not None:
            self.colorbar.setLevels(levels)
        self._set_ticks("left", row_labels, rows)
        self._set_ticks("bottom", col_labels, cols)
        if auto_range:
            self.plot.setRange(xRange=(0, cols), yRange=(0, rows), padding=0)

    def update_rows(self, data: np.ndarray) -> None:
        """Replace the image with new data of the same scale (a new row while streaming)."""
        self.data = data
        self.image.setImage(data, autoLevels=False)

    def set_levels(self, levels: tuple[float, float]) -> None:
        self.levels = levels
        self.image.setLevels(levels)
        if self.detail is not None:
            self.detail.setLevels(levels)
        if self.colorbar is not None:
            self.colorbar.setLevels(levels)

    def set_detail(self, data: np.ndarray, rect: tuple[float, float, float, float]) -> None:
        """Overlay `data` at (x, y, width, height) in logical cells: a zoomed region at full resolution."""
        if self.detail is None:
            self.detail = pg.ImageItem()
            self.detail.setZValue(self.image.zValue() + 1)
            self.plot.addItem(self.detail)
        cmap = self.image.getColorMap()
        if cmap is not None:
            self.detail.setColorMap(cmap)
        self.detail.setImage(data, levels=self.levels, autoLevels=False)
        self.detail.setRect(*rect)
        self.detail.show()

    def clear_detail(self) -> None:
        if self.detail is not None:
            self.detail.hide()

    def _set_ticks(self, axis: str, labels: Sequence[str] | None, n: int) -> None:
        ax = self.plot.getAxis(axis)
        if labels is not None and len(labels) <= MAX_LABELS:
            ax.setTicks([[(i + 0.5, _short(s)) for i, s in enumerate(labels)]])
        else:
            ax.setTicks(None)

    def cell_at(self, scene_pos) -> tuple[int, int] | None:
        if self.data is None or not self.plot.sceneBoundingRect().contains(scene_pos):
            return None
        p = self.plot.vb.mapSceneToView(scene_pos)
        row, col = int(np.floor(p.y())), int(np.floor(p.x()))
        rows = int(round(self.data.shape[0] * self.row_scale))
        cols = int(round(self.data.shape[1] * self.col_scale))
        if 0 <= row < rows and 0 <= col < cols:
            return row, col
        return None

    def value_at(self, row: int, col: int) -> float:
        return float(self.data[int(row / self.row_scale), int(col / self.col_scale)])

    def _on_move(self, pos) -> None:
        cell = self.cell_at(pos)
        if cell is not None:
            self.hovered.emit(*cell)

    def _on_click(self, event) -> None:
        cell = self.cell_at(event.scenePos())
        if cell is not None and event.button() == Qt.LeftButton:
            self.clicked.emit(*cell)


def _short(label: str, width: int = 10) -> str:
    label = label.replace("\n", "\u21b5").replace("\t", "\u21e5").replace(" ", "\u00b7")
    return label if len(label) <= width else label[: width - 1] + "\u2026"
