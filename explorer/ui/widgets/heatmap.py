"""A heatmap: one pyqtgraph ImageItem fed a numpy array, explicit levels, a colour bar,
optional token labels on the axes, hover readout and click signals.

Its colours follow the theme: the colour map is chosen by role (sequential, heat, diverging,
cyclic; see `theme.COLORMAPS`) and swapped for the colour-blind-safe one in presenter mode."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontMetricsF
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from ...core.labels import readable_label
from .. import plot_style, theme

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

MAX_LABELS = 48  # beyond this many rows/columns the axes show numbers instead of token text


class Heatmap(QWidget):
    """Rows x columns image; `hovered(row, col)` and `clicked(row, col)` give cell indices."""

    hovered = Signal(int, int)
    clicked = Signal(int, int)

    def __init__(self, colormap: str = "sequential", parent: QWidget | None = None, colorbar: bool = True):
        """`colormap`: a role of theme.COLORMAPS ("sequential", "heat", "diverging", "cyclic") or the normal
        map of one ("viridis", "inferno", "CET-D1", "CET-C2")."""
        super().__init__(parent)
        self.role = theme.role_of(colormap)
        self.view = pg.GraphicsLayoutWidget()
        self.plot: pg.PlotItem = self.view.addPlot()
        self.plot.invertY(True)
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(x=False, y=False)
        for axis in ("left", "bottom"):  # cell indices: never "(x0.001)"
            self.plot.getAxis(axis).enableAutoSIPrefix(False)
        self.image = pg.ImageItem()
        self.plot.addItem(self.image)
        self.detail: pg.ImageItem | None = None  # optional full-resolution overlay of a zoomed region
        self.levels: tuple[float, float] = (0.0, 1.0)
        self.colorbar = None
        if colorbar:
            self.colorbar = pg.ColorBarItem(colorMap=plot_style.colormap(self.role), interactive=False, width=12)
            self.colorbar.setImageItem(self.image, insert_in=self.plot)
        else:
            self.image.setColorMap(plot_style.colormap(self.role))
        self.readout = QLabel(" ")
        self.readout.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.readout)
        self.data: np.ndarray | None = None
        self.row_scale = 1.0  # rows of the source per image row (when downsampled)
        self.col_scale = 1.0
        self._labels: dict[str, list[str] | None] = {"left": None, "bottom": None}
        self._steps: dict[str, tuple[int, int]] = {}
        self.view.scene().sigMouseMoved.connect(self._on_move)
        self.view.scene().sigMouseClicked.connect(self._on_click)
        self.plot.vb.sigResized.connect(self._thin_labels)
        self.plot.vb.sigRangeChanged.connect(self._thin_labels)

        self.apply_theme()
        plot_style.follow(self, self.apply_theme)

    def apply_theme(self) -> None:
        """Plot frame, fonts and this role's colour map for the current theme (runs on every theme change)."""
        plot_style.style(self.view, follow=False)
        if self.colorbar is not None:
            plot_style.style(self.colorbar, follow=False)
        self.set_colormap(theme.colormap(self.role))
        self._steps.clear()  # the font may have changed: thin the labels again
        self._thin_labels()

    def set_colormap(self, name: str) -> None:
        cmap = pg.colormap.get(name)
        if self.colorbar is not None:
            self.colorbar.setColorMap(cmap)  # also sets the image's lookup table
        else:
            self.image.setColorMap(cmap)
        if self.detail is not None:
            self.detail.setColorMap(cmap)

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

    def clear(self) -> None:
        """Show nothing (until the next `set_data`): a map being computed, with the axes left as they are."""
        self.data = None
        self.image.clear()
        self.clear_detail()

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
        self._steps.pop(axis, None)
        if labels is not None and len(labels) <= MAX_LABELS:
            self._labels[axis] = [_short(s) for s in labels]
            self._thin_labels()
        else:
            self._labels[axis] = None
            ax.setTicks(None)

    def _thin_labels(self, *_args) -> None:
        """Label every Nth row / column so that labels never overlap at the current on-screen cell size."""
        vb = self.plot.vb
        (x0, x1), (y0, y1) = vb.viewRange()
        metrics = QFontMetricsF(self.view.font())
        for axis, span, pixels in (("left", y1 - y0, vb.height()), ("bottom", x1 - x0, vb.width())):
            labels = self._labels[axis]
            if labels is None:
                continue
            cell = pixels / span if span > 0 and pixels > 1 else 0.0
            chars = 0  # bottom labels: shorten to fit the cell width when 4 or more characters fit
            if axis == "left":
                need = metrics.height() + 1
            else:
                need = max((metrics.horizontalAdvance(s) for s in labels), default=0.0) + 6
                if 0 < cell < need:
                    chars = int((cell - 6) // max(1.0, metrics.averageCharWidth()))
                    need = cell if chars >= 4 else need
            step = tick_step(cell, need)
            if self._steps.get(axis) != (step, chars):
                self._steps[axis] = (step, chars)
                short = [_short(s, chars) for s in labels] if chars >= 4 else labels
                self.plot.getAxis(axis).setTicks([[(i + 0.5, s) for i, s in enumerate(short) if i % step == 0]])

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


def tick_step(cell_pixels: float, label_pixels: float) -> int:
    """Label every `step`th cell (1, 2, 5, 10, 20, 50, ...) so labels `label_pixels` long fit cells
    `cell_pixels` apart; 1 when the cell size is not known yet (0)."""
    if cell_pixels <= 0 or cell_pixels >= label_pixels:
        return 1
    need = label_pixels / cell_pixels
    magnitude = 10 ** math.floor(math.log10(need))
    return next(int(m * magnitude) for m in (1, 2, 5, 10) if m * magnitude >= need)

_short = readable_label  # the one token label helper (core.labels)
