"""The lens-fitting corpus: text every install has offline, the Python standard library.

Each stdlib module (tests, idlelib, site-packages and a few others left out) gives two documents, its
docstrings as prose and its source; files are split into train and held-out by a hash of their path (1 in
10 held out), so held-out figures come from files the fit never saw.
"""

from __future__ import annotations

import ast
import sysconfig
import zlib
from pathlib import Path

import numpy as np
import torch

from .lens import LensError

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip",
              "__pycache__", "tkinter", "pydoc_data"}
_MAX_FILE_BYTES = 400_000
_HELD_OUT_MOD = 10


def stdlib_files(root: Path | None = None) -> list[Path]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if not (_SKIP_DIRS & set(p.relative_to(root).parts[:-1])) and p.stat().st_size <= _MAX_FILE_BYTES]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_files(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """(train, held-out): a file is held out when the CRC32 of its path (relative to the stdlib when inside it)
    is 0 mod 10; a list too short for that alternates."""
    root = Path(sysconfig.get_paths()["stdlib"])

    def name(f: Path) -> str:
        return f.relative_to(root).as_posix() if f.is_relative_to(root) else f.as_posix()

    held = [f for f in files if zlib.crc32(name(f).encode()) % _HELD_OUT_MOD == 0]
    train = [f for f in files if f not in set(held)]
    if not held or not train:
        return files[1::2] or files, files[::2]
    return train, held


def documents(path: Path) -> list[str]:
    """A module's docstrings (as prose) and its source."""
    try:
        source = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    docs: list[str] = []
    try:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
    except (SyntaxError, ValueError):
        pass
    return [t for t in ("\n\n".join(docs), source) if len(t) > 200]


class Windows:
    """Random token windows of `seq_len` from a list of files (tokenised lazily, seeded)."""

    def __init__(self, tokenizer, files: list[Path], seq_len: int, seed: int):
        if not files:
            raise LensError("No corpus files: the Python standard library was not found.")
        self.tokenizer, self.files, self.seq_len = tokenizer, files, seq_len
        self.rng = np.random.default_rng(seed)
        self._ids: dict[tuple[int, int], np.ndarray] = {}

    def _doc_ids(self, f: int, d: int) -> np.ndarray | None:
        key = (f, d)
        if key not in self._ids:
            docs = documents(self.files[f])
            ids = self.tokenizer(docs[d][:200_000], add_special_tokens=False)["input_ids"] if d < len(docs) else []
            self._ids[key] = np.asarray(ids, np.int64)
        ids = self._ids[key]
        return ids if ids.size > self.seq_len else None

    def sample(self, n: int) -> torch.Tensor:
        """[n, seq_len] token ids."""
        out = []
        for _ in range(200 * n):
            if len(out) == n:
                break
            ids = self._doc_ids(int(self.rng.integers(len(self.files))), int(self.rng.integers(2)))
            if ids is None:
                continue
            lo = int(self.rng.integers(ids.size - self.seq_len))
            out.append(ids[lo:lo + self.seq_len])
        if len(out) < n:
            raise LensError("The corpus has too few documents longer than one window.")
        return torch.from_numpy(np.stack(out))  # [n, seq_len]


