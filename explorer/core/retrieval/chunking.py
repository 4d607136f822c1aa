"""Documents in, chunks out: text files of a folder (binary and unreadable ones refused one by one) and
the Python standard library's docstrings (the corpus every install has offline), cut into chunks.

Chunking: paragraphs (blank-line separated) are packed greedily into chunks of at most `budget` word
pieces of the embedder's tokenizer; a paragraph over the budget is cut at lines, a line over it at
words; each chunk after the first of a document repeats its predecessor's last pieces up to `overlap`
word pieces, so a sentence cut at a boundary is whole in one of the two.
"""

from __future__ import annotations

import ast
import hashlib
import os
import stat
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
MAX_FILE_BYTES = 4 * 2**20  # a text file larger than this is refused (logs, dumps): one message
STDLIB = "stdlib"  # the folder name that stands for the standard library's docstrings


@dataclass(frozen=True)
class Document:
    source: str  # path relative to the folder, with "/" (or a module name)
    text: str
    sha256: str


@dataclass(frozen=True)
class Unit:
    text: str
    line: int  # starting line, from 1
    tokens: int


@dataclass(frozen=True)
class Chunk:
    text: str
    line: int


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


# --- reading --------------------------------------------------------------------------------------------
def read_text_file(path: Path) -> str:
    """The file's text; ValueError with the reason when it is too large, binary or not UTF-8."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise ValueError("not a regular file (a FIFO, device or socket)")
    if st.st_size > MAX_FILE_BYTES:
        raise ValueError(f"too large ({st.st_size / 2**20:,.1f} MB; at most {MAX_FILE_BYTES / 2**20:.0f} MB)")
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)  # (a file that grew since: read no more than the limit)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"too large (more than {MAX_FILE_BYTES / 2**20:.0f} MB)")
    if b"\x00" in data:
        raise ValueError("binary (it holds NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def folder_documents(folder: Path, on_skip: Callable[[str, str], None]) -> Iterator[Document]:
    """Every .txt/.md/.rst/.py file under `folder` (sorted; hidden folders and links skipped). A file that
    cannot be used gives one `on_skip(source, reason)` and the walk carries on."""
    others = 0
    for root, dirs, files in os.walk(folder, followlinks=False, onerror=lambda e: on_skip(
            os.path.relpath(e.filename or str(folder), folder), f"cannot be read ({e.strerror or e})")):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            path = Path(root) / name
            source = path.relative_to(folder).as_posix()
            if not name.lower().endswith(TEXT_SUFFIXES):
                others += 1
                continue
            if path.is_symlink():
                on_skip(source, "a link (links are not followed)")
                continue
            try:
                text = read_text_file(path)
            except ValueError as exc:
                on_skip(source, str(exc))
                continue
            except OSError as exc:
                on_skip(source, f"cannot be read ({exc.strerror or exc})")
                continue
            yield Document(source, text, digest(text))
    if others:
        on_skip(f"{others} other file(s)", f"not {'/'.join(TEXT_SUFFIXES)} text: left out")


# Modules whose docstrings make the default corpus: ones a Python user meets (no tests, no GUI toolkits).
STDLIB_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http", "inspect", "io", "ipaddress",
    "json", "logging", "lzma", "mailbox", "multiprocessing", "operator", "os", "pathlib", "pickle", "pprint",
    "queue", "random", "re", "sched", "secrets", "selectors", "shlex", "shutil", "signal", "socket", "sqlite3",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "tomllib", "traceback", "typing", "unittest", "urllib", "uuid", "warnings", "weakref",
    "xml", "zipfile", "zoneinfo",
)


def stdlib_documents(on_skip: Callable[[str, str], None], modules=STDLIB_MODULES) -> Iterator[Document]:
    """One document per standard-library source file: its module, class and function docstrings, read with
    `ast` from the source (nothing is imported or run)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    for module in modules:
        base = lib / module
        files = sorted(base.rglob("*.py")) if base.is_dir() else [lib / f"{module}.py"]
        for path in files:
            if "test" in path.relative_to(lib).parts[:-1] or "tests" in path.parts:
                continue
            name = ".".join(path.relative_to(lib).with_suffix("").parts).removesuffix(".__init__")
            try:
                text = docstrings(path.read_text(encoding="utf-8"), name)
            except (OSError, SyntaxError, ValueError, UnicodeDecodeError) as exc:
                on_skip(name, f"cannot be read ({exc})")
                continue
            if text:
                yield Document(name, text, digest(text))


def docstrings(source: str, module: str) -> str:
    """The docstrings of a module's source as paragraphs headed by their qualified names."""
    tree = ast.parse(source)
    parts = []

    def visit(node, prefix: str) -> None:
        doc = ast.get_docstring(node)
        if doc:
            parts.append(f"{prefix}\n{doc.strip()}")
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and not child.name.startswith("_"):
                visit(child, f"{prefix}.{child.name}")

    visit(tree, module)
    return "\n\n".join(parts)


def documents(folder: str | os.PathLike, on_skip: Callable[[str, str], None]) -> Iterator[Document]:
    if str(folder) == STDLIB:
        return stdlib_documents(on_skip)
    return folder_documents(Path(folder), on_skip)


def stdlib_version() -> str:
    return f"python-{sys.version_info.major}.{sys.version_info.minor}"


# --- chunking -------------------------------------------------------------------------------------------
def units(text: str, count: Callable[[list[str]], list[int]], budget: int) -> list[Unit]:
    """Paragraphs, each cut at lines (and a line at words) where it is over the budget."""
    paragraphs: list[tuple[str, int]] = []
    lines = text.splitlines()
    start, buf = 1, []
    for i, line in enumerate(lines, 1):
        if line.strip():
            if not buf:
                start = i
            buf.append(line)
        elif buf:
            paragraphs.append(("\n".join(buf), start))
            buf = []
    if buf:
        paragraphs.append(("\n".join(buf), start))
    sizes = count([p for p, _ in paragraphs])
    out: list[Unit] = []
    for (para, line), n in zip(paragraphs, sizes, strict=True):
        if n <= budget:
            out.append(Unit(para, line, n))
            continue
        pieces = para.split("\n")
        for j, (piece, m) in enumerate(zip(pieces, count(pieces), strict=True)):
            if m <= budget:
                out.append(Unit(piece, line + j, m))
            else:
                out.extend(Unit(w, line + j, c) for w, c in _word_cuts(piece, count, budget))
    return out


def _word_cuts(line: str, count, budget: int) -> list[tuple[str, int]]:
    words = line.split(" ")
    sizes = count(words)
    cuts, cur, cur_n = [], [], 0
    for word, n in zip(words, sizes, strict=True):
        if cur and cur_n + n > budget:
            cuts.append((" ".join(cur), cur_n))
            cur, cur_n = [], 0
        cur.append(word)
        cur_n += n
    if cur:
        cuts.append((" ".join(cur), min(cur_n, budget)))  # a single word over the budget is cut by the embedder
    return cuts


def chunk_text(text: str, count: Callable[[list[str]], list[int]], budget: int = 200,
               overlap: int = 32) -> list[Chunk]:
    """Pack the text's units into chunks of at most `budget` word pieces, overlapping by up to `overlap`."""
    parts = units(text, count, budget)
    chunks: list[Chunk] = []
    cur: list[Unit] = []
    for unit in parts:
        if cur and sum(u.tokens for u in cur) + unit.tokens > budget:
            chunks.append(_join(cur))
            carry: list[Unit] = []
            for u in reversed(cur):  # the tail of this chunk opens the next one
                if sum(c.tokens for c in carry) + u.tokens > overlap or \
                        sum(c.tokens for c in carry) + u.tokens + unit.tokens > budget:
                    break
                carry.insert(0, u)
            if not carry and overlap > 0:  # the last paragraph is longer than the overlap: its last lines
                carry = _tail_lines(cur[-1], count, min(overlap, budget - unit.tokens))
            cur = carry
        cur.append(unit)
    if cur:
        chunks.append(_join(cur))
    return chunks


def _tail_lines(unit: Unit, count: Callable[[list[str]], list[int]], limit: int) -> list[Unit]:
    """The last whole lines of a unit that fit `limit` word pieces (none when even the last line is longer)."""
    lines = unit.text.split("\n")
    if len(lines) < 2 or limit <= 0:
        return []
    sizes = count(lines)
    taken, total = 0, 0
    for n in reversed(sizes[1:]):  # never the whole unit
        if total + n > limit:
            break
        total += n
        taken += 1
    if not taken:
        return []
    return [Unit("\n".join(lines[-taken:]), unit.line + len(lines) - taken, total)]


def _join(units_: list[Unit]) -> Chunk:
    return Chunk("\n\n".join(u.text for u in units_), units_[0].line)
