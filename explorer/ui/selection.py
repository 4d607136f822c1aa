"""The shared selection (run step, token position, layer, head) that every panel follows."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

FIELDS = ("step", "position", "layer", "head")


class Selection(QObject):
    """Current step, token position, layer and head; `changed(field)` fires on every change.

    Values are clamped to the limits set with `set_limits` (from the run's shape).
    """

    changed = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._values = dict.fromkeys(FIELDS, 0)
        self._limits = dict.fromkeys(FIELDS, 1)

    def set_limits(self, *, steps: int, positions: int, layers: int, heads: int) -> None:
        self._limits = {"step": max(1, steps), "position": max(1, positions), "layer": max(1, layers),
                        "head": max(1, heads)}
        for name in FIELDS:
            self.set(name, self._values[name])

    def limit(self, name: str) -> int:
        return self._limits[name]

    def get(self, name: str) -> int:
        return self._values[name]

    def set(self, name: str, value: int) -> None:
        value = max(0, min(int(value), self._limits[name] - 1))
        if self._values[name] != value:
            self._values[name] = value
            self.changed.emit(name)

    def move(self, name: str, delta: int) -> None:
        self.set(name, self._values[name] + delta)

    @property
    def step(self) -> int:
        return self._values["step"]

    @property
    def position(self) -> int:
        return self._values["position"]

    @property
    def layer(self) -> int:
        return self._values["layer"]

    @property
    def head(self) -> int:
        return self._values["head"]
