"""The latest batch run (core.analysis.batching.BatchResult), shared by the panels that show it: the Runtime
panel runs and pages it, the Tokens panel shows its rows with padding and attention mask."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal


class BatchHub(QObject):
    changed = Signal(object)  # BatchResult

    def __init__(self):
        super().__init__()
        self.latest = None

    def publish(self, result) -> None:
        self.latest = result
        self.changed.emit(result)


_HUB: BatchHub | None = None


def hub() -> BatchHub:
    global _HUB
    if _HUB is None:
        _HUB = BatchHub()
    return _HUB
