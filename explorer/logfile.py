"""The log file: `lm-explorer.log` in the user's log folder, rotated (1 MB x 3 backups).

`LM_EXPLORER_LOG_DIR` overrides the folder (tests use a temporary one). Used by the GUI and the CLI.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
from pathlib import Path

LOG_NAME = "lm-explorer.log"
MAX_BYTES = 1_000_000
BACKUPS = 3
_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s"


def log_dir() -> Path:
    env = os.environ.get("LM_EXPLORER_LOG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_log_dir("lm-explorer"))


def log_path() -> Path:
    return log_dir() / LOG_NAME


def setup_logging(console_level: int = logging.WARNING, file_level: int = logging.INFO) -> Path | None:
    """Log to the rotated file (INFO and up) and to stderr (WARNING and up); returns the file's path.

    Idempotent: a second call does not add a second handler. If the folder cannot be written, the app
    still runs and logs to stderr only (returns None).
    """
    root = logging.getLogger()
    root.setLevel(min(console_level, file_level))
    if not any(getattr(h, "_lm_explorer", False) and isinstance(h, logging.StreamHandler)
               and not isinstance(h, logging.FileHandler) for h in root.handlers):
        console = logging.StreamHandler()
        console.setLevel(console_level)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        console._lm_explorer = True
        root.addHandler(console)
    path = log_path()
    for h in root.handlers:
        if getattr(h, "_lm_explorer", False) and isinstance(h, logging.FileHandler):
            if Path(h.baseFilename) == path.resolve():
                return path
            root.removeHandler(h)
            h.close()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):  # probe now: a later failure would print a traceback per line
            pass
        handler = _FileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", delay=True)
    except (OSError, ValueError) as exc:
        logging.getLogger(__name__).warning("no log file (%s): logging to the console only", _reason(exc))
        return None
    handler.setLevel(file_level)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler._lm_explorer = True
    root.addHandler(handler)
    return path


def _reason(exc: BaseException) -> str:
    return f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else str(exc)


class _FileHandler(logging.handlers.RotatingFileHandler):
    """The rotated log file; if writing fails later (folder made read-only, disk full), it removes itself and
    says so once on the console, instead of logging's traceback for every line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        root = logging.getLogger()
        if self in root.handlers:
            root.removeHandler(self)
            with contextlib.suppress(OSError):
                self.close()
            logging.getLogger(__name__).warning("the log file %s cannot be written (%s): logging to the console "
                                                "only from now on", self.baseFilename, _reason(exc))
