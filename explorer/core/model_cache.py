"""The converted-model cache: entries keyed by the source's content, every file checksummed, safe to share.

- An entry's name is the model name plus the SHA-256 of the source file (never its name, size or
  time), so two different files can never share an entry.
- The manifest lists every file of the entry with its size and SHA-256; an entry is used only if
  exactly those files are there and all of them match (config and tokenizer as well as the weights).
- Entries are written into a temporary folder and renamed into place under a per-entry lock, so two
  processes converting the same model both succeed; temporary folders left by a killed conversion
  are removed the next time the cache is used (a live conversion holds its lock, so its folder is kept).
- Content digests of large source files are remembered by their file identity (device, inode, size,
  modification and change times), so a file is hashed once, not on every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .tempname import atomic_write

log = logging.getLogger(__name__)
MANIFEST = "explorer-manifest.json"
CACHE_FORMAT = 2
_LAYOUT = "v2"  # entries of earlier formats (in models/ itself) are left alone
_TMP, _TRASH = ".tmp-", ".trash-"
_swept = False


def cache_root() -> Path:
    """Per-user cache folder; LM_EXPLORER_CACHE overrides it (tests use a temporary one)."""
    env = os.environ.get("LM_EXPLORER_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("lm-explorer"))


def models_dir() -> Path:
    return cache_root() / "models" / _LAYOUT


def entry_dir(name: str, source_sha256: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80].lstrip(".") or "model"
    return models_dir() / f"{safe}-{source_sha256[:16]}"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def content_sha256(path: Path) -> str:
    """The file's SHA-256, remembered by its identity in the cache (recomputed whenever the file changes)."""
    real = Path(path).resolve()
    memo_file = cache_root() / "digests.json"
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
        known = memo.get(str(real)) if isinstance(memo, dict) else None
    except (OSError, ValueError):
        memo, known = {}, None
    identity = _identity(real)
    if isinstance(known, dict) and known.get("identity") == identity and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = sha256_file(real)
    if _identity(real) == identity:  # unchanged while it was read
        memo = memo if isinstance(memo, dict) else {}
        memo[str(real)] = {"identity": identity, "sha256": digest}
        with contextlib.suppress(OSError):
            _write_atomic(memo_file, json.dumps(memo))
    return digest


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        fh.write(text)


# --- manifest -------------------------------------------------------------------------------------


def entry_valid(entry: Path, only: tuple[str, ...] | None = None) -> bool:
    """True when the manifest lists exactly the entry's files and every one (or every one in `only`) matches."""
    try:
        meta = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
        files = meta["files"]
        if meta.get("format") != CACHE_FORMAT or not isinstance(files, dict) or not files:
            return False
        present = {p.relative_to(entry).as_posix() for p in entry.rglob("*") if not p.is_dir()} - {MANIFEST}
        if present != set(files):
            return False
        for name, expected in files.items():
            if only is not None and name not in only:
                continue
            path = entry / name
            if path.is_symlink() or path.stat().st_size != expected["size"] or sha256_file(path) != expected["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _manifest(folder: Path, source: str, source_sha256: str) -> dict[str, Any]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if not p.is_dir()):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return {"format": CACHE_FORMAT, "source": source, "source_sha256": source_sha256, "files": files}


# --- writing: lock, temporary folder, rename ------------------------------------------------------


@contextlib.contextmanager
def entry_lock(entry: Path, on_wait: Callable[[], None] | None = None, timeout: float = 1800.0) -> Iterator[None]:
    """An exclusive lock on one cache entry (between processes); OSError when the cache is not writable."""
    locks = entry.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    fh = open(locks / (entry.name + ".lock"), "a+b")  # noqa: SIM115 - held for the block
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; the rename below still tolerates another writer
            yield
            return
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    on_wait()
                    told = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process holds the cache lock of {entry.name}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


def _lock_is_free(entry: Path) -> bool:
    try:
        import fcntl
    except ImportError:
        return False
    try:
        with open(entry.parent / ".locks" / (entry.name + ".lock"), "a+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return True
    except OSError:
        return False


def sweep_stale(force: bool = False) -> list[Path]:
    """Remove temporary folders that killed conversions left (once per process unless forced)."""
    global _swept
    if _swept and not force:
        return []
    _swept = True
    removed = []
    root = models_dir()
    try:
        leftovers = [p for p in root.iterdir() if _TMP in p.name or _TRASH in p.name]
    except OSError:
        return []
    for path in leftovers:
        owner = root / path.name.split(_TMP if _TMP in path.name else _TRASH)[0]
        if _lock_is_free(owner):  # nobody is converting this entry now: the folder is stale
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d temporary folder(s) left by an interrupted conversion", len(removed))
    return removed


def write_entry(entry: Path, fill: Callable[[Path], None], source: str, source_sha256: str) -> None:
    """Write an entry: `fill(tmp)` writes the files into a temporary folder, which is then renamed into place.

    Call it holding `entry_lock(entry)`. If a valid entry appeared meanwhile (another process), it is kept.
    Raises OSError when the cache cannot be written (read-only, full); the temporary folder is removed.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + _TMP, dir=entry.parent))
    try:
        fill(tmp)
        meta = _manifest(tmp, source, source_sha256)
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if entry_valid(entry):
            return  # another process finished first: its entry is the same content
        if entry.exists():  # a damaged entry: move it aside whole, then remove it
            trash = entry.with_name(f"{entry.name}{_TRASH}{os.getpid()}-{time.monotonic_ns()}")
            os.replace(entry, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
