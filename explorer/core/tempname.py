"""Atomic saves (write a temporary file in the folder, then rename) and the names of their temporary files.

The temporary name must fit the file system's name limit (usually 255 bytes) even when the target's
own name is close to it: `path.name + ".XXXXXXXX.tmp"` would fail with ENAMETOOLONG for a name the
target itself could use. The prefix keeps at most 40 bytes of the target's name (whole characters).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

PREFIX_BYTES = 40


def temp_prefix(path: str | os.PathLike) -> str:
    """A short prefix for tempfile.mkstemp: '.' + the start of the target's name + '.'."""
    name = os.fsencode(Path(path).name)[:PREFIX_BYTES]
    return "." + os.fsdecode(name).encode("utf-8", "surrogateescape").decode("utf-8", "ignore") + "."


def check_name(path: str | os.PathLike) -> None:
    """Refuse a name the folder cannot hold before writing anything (ENAMETOOLONG, with the limit)."""
    path = Path(path)
    try:
        limit = os.pathconf(path.parent or ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    size = len(os.fsencode(path.name))
    if size > limit:
        raise OSError(errno.ENAMETOOLONG, f"The file name is too long ({size} bytes; this folder allows {limit}). "
                      "Choose a shorter name", str(path))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """The one way files are saved: write a short-named temporary file in the target's folder, fsync, rename.

    Nothing half-written is ever left under the target's name: on any error the temporary file is removed
    and the target is untouched. `mode` is "wb" or "w" (UTF-8 text).
    """
    path = Path(path)
    check_name(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
