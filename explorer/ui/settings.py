"""Persistent preferences (QSettings): recent prompts and models, geometry, dock layout, theme.

`open_settings(path)` gives an ini file at `path` (tests use a temporary one); without a path
it is the per-user store of organisation "LM Explorer", application "lm-explorer".
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

ORGANISATION = "LM Explorer"
APPLICATION = "lm-explorer"
MAX_RECENT = 10


def open_settings(path: str | Path | None = None) -> QSettings:
    if path is not None:
        return QSettings(str(path), QSettings.IniFormat)
    return QSettings(QSettings.IniFormat, QSettings.UserScope, ORGANISATION, APPLICATION)


def recent(settings: QSettings, key: str) -> list[str]:
    value = settings.value(key, [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in (value or []) if str(v)]


def push_recent(settings: QSettings, key: str, item: str) -> list[str]:
    items = [item] + [v for v in recent(settings, key) if v != item]
    items = items[:MAX_RECENT]
    settings.setValue(key, items)
    return items
