"""Names for the temporary files of atomic saves (write a temporary file in the folder, then rename).

The temporary name must fit the file system's name limit (usually 255 bytes) even when the target's
own name is close to it: `path.name + ".XXXXXXXX.tmp"` would fail with ENAMETOOLONG for a name the
target itself could use. The prefix keeps at most 40 bytes of the target's name (whole characters).
"""

from __future__ import annotations

import os
from pathlib import Path

PREFIX_BYTES = 40


def temp_prefix(path: str | os.PathLike) -> str:
    """A short prefix for tempfile.mkstemp: '.' + the start of the target's name + '.'."""
    name = os.fsencode(Path(path).name)[:PREFIX_BYTES]
    return "." + os.fsdecode(name).encode("utf-8", "surrogateescape").decode("utf-8", "ignore") + "."
