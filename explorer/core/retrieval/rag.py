"""Retrieval-augmented prompts: the question's top chunks inserted before it, as retrieval tokens.

    question -> MiniLM embedding -> index search (top k) -> "Context: [1] source / text ... Question: q"

The inserted layout is one function (`compose`), so the chunks' character (and token) ranges in a run can
always be found again from the request alone, also in a saved run.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from ..errors import Cancelled, RetrievalError
from ..events import RunRequest, TokenKind
from .records import MAX_K, Retrieval, RetrievedChunk

INTRO = "Use the passages below to answer.\n\n"
QUESTION = "Question: "


def compose(question: str, chunks: tuple[RetrievedChunk, ...]) -> tuple[str, list[tuple[int, int, TokenKind | None]]]:
    """The message with the chunks inserted, and its pieces as (start, end, kind) character ranges: the
    chunks (kind RETRIEVED, each "[i] source" and its text) and the glue around them (kind None: the
    message's own kind)."""
    parts: list[tuple[str, TokenKind | None]] = [(INTRO, None)]
    for i, chunk in enumerate(chunks, 1):
        if i > 1:
            parts.append(("\n\n", None))
        parts.append((f"[{i}] {chunk.source}\n{chunk.text.strip()}", TokenKind.RETRIEVED))
    parts.append((f"\n\n{QUESTION}{question}", None))
    pieces, cursor = [], 0
    for text, kind in parts:
        pieces.append((cursor, cursor + len(text), kind))
        cursor += len(text)
    return "".join(t for t, _ in parts), pieces


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise RetrievalError(f"The number of chunks to retrieve must be a whole number from 1 to {MAX_K} (got {k!r}).")
    return int(k)


def resolve(request: RunRequest, cancel: threading.Event | None = None) -> RunRequest:
    """The request with its retrieval searched (the chunks filled in); unchanged when it has none or when it
    was searched already. Runs MiniLM: call it where model work runs (the engine thread, or the API caller)."""
    spec: Retrieval | None = request.retrieval
    if spec is None or spec.searched:
        return request
    from .index import open_index

    k = check_k(spec.k)
    if not request.prompt.strip():
        raise RetrievalError("The question is empty: type a question to retrieve passages for.")
    if cancel is not None and cancel.is_set():
        raise Cancelled("Run cancelled.")
    chunks = tuple(open_index(spec.index).search(request.prompt, k))
    return replace(request, retrieval=replace(spec, k=k, chunks=chunks, searched=True))


def chunk_char_ranges(text: str, request: RunRequest) -> list[tuple[int, int]]:
    """Each inserted chunk's [start, end) characters in the run's text (empty when the run has none)."""
    spec = request.retrieval
    if spec is None or not spec.chunks:
        return []
    content, pieces = compose(request.prompt, spec.chunks)
    at = text.rfind(content)
    if at < 0:
        return []
    return [(at + lo, at + hi) for lo, hi, kind in pieces if kind == TokenKind.RETRIEVED]


def chunk_token_ranges(run) -> list[np.ndarray]:
    """Each inserted chunk's token positions in a core.run.Run (int64 arrays, in order)."""
    ranges = chunk_char_ranges(run.text, run.request)
    starts = np.array([t.start for t in run.tokens[: run.n_prompt]], np.int64)  # [n_prompt]
    ends = np.array([t.end for t in run.tokens[: run.n_prompt]], np.int64)
    kinds = np.array([t.kind == TokenKind.RETRIEVED for t in run.tokens[: run.n_prompt]], bool)
    return [np.flatnonzero(kinds & (starts < hi) & (ends > lo)) for lo, hi in ranges]
