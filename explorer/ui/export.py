"""Export a panel as PNG (rendered at a chosen scale and DPI) or SVG (the widget rendered into QSvgGenerator:
axes, curves and text as vectors; scatter symbols drawn as paths, not cached bitmaps)."""

from __future__ import annotations

from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QPoint, QRect, QSize, QStandardPaths
from PySide6.QtGui import QImage, QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import QWidget

FORMATS = ("png", "svg")


MAX_PNG_SIDE = 16384  # pixels: beyond this the image takes gigabytes


def documents_dir() -> str:
    """The user's documents folder (file dialogs open there, not in the current directory)."""
    return QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation) or str(Path.home())


def export_widget(widget: QWidget, path: str | Path, scale: float = 1.0, dpi: float | None = None) -> Path:
    """Write `widget` to `path`; the suffix (.png or .svg) picks the format. A PNG is rendered `scale` times
    the on-screen size (text and lines re-drawn at that resolution, not stretched) and tagged with `dpi`
    (default 96 x scale). Raises OSError on failure, ValueError for an unusable format or size."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"Export to .png or .svg, not {path.suffix or 'no extension'}.")
    if suffix == "png":
        return _png(widget, path, scale, dpi)
    size = widget.size()
    if size.isEmpty():
        size = widget.sizeHint().expandedTo(QSize(200, 100))
    generator = QSvgGenerator()
    generator.setFileName(str(path))
    generator.setSize(size)
    generator.setViewBox(QRect(0, 0, size.width(), size.height()))
    generator.setTitle(widget.windowTitle() or type(widget).__name__)
    generator.setDescription("Exported from LM Explorer")
    painter = QPainter()
    if not painter.begin(generator):
        raise OSError(f"Could not write {path}.")
    scatters = [item for view in widget.findChildren(pg.GraphicsView) for item in view.scene().items()
                if isinstance(item, pg.ScatterPlotItem)]
    cached = [item.opts.get("useCache", True) for item in scatters]
    try:
        for item in scatters:  # symbols as vector paths, not the cached pixmaps used on screen
            item.opts["useCache"] = False
        widget.render(painter, QPoint())
    finally:
        painter.end()
        for item, use in zip(scatters, cached, strict=True):
            item.opts["useCache"] = use
    if not path.is_file() or path.stat().st_size == 0:
        raise OSError(f"Could not write {path}.")
    return path


def _png(widget: QWidget, path: Path, scale: float, dpi: float | None) -> Path:
    size = widget.size()
    if size.isEmpty():
        size = widget.sizeHint().expandedTo(QSize(200, 100))
    if not scale >= 0.1:
        raise ValueError(f"The image scale must be at least 0.1, not {scale:g}.")
    if max(size.width(), size.height()) * scale > MAX_PNG_SIDE:
        raise ValueError(f"A {scale:g}x image of this panel would be over {MAX_PNG_SIDE:,} pixels wide; "
                         "choose a smaller size.")
    image = QImage(round(size.width() * scale), round(size.height() * scale), QImage.Format_ARGB32)
    image.setDevicePixelRatio(scale)  # the widget paints in its own units; Qt draws them `scale` times finer
    image.fill(widget.palette().window().color())
    dots = (dpi or 96.0 * scale) / 0.0254  # dots per metre
    image.setDotsPerMeterX(round(dots))
    image.setDotsPerMeterY(round(dots))
    painter = QPainter(image)
    try:
        widget.render(painter, QPoint())
    finally:
        painter.end()
    if not image.save(str(path), "PNG"):
        raise OSError(f"Could not write {path}.")
    return path
