"""Plain records of retrieval that travel in a RunRequest (picklable, saved in a run file's header)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RunFileError

MAX_K = 20  # chunks one run may insert


@dataclass(frozen=True)
class RetrievedChunk:
    """A chunk inserted into the prompt: where it came from, its text and its cosine similarity to the query."""

    source: str  # file path relative to the indexed folder (or a standard-library module name)
    text: str
    score: float
    line: int = 1  # the line of the source it starts on
    chunk: int = 0  # its number within the source


@dataclass(frozen=True)
class Retrieval:
    """Retrieve-augmented generation for one run: the index, how many chunks, and (once searched) the chunks.

    A request with `index` and no `chunks` is searched when the run is prepared (on the engine thread);
    the Run keeps the request with the chunks filled in (`run.retrieved`)."""

    index: str  # the index folder
    k: int = 3
    chunks: tuple[RetrievedChunk, ...] = ()
    searched: bool = False  # True once the index was searched (an empty `chunks` then means: nothing found)


def retrieval_from_json(data: Any, name: str) -> Retrieval | None:
    """The `retrieval` entry of a saved run's request, checked for types (RunFileError otherwise)."""
    if data is None:
        return None
    try:
        if not isinstance(data, dict) or not isinstance(data["index"], str) or type(data["k"]) is not int \
                or not isinstance(data["chunks"], list) or len(data["chunks"]) > MAX_K:
            raise TypeError("retrieval")
        chunks = []
        for c in data["chunks"]:
            if not (isinstance(c, dict) and isinstance(c["source"], str) and isinstance(c["text"], str)
                    and type(c["score"]) in (int, float) and type(c["line"]) is int and type(c["chunk"]) is int):
                raise TypeError("retrieved chunk")
            chunks.append(RetrievedChunk(c["source"], c["text"], float(c["score"]), c["line"], c["chunk"]))
        return Retrieval(data["index"], data["k"], tuple(chunks), bool(data.get("searched", True)))
    except (KeyError, TypeError) as exc:
        raise RunFileError(f"{name}: the run's retrieved chunks are garbled ({str(exc)[:40]}); "
                           "the file was not loaded.") from None
