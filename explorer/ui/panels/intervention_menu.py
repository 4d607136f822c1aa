"""Right-click menus on heads and layers, and the bus that carries their requests.

Other panels attach a menu with one call (`attach_head_menu(widget, locate)` / `attach_layer_menu`);
a choice is emitted on `bus().requested` as an `InterventionRequest`; the Interventions panel turns
it into an `Intervention` (it holds the run, the pinned run B and the position scope).

Work that needs the model is not done here: panels submit engine jobs through `Panel.services`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QPoint, Qt, Signal
from PySide6.QtWidgets import QMenu, QWidget


@dataclass(frozen=True)
class InterventionRequest:
    action: str  # "zero_head" | "mean_head" | "scale_head" | "patch_head" | "zero_attn" | "zero_mlp" | "patch_resid"
    layer: int
    head: int | None = None


class _Bus(QObject):
    requested = Signal(object)  # InterventionRequest
    open_head = Signal(int, int)  # (layer, head) a result that wants the head shown


_BUS: _Bus | None = None


def bus() -> _Bus:
    global _BUS
    if _BUS is None:
        _BUS = _Bus()
    return _BUS


HEAD_ACTIONS = (("zero_head", "Ablate head L{l}.H{h} (zero)"), ("mean_head", "Mean-ablate head L{l}.H{h}"),
                ("scale_head", "Scale head L{l}.H{h}..."), ("patch_head", "Patch head L{l}.H{h} from run B..."))
LAYER_ACTIONS = (("zero_attn", "Ablate attention block L{l}"), ("zero_mlp", "Ablate MLP block L{l}"),
                 ("patch_resid", "Patch residual after L{l} from run B..."))


def head_menu(parent: QWidget, layer: int, head: int) -> QMenu:
    menu = QMenu(parent)
    for action, text in HEAD_ACTIONS:
        menu.addAction(text.format(l=layer, h=head)).triggered.connect(
            lambda _c=False, a=action: bus().requested.emit(InterventionRequest(a, layer, head)))
    return menu


def layer_menu(parent: QWidget, layer: int) -> QMenu:
    menu = QMenu(parent)
    for action, text in LAYER_ACTIONS:
        menu.addAction(text.format(l=layer)).triggered.connect(
            lambda _c=False, a=action: bus().requested.emit(InterventionRequest(a, layer)))
    return menu


def attach_head_menu(widget: QWidget, locate: Callable[[QPoint], tuple[int, int] | None]) -> None:
    """Right-click on `widget` opens the head menu for the head `locate(point)` returns (None: no menu)."""
    widget.setContextMenuPolicy(Qt.CustomContextMenu)

    def show(point: QPoint) -> None:
        cell = locate(point)
        if cell is not None:
            head_menu(widget, *cell).exec(widget.mapToGlobal(point))
    widget.customContextMenuRequested.connect(show)


def attach_layer_menu(widget: QWidget, locate: Callable[[QPoint], int | None]) -> None:
    widget.setContextMenuPolicy(Qt.CustomContextMenu)

    def show(point: QPoint) -> None:
        layer = locate(point)
        if layer is not None:
            layer_menu(widget, layer).exec(widget.mapToGlobal(point))
    widget.customContextMenuRequested.connect(show)


def plot_locator(view, plot, cell: Callable[[float, float], Any]) -> Callable[[QPoint], Any]:
    """For a pyqtgraph GraphicsLayoutWidget `view` with PlotItem `plot`: widget point -> cell(x, y) in data units."""
    def locate(point: QPoint):
        p = plot.vb.mapSceneToView(view.mapToScene(point))
        return cell(p.x(), p.y())
    return locate


def table_head_locator(table) -> Callable[[QPoint], tuple[int, int] | None]:
    """For a table whose columns 0 and 1 hold layer and head (as Qt.UserRole data, else as text)."""
    def locate(point: QPoint):
        row = table.rowAt(point.y())
        if row < 0 or table.item(row, 0) is None or table.item(row, 1) is None:
            return None
        values = []
        for col in (0, 1):
            item = table.item(row, col)
            data = item.data(Qt.UserRole)
            values.append(int(data) if data is not None else int(item.text()))
        return values[0], values[1]
    return locate
