"""A retrieval index: a folder holding `index.json` (what was indexed, a content hash per file) and the
vector store's files. Building again re-embeds only files whose content changed.

    documents -> (unchanged? skip) -> chunks -> MiniLM embeddings -> vector store; manifest after each flush

Progress is reported per file, Stop is honoured between batches, and a stopped or failed build keeps
everything it finished (the manifest lists exactly the files whose chunks are stored).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import catalogue
from ..errors import Cancelled, RetrievalError
from ..model_cache import cache_root
from ..tempname import atomic_write
from .chunking import STDLIB, Document, chunk_text, documents
from .embed import EMBEDDER, Embedder, embedder
from .records import RetrievedChunk
from .store import ChunkRow, Hit, VectorStore, open_store

MANIFEST = "index.json"
FORMAT, VERSION = "lm-explorer-index", 1
STORE = "lancedb"
DB_FOLDER = "db"
MAX_MANIFEST_BYTES = 64 * 2**20
FLUSH_ROWS = 512
Progress = Callable[[float, str], None]


def default_index_dir(name: str = STDLIB) -> Path:
    """Where an index lives unless told otherwise: the user cache (LM_EXPLORER_CACHE overrides it)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80].lstrip(".") or "index"
    return cache_root() / "indexes" / safe


@dataclass
class BuildReport:
    index: str
    added: int = 0  # files new to the index
    updated: int = 0  # files whose content changed
    removed: int = 0  # files gone from the folder
    unchanged: int = 0
    chunks_embedded: int = 0
    total_chunks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0
    embed_seconds: float = 0.0
    store_seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.total_chunks:,} chunks in {self.index}: {self.added} new, {self.updated} changed, "
                f"{self.removed} removed, {self.unchanged} unchanged file(s); {self.chunks_embedded:,} chunks "
                f"embedded in {self.seconds:.1f} s" + (f"; {len(self.skipped)} skipped" if self.skipped else ""))


class Index:
    """An opened index folder: its manifest and its vector store."""

    def __init__(self, path: Path, manifest: dict, store: VectorStore):
        self.path, self.manifest, self.store = path, manifest, store

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest["files"]

    @property
    def embedder_name(self) -> str:
        return self.manifest["embedder"]

    def count(self) -> int:
        return self.store.count()

    def search_vector(self, vector: np.ndarray, k: int) -> list[Hit]:
        return self.store.search(vector, k)

    def search(self, query: str, k: int = 3, emb: Embedder | None = None) -> list[RetrievedChunk]:
        """The `k` chunks closest to `query` (best first). RetrievalError when the index is empty."""
        if self.count() == 0:
            raise RetrievalError(f"The index at {self.path} holds no chunks: build it from a folder with "
                                 ".txt/.md/.rst/.py files (lm-explorer index build FOLDER --out INDEX_DIR).")
        emb = emb or embedder(self.embedder_name)
        vector = emb.embed([query])[0]  # [dim]
        return [RetrievedChunk(h.row.source, h.row.text, h.score, h.row.line, h.row.chunk)
                for h in self.search_vector(vector, k)]


def read_manifest(path: Path) -> dict:
    """The index's manifest, checked for size and types (RetrievalError)."""
    file = path / MANIFEST
    if not path.is_dir():
        raise RetrievalError(f"No index at {path}: build one in the Retrieval panel, or with "
                             f"`lm-explorer index build FOLDER --out {path}`.")
    if not file.is_file():
        raise RetrievalError(f"{path} holds no LM Explorer index ({MANIFEST} is missing).")
    if file.stat().st_size > MAX_MANIFEST_BYTES:
        raise RetrievalError(f"{file} is too large to be an index manifest.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RetrievalError(f"{file} is damaged ({str(exc)[:80]}).") from None
    ok = (isinstance(data, dict) and data.get("format") == FORMAT and type(data.get("version")) is int
          and isinstance(data.get("store"), str) and isinstance(data.get("embedder"), str)
          and type(data.get("dim")) is int and 0 < data["dim"] <= 65536 and isinstance(data.get("files"), dict)
          and all(isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("sha256"), str)
                  and type(v.get("chunks")) is int for k, v in data["files"].items()))
    if not ok:
        raise RetrievalError(f"{file} is not an LM Explorer index manifest (or it is damaged).")
    entry = catalogue.get(data["embedder"])
    if entry is None or entry.kind != "encoder":  # never a path or hub id an index file names: that would load it
        raise RetrievalError(f"The index at {path} names the embedder '{data['embedder'][:60]}', which is not a "
                             "built-in encoder; it was not opened.")
    if data["version"] > VERSION:
        raise RetrievalError(f"The index at {path} was built by a newer LM Explorer; update to use it.")
    return data


def open_index(path: str | os.PathLike) -> Index:
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    return Index(path, manifest, open_store(manifest["store"], str(path / DB_FOLDER), manifest["dim"]))


def _write_manifest(path: Path, manifest: dict) -> None:
    with atomic_write(path / MANIFEST, "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)


def _prepare_out(out: Path, emb: Embedder, budget: int, overlap: int, corpus: str) -> dict:
    """The manifest to update: the existing one, or a new one for an empty or missing folder."""
    fresh = {"format": FORMAT, "version": VERSION, "store": STORE, "embedder": emb.name, "dim": emb.dim,
             "budget": budget, "overlap": overlap, "corpus": corpus, "files": {}}
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        if manifest["embedder"] != emb.name or manifest["dim"] != emb.dim or manifest["store"] != STORE:
            raise RetrievalError(f"The index at {out} was built with {manifest['embedder']} "
                                 f"({manifest['dim']} dimensions, {manifest['store']}); build into a new folder.")
        if (manifest.get("budget"), manifest.get("overlap")) != (budget, overlap):
            manifest = {**manifest, "budget": budget, "overlap": overlap}
            manifest["files"] = {k: {**v, "sha256": ""} for k, v in manifest["files"].items()}  # re-chunk all
        return {**manifest, "corpus": corpus}
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RetrievalError(f"{out} is not empty and holds no LM Explorer index: pick a new folder for it.")
    out.mkdir(parents=True, exist_ok=True)
    return fresh


def build_index(folder: str | os.PathLike, out: str | os.PathLike | None = None, *, emb: Embedder | None = None,
                budget: int = 200, overlap: int = 32, progress: Progress | None = None,
                cancel: threading.Event | None = None,
                on_skip: Callable[[str, str], None] | None = None) -> BuildReport:
    """Build or update the index of `folder` ("stdlib": the standard library's docstrings) in `out`.

    Raises Cancelled when `cancel` is set (what was finished is kept) and RetrievalError for a folder
    that is missing or gives no text at all. Files that cannot be used are reported through `on_skip`
    (and in the report) one by one; the build carries on."""
    started = time.perf_counter()
    corpus = STDLIB if str(folder) == STDLIB else str(Path(folder).expanduser().resolve())
    if corpus != STDLIB and not Path(corpus).is_dir():
        raise RetrievalError(f"{folder} is not a folder: pick a folder of .txt/.md/.rst/.py files.")
    out = Path(out).expanduser() if out is not None else default_index_dir(Path(corpus).name or "index")
    emb = emb or embedder(EMBEDDER)
    progress = progress or (lambda _f, _m: None)
    report = BuildReport(str(out))

    def skip(source: str, reason: str) -> None:
        report.skipped.append((source, reason))
        if on_skip is not None:
            on_skip(source, reason)

    manifest = _prepare_out(out, emb, budget, overlap, corpus)
    store = open_store(STORE, str(out / DB_FOLDER), emb.dim)
    progress(0.0, "Reading files")
    docs = list(documents(corpus, skip))
    if not docs and not manifest["files"]:
        raise RetrievalError(f"{folder} holds no readable .txt/.md/.rst/.py files: nothing to index"
                             + (f" ({len(report.skipped)} skipped)." if report.skipped else "."))
    files = manifest["files"]
    present = {d.source for d in docs}
    gone = sorted(set(files) - present)
    if gone:
        store.delete_sources(gone)
        for source in gone:
            files.pop(source)
        report.removed = len(gone)
        _write_manifest(out, manifest)
    changed = [d for d in docs if files.get(d.source, {}).get("sha256") != d.sha256]
    report.unchanged = len(docs) - len(changed)
    pending = _Pending()
    try:
        for i, doc in enumerate(changed):
            if cancel is not None and cancel.is_set():
                raise Cancelled("Indexing cancelled.")
            progress(i / max(1, len(changed)), f"Embedding {doc.source}")
            t0 = time.perf_counter()
            chunks = chunk_text(doc.text, emb.count_tokens, budget, overlap)
            vectors = emb.embed([c.text for c in chunks], cancel=cancel)  # [chunks, dim]
            report.embed_seconds += time.perf_counter() - t0
            pending.add(doc, [ChunkRow(doc.source, j, c.line, c.text) for j, c in enumerate(chunks)], vectors,
                        new=doc.source not in files)
            if len(pending.rows) >= FLUSH_ROWS:
                report.store_seconds += pending.flush(store, files, report)
                _write_manifest(out, manifest)
    finally:  # a stop or a failure keeps every file that was embedded completely
        if pending.docs:
            report.store_seconds += pending.flush(store, files, report)
            _write_manifest(out, manifest)
    if changed or gone:
        t0 = time.perf_counter()
        getattr(store, "optimize", lambda: None)()
        report.store_seconds += time.perf_counter() - t0
    report.total_chunks = store.count()
    report.seconds = time.perf_counter() - started
    progress(1.0, report.summary())
    return report


@dataclass
class _Pending:
    docs: list[tuple[Document, int, bool]] = field(default_factory=list)  # (doc, chunks, new)
    rows: list[ChunkRow] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, doc: Document, rows: list[ChunkRow], vectors: np.ndarray, new: bool) -> None:
        self.docs.append((doc, len(rows), new))
        self.rows += rows
        self.vectors.append(vectors)

    def flush(self, store: VectorStore, files: dict, report: BuildReport) -> float:
        t0 = time.perf_counter()
        store.delete_sources([d.source for d, _n, _new in self.docs])  # also rows an interrupted build left
        if self.rows:
            store.add(self.rows, np.concatenate(self.vectors))
        for doc, n, new in self.docs:
            files[doc.source] = {"sha256": doc.sha256, "chunks": n}
            report.added += new
            report.updated += not new
            report.chunks_embedded += n
        self.docs, self.rows, self.vectors = [], [], []
        return time.perf_counter() - t0
