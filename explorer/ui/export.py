"""Export a panel as PNG (a grab of its pixels) or SVG (the widget rendered into QSvgGenerator)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, QRect, QSize
from PySide6.QtGui import QPainter
from PySide6.QtSvg import QSvgGenerator
from PySide6.QtWidgets import QWidget

FORMATS = ("png", "svg")


def export_widget(widget: QWidget, path: str | Path) -> Path:
    """Write `widget` to `path`; the suffix (.png or .svg) picks the format. Raises OSError on failure."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"Export to .png or .svg, not {path.suffix or 'no extension'}.")
    if suffix == "png":
        if not widget.grab().save(str(path), "PNG"):
            raise OSError(f"Could not write {path}.")
        return path
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
    try:
        widget.render(painter, QPoint())
    finally:
        painter.end()
    if not path.is_file() or path.stat().st_size == 0:
        raise OSError(f"Could not write {path}.")
    return path
