"""The LanceDB backend of the vector store: an embedded database of Lance (Arrow) files in a folder.

Why LanceDB (docs/ design notes): it runs in-process on a folder (no server, no pickle: Lance files are
Arrow columns plus JSON/protobuf manifests), a search with no ANN index is an exact scan (10k chunks of
384 floats scan in milliseconds), and the same client (`lancedb.connect(uri)`) opens `s3://...` object
storage or LanceDB Cloud/Enterprise (`db://...`) when one machine is outgrown.

An index folder is untrusted input: the table must have exactly our columns, and schema metadata that
names an embedding function (LanceDB would instantiate it, maybe loading a model, on `add` or a text
search) is refused before anything is written or searched.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from datetime import timedelta

import numpy as np

from ..errors import RetrievalError
from .store import ChunkRow, Hit, register_store

TABLE = "chunks"
_BATCH_DELETE = 200  # sources per delete filter


def _schema(dim: int):
    import pyarrow as pa

    return pa.schema([("source", pa.string()), ("chunk", pa.int32()), ("line", pa.int32()),
                      ("text", pa.string()), ("vector", pa.list_(pa.float32(), dim))])


def _quote(text: str) -> str:
    """A SQL string literal (LanceDB filters are DataFusion SQL): quotes doubled, no other escapes."""
    return "'" + text.replace("'", "''") + "'"


class LanceStore:
    def __init__(self, uri: str, dim: int):
        import lancedb

        self.dim = int(dim)
        self.uri = uri
        self._db = lancedb.connect(uri)
        self._table = None
        if TABLE in self._db.list_tables().tables:
            table = self._db.open_table(TABLE)
            self._check(table)
            self._table = table

    def _check(self, table) -> None:
        schema = table.schema
        metadata = schema.metadata or {}
        if any(key in (b"embedding_functions", "embedding_functions") for key in metadata):
            raise RetrievalError(f"The index table at {self.uri} names an embedding function in its metadata; "
                                 "LanceDB would create it (maybe loading code or a model), so it was not opened.")
        if schema.remove_metadata() != _schema(self.dim):
            raise RetrievalError(f"The index table at {self.uri} does not have the columns of an LM Explorer index "
                                 f"(source, chunk, line, text, vector[{self.dim}]); it was not opened.")

    def _create(self):
        if self._table is None:
            self._table = self._db.create_table(TABLE, schema=_schema(self.dim), mode="create", exist_ok=True)
            self._check(self._table)
        return self._table

    def add(self, rows: list[ChunkRow], vectors: np.ndarray) -> None:
        import pyarrow as pa

        if not rows:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # [n, dim]
        if vectors.shape != (len(rows), self.dim):
            raise ValueError(f"{len(rows)} rows need vectors of shape ({len(rows)}, {self.dim}), got {vectors.shape}")
        data = pa.table({
            "source": pa.array([r.source for r in rows], pa.string()),
            "chunk": pa.array([r.chunk for r in rows], pa.int32()),
            "line": pa.array([r.line for r in rows], pa.int32()),
            "text": pa.array([r.text for r in rows], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), self.dim),
        }, schema=_schema(self.dim))
        self._create().add(data)

    def delete_sources(self, sources: Iterable[str]) -> None:
        sources = list(sources)
        if self._table is None or not sources:
            return
        for i in range(0, len(sources), _BATCH_DELETE):
            part = sources[i: i + _BATCH_DELETE]
            self._table.delete(f"source IN ({', '.join(_quote(s) for s in part)})")

    def search(self, vector: np.ndarray, k: int) -> list[Hit]:
        if self._table is None or k <= 0:
            return []
        query = np.asarray(vector, np.float32).reshape(self.dim)  # [dim]
        result = self._table.search(query).distance_type("cosine").limit(int(k)).to_arrow()
        columns = {name: result.column(name).to_pylist() for name in ("source", "chunk", "line", "text")}
        distance = result.column("_distance").to_numpy()  # cosine distance = 1 - similarity
        vectors = np.asarray(result.column("vector").combine_chunks().flatten().to_numpy(), np.float32)
        vectors = vectors.reshape(len(distance), self.dim)  # [hits, dim]
        return [Hit(ChunkRow(columns["source"][i], int(columns["chunk"][i]), int(columns["line"][i]),
                             columns["text"][i]), float(1.0 - distance[i]), vectors[i])
                for i in range(len(distance))]

    def count(self) -> int:
        return 0 if self._table is None else int(self._table.count_rows())

    def optimize(self) -> None:
        """Merge the small files many adds and deletes leave, and drop old versions (the index keeps one)."""
        if self._table is not None:
            with warnings.catch_warnings():  # "removes every version except the latest": that is the intent
                warnings.simplefilter("ignore", UserWarning)
                self._table.optimize(cleanup_older_than=timedelta(0))


@register_store("lancedb")
def _lance(uri: str, dim: int) -> LanceStore:
    return LanceStore(uri, dim)
