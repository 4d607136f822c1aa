"""Persistent preferences as plain data: recent prompts and models, geometry, dock layout, theme.

Why not QSettings: PySide's QSettings unpickles `@Variant(...PyObjectWrapper...)` values from its
.ini files as soon as any key is read, so a settings file could run code. This store is a JSON file
that only ever holds strings, finite numbers, booleans and lists/dicts of them; Qt never parses it.
Every key the app reads has a validator (type, range, finiteness, size); a value that fails is
dropped with a note in the log and the app starts with the default, never fails. The window layout
is plain records too (layout_state.py): Qt's binary saveState is never stored, because a few
changed bytes of it crash QMainWindow.restoreState.

`open_settings(path)` gives the store at `path` (tests use a temporary one); without a path it is
`settings.json` in the per-user config folder. A file that is not a settings file (an old QSettings
.ini, anything else) is never parsed by Qt: the app starts from defaults with a note; the per-user
file is moved aside to `<name>.unreadable`, a file named with `--settings` is left untouched (and
nothing is saved to it). `disarm_qt_unpickling` also stops PySide unpickling values from Qt's own
settings files (the file dialog's).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.tempname import atomic_write
from ..core.textin import read_user_file

log = logging.getLogger(__name__)
ORGANISATION = "LM Explorer"
APPLICATION = "lm-explorer"
MAX_RECENT = 10
MAX_FILE = 16 * 2**20  # bytes: a settings file above this is not read
MAX_TEXT = 1_000_000  # characters of a stored prompt or system prompt
MAX_RECENT_TEXT = 20_000  # characters of one recent prompt (run_control keeps longer ones out)
MAX_PATH_TEXT = 4096  # characters of a model path or name
INT32_MAX = 2**31 - 1
MAX_UNKNOWN_KEYS = 100  # keys outside SCHEMA kept from a file (plain data only)


# --- validators: each returns the clean value or raises ValueError with the reason ------------------
def _text(limit: int, nul_ok: bool = True) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"expected text, got {type(v).__name__}")
        if len(v) > limit:
            raise ValueError(f"text of {len(v):,} characters (at most {limit:,})")
        if not nul_ok and "\0" in v:
            raise ValueError("text holds a NUL character")
        return v
    return check


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return v
    return check


def _number(lo: float, hi: float, integer: bool = False) -> Callable[[Any], float | int]:
    def check(v: Any) -> float | int:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"expected a number, got {type(v).__name__}")
        if integer and not isinstance(v, int):
            if not (isinstance(v, float) and math.isfinite(v) and v.is_integer()):
                raise ValueError(f"expected a whole number, got {v!r}")
            v = int(v)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{v!r} is not a finite number")
        if not lo <= v <= hi:
            raise ValueError(f"{v!r} is outside [{lo}, {hi}]")
        return int(v) if integer else float(v)
    return check


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true/false, got {type(v).__name__}")
    return v


def _text_list(limit: int, nul_ok: bool = True) -> Callable[[Any], list[str]]:
    item = _text(limit, nul_ok)

    def check(v: Any) -> list[str]:
        if not isinstance(v, list):
            raise ValueError(f"expected a list, got {type(v).__name__}")
        return [item(x) for x in v[:MAX_RECENT] if x != ""]
    return check


def _int_list(n: int, lo: int, hi: int, what: str) -> Callable[[Any], list[int]]:
    item = _number(lo, hi, integer=True)

    def check(v: Any) -> list[int]:
        if not isinstance(v, list) or len(v) != n:
            raise ValueError(f"expected {what}")
        return [item(x) for x in v]
    return check


AREAS = ("left", "right", "top", "bottom")
DOCK_RECORD: dict[str, Callable[[Any], Any]] = {
    "name": _text(64, nul_ok=False), "area": _text(8), "order": _number(0, 1000, integer=True),
    "group": _number(0, 1000, integer=True), "visible": _boolean, "floating": _boolean, "current": _boolean,
    "size": _int_list(2, 0, 100_000, "[width, height]"),
    "rect": _int_list(4, -100_000, 100_000, "[x, y, width, height]"),
}


def _dock_record(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or not set(DOCK_RECORD) - {"rect"} <= set(v) or set(v) - set(DOCK_RECORD):
        raise ValueError("a dock record has missing or unknown fields")
    record = {k: DOCK_RECORD[k](x) for k, x in v.items()}
    if record["area"] not in AREAS:
        raise ValueError(f"unknown dock area {record['area']!r}")
    return record


def _layout(v: Any) -> dict[str, Any]:
    """The window layout (layout_state.capture): plain records, never Qt's binary state (it can crash Qt)."""
    if not isinstance(v, dict) or set(v) - {"docks", "window", "maximized"}:
        raise ValueError("expected {docks, window, maximized}")
    out: dict[str, Any] = {}
    if "docks" in v:
        if not isinstance(v["docks"], list) or len(v["docks"]) > 64:
            raise ValueError("docks: expected a list of at most 64 records")
        out["docks"] = [_dock_record(r) for r in v["docks"]]
        if len({r["name"] for r in out["docks"]}) != len(out["docks"]):
            raise ValueError("docks: a name appears twice")
    if "window" in v:
        x, y, w, h = _int_list(4, -100_000, 100_000, "[x, y, width, height]")(v["window"])
        if w < 1 or h < 1:
            raise ValueError("the window size must be positive")
        out["window"] = [x, y, w, h]
    if "maximized" in v:
        out["maximized"] = _boolean(v["maximized"])
    return out


PROMPT_STATE: dict[str, Callable[[Any], Any]] = {  # the prompt bar's to_state(); ranges are its widgets'
    "prompt": _text(MAX_TEXT), "system": _text(MAX_TEXT), "chat": _boolean, "special_as_text": _boolean,
    "max_new": _number(0, 4096, integer=True), "temperature": _number(0.0, 5.0),
    "top_k": _number(0, 100_000, integer=True), "top_p": _number(0.01, 1.0),
    "seed": _number(0, INT32_MAX, integer=True),
}


def _prompt_state(v: Any) -> dict[str, Any]:
    """Each field checked on its own: a bad one is dropped (noted), the others kept."""
    if not isinstance(v, dict):
        raise ValueError(f"expected a mapping, got {type(v).__name__}")
    out = {}
    for key, value in v.items():
        check = PROMPT_STATE.get(key)
        if check is None:
            log.info("settings: prompt_state.%s is not a known field; ignored", str(key)[:40])
            continue
        try:
            out[key] = check(value)
        except ValueError as exc:
            log.warning("settings: prompt_state.%s ignored: %s", key, exc)
    return out


SCHEMA: dict[str, Callable[[Any], Any]] = {  # every key the app reads (grep settings.value)
    "model": _text(MAX_PATH_TEXT, nul_ok=False),
    "recent_models": _text_list(MAX_PATH_TEXT, nul_ok=False),
    "recent_prompts": _text_list(MAX_RECENT_TEXT),
    "theme": _text(64),
    "capture_budget_gib": _number(1e-9, 65536.0),  # GiB (the dialog offers 0.01 .. 1024)
    "engine": _choice("process", "thread"),  # where the model runs (explorer/ui/worker.py)
    "engine_threads": _number(0, 256, integer=True),  # torch threads of the engine; 0: auto (engine_process.py)
    "prompt_state": _prompt_state,
    "layout": _layout,
    "layout_plan": _text(16),  # the screen plan the saved layout was arranged under (screen_fit.PLANS)
    "zoom": _number(0.1, 10.0),  # View > Zoom (theme.ZOOM_RANGE clamps it)
}


def _plain(v: Any, depth: int = 0) -> Any:
    """Keys outside the schema may hold only small plain data (no NaN, no deep nesting)."""
    if depth > 4:
        raise ValueError("nested too deeply")
    if v is None or isinstance(v, (bool, str)):
        return _text(MAX_TEXT)(v) if isinstance(v, str) else v
    if isinstance(v, int):
        return _number(-(2**63), 2**63 - 1, integer=True)(v)
    if isinstance(v, float):
        return _number(-math.inf, math.inf)(v)
    if isinstance(v, (list, tuple)) and len(v) <= 1000:
        return [_plain(x, depth + 1) for x in v]
    if isinstance(v, dict) and len(v) <= 1000 and all(isinstance(k, str) for k in v):
        return {k: _plain(x, depth + 1) for k, x in v.items()}
    raise ValueError(f"{type(v).__name__} is not plain data")


def validate(key: str, value: Any) -> Any:
    """The clean value for `key`, or ValueError with the reason."""
    return SCHEMA.get(key, _plain)(value)


class Settings:
    """A small key/value store with QSettings' method names (value, setValue, contains, remove, sync).

    `owned`: the file is the app's own (the per-user default). A file there that is not a settings file
    is moved aside to `<name>.unreadable`; a file the user named (`--settings`) that is not one, or is not
    a regular file, is never changed: the session runs on defaults and saves nothing (with a note).
    """

    def __init__(self, path: str | Path, owned: bool = True):
        self.path = Path(path)
        self.owned = owned
        self.read_only = False
        self._data: dict[str, Any] = {}
        self._write_failed = False
        self._load()

    # --- reading ----------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            if not os.path.lexists(self.path):
                return
            raw = read_user_file(self.path, MAX_FILE, "settings file")
        except InputError as exc:
            self.read_only = True  # never replace what is there (a FIFO, a folder, a huge file...)
            log.warning("settings not read, starting from defaults (and not saved to that path): %s", exc)
            return
        if not raw.strip():
            return
        try:
            data = json.loads(raw.decode("utf-8"))  # NaN/Infinity parse; the validators refuse them
            if not isinstance(data, dict):
                raise ValueError("the file is not a JSON object")
        except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
            # not ours (e.g. an old QSettings .ini, whose values Qt would unpickle): never parsed by Qt
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            where = "left as it is; settings are not saved this session"
            if self.owned:
                aside = self.path.with_name(self.path.name + ".unreadable")
                try:
                    os.replace(self.path, aside)
                    where = f"moved to {aside}"
                except OSError:
                    self.read_only = True
            else:
                self.read_only = True
            log.warning("settings file %s is not a plain JSON settings file (%s): ignored, %s; starting from "
                        "defaults", self.path, reason, where)
            return
        unknown = [k for k in data if k not in SCHEMA]
        if len(unknown) > MAX_UNKNOWN_KEYS:
            log.warning("settings: %d keys the app does not use; only the first %d kept", len(unknown),
                        MAX_UNKNOWN_KEYS)
            for key in unknown[MAX_UNKNOWN_KEYS:]:
                del data[key]
        for key, value in data.items():
            try:
                self._data[key] = validate(key, value)
            except (ValueError, RecursionError) as exc:
                log.warning("settings: %s ignored (%s); using the default", str(key)[:60], exc)

    def value(self, key: str, default: Any = None) -> Any:
        """A copy of the stored value (changing it changes nothing stored), or `default`."""
        return copy.deepcopy(self._data[key]) if key in self._data else default

    def contains(self, key: str) -> bool:
        return key in self._data

    def allKeys(self) -> list[str]:  # noqa: N802 - QSettings' name
        return list(self._data)

    def fileName(self) -> str:  # noqa: N802 - QSettings' name
        return str(self.path)

    # --- writing ----------------------------------------------------------------------------------
    def setValue(self, key: str, value: Any) -> None:  # noqa: N802 - QSettings' name
        """Store a plain value (a programming error raises ValueError: nothing else is ever written)."""
        if isinstance(value, tuple):
            value = list(value)
        self._data[key] = validate(key, value)
        self.sync()

    def remove(self, key: str) -> None:
        if self._data.pop(key, None) is not None:
            self.sync()

    def sync(self) -> None:
        """Write atomically (temporary file + rename); a failure is logged once, never raised."""
        if self.read_only:
            return
        try:
            text = json.dumps(self._data, allow_nan=False, indent=1)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path, "w") as fh:
                fh.write(text)
        except (OSError, ValueError) as exc:
            if not self._write_failed:
                log.warning("settings not saved to %s: %s (they stay for this session)", self.path, exc)
            self._write_failed = True
        else:
            self._write_failed = False


# --- PySide's own unpickling of settings values ----------------------------------------------------------
_DISARMED: list[bool] = []


def _refuse_unpickle(data, *args, **kwargs):
    """Stands in for pickle.loads inside PySide: the stored object becomes None (raising here crashes PySide)."""
    log.warning("refused to unpickle a Python object stored in a Qt settings file (%d bytes): Qt settings "
                "values are never run as code; it reads as None", len(data) if hasattr(data, "__len__") else -1)


def disarm_qt_unpickling() -> bool:
    """Make PySide refuse every `@Variant(...PyObjectWrapper...)` value it reads from any Qt settings file
    (the value reads as None, with a note in the log).

    Qt's own widgets read settings too (a QFileDialog reads ~/.config/QtProject.conf), and PySide turns a
    stored Python object back into one with pickle: code. PySide looks `pickle.loads` up once, at its first
    such value, and keeps it; so the first such value it ever reads is a harmless one made here, read
    while `pickle.loads` is a function that refuses. From then on, for the whole process, it refuses.
    Returns True when PySide now holds the refusing function (False if it had cached the real one already).
    """
    if _DISARMED:
        return _DISARMED[0]
    from PySide6.QtCore import QSettings

    class _Harmless:
        def __reduce__(self):
            return (int, (0,))

    calls = []

    def refuse_and_count(data, *args, **kwargs):
        calls.append(1)
        return _refuse_unpickle(data)

    with tempfile.TemporaryDirectory(prefix="lmx-qt-") as tmp:
        written = Path(tmp) / "w.ini"
        q = QSettings(str(written), QSettings.IniFormat)
        q.setValue("x", _Harmless())
        q.sync()
        del q
        fresh = Path(tmp) / "r.ini"  # a file Qt has never cached: its value is really deserialised
        fresh.write_bytes(written.read_bytes())
        real, pickle.loads = pickle.loads, refuse_and_count
        try:
            logging.disable(logging.WARNING)  # the priming value is ours: no note for it
            QSettings(str(fresh), QSettings.IniFormat).value("x")
        finally:
            logging.disable(logging.NOTSET)
            pickle.loads = real
    _DISARMED.append(bool(calls))
    if not calls:
        log.warning("could not disarm PySide's unpickling of Qt settings values (it was used before)")
    return _DISARMED[0]


def default_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir(APPLICATION, appauthor=False)) / "settings.json"


def open_settings(path: str | Path | None = None) -> Settings:
    """The per-user settings (owned by the app), or the file at `path` (changed only if it is a settings file)."""
    disarm_qt_unpickling()
    return Settings(default_path()) if path is None else Settings(path, owned=False)


# --- helpers for values the window stores -----------------------------------------------------------
def recent(settings: Settings, key: str) -> list[str]:
    value = settings.value(key, [])
    if isinstance(value, str):
        value = [value]
    return [v for v in (value or []) if isinstance(v, str) and v]


def push_recent(settings: Settings, key: str, item: str) -> list[str]:
    items = [item] + [v for v in recent(settings, key) if v != item]
    items = items[:MAX_RECENT]
    try:
        settings.setValue(key, items)
    except ValueError as exc:  # e.g. an item too long for the store: keep the list as it was
        log.info("settings: %s not updated (%s)", key, exc)
        return recent(settings, key)
    return items
