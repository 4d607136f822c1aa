"""Retrieval: folders of documents chunked, embedded with MiniLM and kept in an embedded vector database;
a run's question searched and its top chunks inserted into the prompt as retrieval tokens.

    chunking.py  documents (folder files, stdlib docstrings) -> chunks
    embed.py     MiniLM mean-pooled, normalised sentence embeddings
    store.py     the VectorStore interface and its registry; lance_store.py the LanceDB backend
    index.py     build / update (content hash per file) / open / search
    records.py   RetrievedChunk and Retrieval, the plain data a RunRequest carries
    rag.py       the prompt with the chunks inserted, their token ranges, the search at prepare time
    attribution.py  attention from generated tokens to each chunk, per layer
"""

from .records import Retrieval, RetrievedChunk

__all__ = ["Retrieval", "RetrievedChunk"]
