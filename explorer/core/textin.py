"""Text coming in from outside (a file, the clipboard, a paste): made into valid Unicode at the boundary.

Files the user names are read with `read_user_file`: only regular files, at most a given size.

The tokenizer refuses text without a UTF-8 form (lone surrogates); bytes that are not UTF-8 are
decoded with replacement characters. Both return warnings that the GUI shows, so nothing is
changed silently.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import InputError

REPLACEMENT = "\ufffd"


def decode_prompt_bytes(data: bytes) -> tuple[str, list[str]]:
    """Decode bytes as UTF-8 (a BOM is dropped); invalid bytes become U+FFFD, with a warning."""
    text = data.decode("utf-8-sig", errors="replace")
    warnings = []
    bad = text.count(REPLACEMENT) - data.decode("utf-8-sig", errors="ignore").count(REPLACEMENT)
    if bad:
        warnings.append(f"The text was not valid UTF-8: {bad} undecodable byte sequence(s) were replaced "
                        f"by {REPLACEMENT}.")
    clean, more = clean_text(text)
    return clean, warnings + more


def clean_text(text: str) -> tuple[str, list[str]]:
    """Replace lone UTF-16 surrogates (a broken paste) by U+FFFD; say how many were replaced.

    NUL and other control characters are kept: the tokenizers handle them (the Tokens panel shows them).
    """
    try:
        text.encode("utf-8")
        return text, []
    except UnicodeEncodeError:
        pass
    fixed = "".join(REPLACEMENT if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    count = sum(1 for a, b in zip(text, fixed, strict=True) if a != b)
    return fixed, [f"The text held {count} invalid character(s) (lone UTF-16 surrogates, from a broken copy "
                   f"or paste); they were replaced by {REPLACEMENT}."]


def read_user_file(path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file the user named, refused up front when it cannot be a text file.

    A FIFO or a device would block or never end, a folder has no text, and a file over `limit` bytes
    would crawl in the editor: each raises InputError with a sentence that says which. The type and
    size are checked again on the opened descriptor (the path may change in between) and at most
    `limit` bytes are read whatever the size claims. OSError (missing, no permission, name too long)
    becomes InputError too.
    """
    path = Path(path)
    name = path.name or str(path)
    if len(name) > 80:
        name = name[:40] + "..." + name[-30:]
    try:
        st = os.stat(path)
        _check_regular(st, name, limit, what)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except InputError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"Could not read the {what} {name}: {reason}.") from exc
    try:
        _check_regular(os.fstat(fd), name, limit, what)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise InputError(f"Could not read the {what} {name}: {exc.strerror or exc}.") from exc
    finally:
        os.close(fd)
    if total > limit:  # it grew after the size check
        raise InputError(f"The {what} {name} is larger than {_size(limit)}: refused.")
    return b"".join(chunks)


def _check_regular(st, name: str, limit: int, what: str) -> None:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise InputError(f"{name} is a folder, not a {what}: pick a file.")
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise InputError(f"{name} is {kind}, not a {what}: refused (reading it could block or never end).")
    if st.st_size > limit:
        raise InputError(f"The {what} {name} is {_size(st.st_size)}: too large (at most {_size(limit)}).")


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"
