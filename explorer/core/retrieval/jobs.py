"""Engine jobs of retrieval (registered in core.engine.HANDLERS on import): building an index and the
embedding map of a run's query and chunks. Both run MiniLM, so both run where model work runs; the
requests and results are plain data (they could cross to an engine process)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import JobContext, Notice, handles
from ..errors import RetrievalError
from .embed import EMBEDDER, embedder
from .index import BuildReport, build_index, open_index
from .records import RetrievedChunk


@dataclass(frozen=True)
class BuildIndex:
    folder: str  # a folder, or "stdlib" for the standard library's docstrings
    out: str | None = None  # None: the user cache
    budget: int = 200
    overlap: int = 32


@dataclass(frozen=True)
class EmbeddingMap:
    """The query, the retrieved chunks and (when the index is there) their nearest neighbours in the index,
    in MiniLM's embedding space, projected to 2-D with PCA."""
    query: str
    chunks: tuple[RetrievedChunk, ...]
    index: str | None = None
    neighbours: int = 150


@dataclass(frozen=True)
class MapResult:
    points: np.ndarray  # [M, 2] float32 PCA coordinates: the query, then the chunks, then the neighbours
    scores: np.ndarray  # [M] cosine similarity to the query (the query's own: 1)
    labels: tuple[str, ...]  # source of each point ("query" for the query)
    n_chunks: int
    explained: tuple[float, float]  # variance share of the two axes
    note: str = ""  # e.g. the index is gone: only the query and chunks are shown

    @property
    def n_neighbours(self) -> int:
        return len(self.labels) - 1 - self.n_chunks


@handles(BuildIndex)
def _build(ctx: JobContext, req: BuildIndex) -> BuildReport:
    return build_index(req.folder, req.out, budget=req.budget, overlap=req.overlap, progress=ctx.progress,
                       cancel=ctx.cancel, on_skip=lambda source, reason: ctx.emit(
                           Notice(ctx.job, f"Skipped {source}: {reason}")))


@handles(EmbeddingMap)
def _map(ctx: JobContext, req: EmbeddingMap) -> MapResult:
    return embedding_map(req)


def embedding_map(req: EmbeddingMap) -> MapResult:
    note, neighbours, name = "", [], EMBEDDER
    index = None
    if req.index:
        try:
            index = open_index(req.index)
            name = index.embedder_name
        except RetrievalError as exc:
            note = f"{exc} Showing the query and the retrieved chunks only."
    emb = embedder(name)
    vectors = emb.embed([req.query] + [c.text for c in req.chunks])  # [1 + C, dim]
    if index is not None and req.neighbours > 0:
        chosen = {(c.source, c.chunk) for c in req.chunks}
        neighbours = [h for h in index.search_vector(vectors[0], req.neighbours + len(req.chunks))
                      if (h.row.source, h.row.chunk) not in chosen][: req.neighbours]
    if neighbours:
        vectors = np.concatenate([vectors, np.stack([h.vector for h in neighbours])])  # [M, dim]
    scores = (vectors @ vectors[0]).astype(np.float32)  # [M] cosine (unit vectors)
    points, explained = pca2(vectors)
    labels = ("query",) + tuple(c.source for c in req.chunks) + tuple(h.row.source for h in neighbours)
    return MapResult(points, scores, labels, len(req.chunks), explained, note)


def pca2(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """[M, 2] coordinates on the two main axes of `x` [M, dim], and each axis' share of the variance."""
    centred = x - x.mean(axis=0, keepdims=True)  # [M, dim]
    if len(x) < 2:
        return np.zeros((len(x), 2), np.float32), (0.0, 0.0)
    _u, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]  # [<=2, dim]
    points = np.zeros((len(x), 2), np.float32)
    points[:, : len(axes)] = centred @ axes.T
    var = s ** 2
    total = float(var.sum()) or 1.0
    shares = [float(v / total) for v in var[:2]] + [0.0] * (2 - min(2, len(var)))
    return points, (shares[0], shares[1])
