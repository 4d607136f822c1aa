"""Guard against a Qt binding that leaks references to None (PySide6 6.12.0 aborts long sessions)."""

import sys

from PySide6.QtGui import QColor


def test_void_calls_keep_none_refcount():
    colour = QColor()
    before = sys.getrefcount(None)
    for _ in range(2000):
        colour.setRed(10)
    # other threads may touch None too; a leaking binding loses one reference per call
    assert sys.getrefcount(None) - before > -200
