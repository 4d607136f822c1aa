"""The vector store interface: the one small surface retrieval needs, and a registry of backends.

    add(rows, vectors) / delete_sources(sources) / search(vector, k) / count()

A backend is one class registered under a name with `@register_store("name")`; an index records its
backend's name, and `open_store(name, uri, dim)` finds it. Vectors are L2-normalised float32, so a
search's score is the cosine similarity (higher is closer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import RetrievalError


@dataclass(frozen=True)
class ChunkRow:
    """One stored chunk: where it came from and its text (its vector travels beside it)."""

    source: str  # the file's path relative to the indexed folder (or a module name for the stdlib corpus)
    chunk: int  # its number within the source, from 0
    line: int  # the line it starts on, from 1
    text: str


@dataclass(frozen=True)
class Hit:
    row: ChunkRow
    score: float  # cosine similarity to the query
    vector: np.ndarray  # [dim] float32, the stored embedding


class VectorStore(Protocol):
    dim: int

    def add(self, rows: list[ChunkRow], vectors: np.ndarray) -> None: ...  # vectors: [len(rows), dim]

    def delete_sources(self, sources: Iterable[str]) -> None: ...

    def search(self, vector: np.ndarray, k: int) -> list[Hit]: ...  # best first

    def count(self) -> int: ...


StoreFactory = Callable[[str, int], VectorStore]  # (uri, dim) -> store (created when missing)
STORES: dict[str, StoreFactory] = {}


def register_store(name: str) -> Callable[[StoreFactory], StoreFactory]:
    def register(factory: StoreFactory) -> StoreFactory:
        STORES[name] = factory
        return factory
    return register


def open_store(name: str, uri: str, dim: int) -> VectorStore:
    from . import lance_store  # noqa: F401 - registers the built-in backend

    factory = STORES.get(name)
    if factory is None:
        raise RetrievalError(f"This index uses the vector store '{name[:40]}', which this version does not know "
                             f"(known: {', '.join(sorted(STORES))}).")
    return factory(uri, dim)
