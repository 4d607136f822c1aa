"""Retrieval benchmark: index build time and query latency at 10,000 chunks (MiniLM + LanceDB).

Prints:
- MiniLM embedding throughput (chunks of ~200 word pieces, batches of 32, this machine's threads);
- build of a 10,000-chunk index through `build_index` (reading, hashing, chunking, LanceDB writes and
  compaction) with the model replaced by a stub, so the store's share is measured apart from the model's;
  the full build time is that plus 10,000 chunks at the measured MiniLM rate (or measured end to end with
  `--real`, which embeds all 10,000 chunks: minutes on a CPU);
- an update after one file of 1,000 changed (only that file is chunked and embedded again);
- query latency at 10,000 chunks: MiniLM embedding of the question, the LanceDB search (exact scan, k=3),
  and numpy's brute-force cosine over the same vectors for comparison (medians of 50 queries).

    python benchmarks/bench_retrieval.py [--chunks 10000] [--threads 1] [--real]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's explorer, not an installed one

import numpy as np  # noqa: E402

WORDS = tuple(str.split("the model reads tokens and attends to earlier positions while the cache keeps keys and "
                        "values for every layer so each new token costs one forward pass over a single position "
                        "python lists dicts sets rivers mountains cities capitals towers bridges"))
PER_FILE = 10  # chunks per generated file
QUERIES = ("how does the cache keep keys and values", "which city has a tower", "python dicts and sets",
           "a long river in the mountains", "one forward pass per token")


def _paragraph(rng: np.random.Generator, words: int = 150) -> str:
    return " ".join(rng.choice(WORDS, words)).capitalize() + "."


def make_corpus(folder: Path, n_chunks: int, seed: int = 0) -> int:
    """Files of PER_FILE paragraphs, each paragraph about 180 word pieces (one chunk at the default budget)."""
    rng = np.random.default_rng(seed)
    files = max(1, n_chunks // PER_FILE)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"doc{i:05d}.txt").write_text("\n\n".join(_paragraph(rng) for _ in range(PER_FILE)) + "\n")
    return files


class StubEmbedder:
    """MiniLM's interface with random unit vectors: the build's costs without the model's."""

    def __init__(self, real):
        self.name, self.dim, self.tokenizer = real.name, real.dim, real.tokenizer
        self.count_tokens = real.count_tokens
        self.rng = np.random.default_rng(1)

    def embed(self, texts, cancel=None, on_batch=None):
        v = self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)  # [n, dim]
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1, help="torch threads for MiniLM")
    p.add_argument("--real", action="store_true", help="embed every chunk with MiniLM (slow on a CPU)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from explorer.core.retrieval.embed import embedder
    from explorer.core.retrieval.index import build_index, open_index

    t0 = time.perf_counter()
    real = embedder()
    print(f"MiniLM loaded in {time.perf_counter() - t0:.2f} s ({args.threads} torch thread(s))")
    root = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    try:
        files = make_corpus(root / "docs", args.chunks)
        sample = [_paragraph(np.random.default_rng(7 + i)) for i in range(128)]
        t0 = time.perf_counter()
        real.embed(sample)
        rate = len(sample) / (time.perf_counter() - t0)
        tokens = int(np.mean(real.count_tokens(sample)))
        print(f"MiniLM embedding: {rate:,.1f} chunks/s (~{tokens} word pieces each)")

        emb = real if args.real else StubEmbedder(real)
        t0 = time.perf_counter()
        report = build_index(root / "docs", root / "index", emb=emb)
        build_s = time.perf_counter() - t0
        n = report.total_chunks
        label = "end to end with MiniLM" if args.real else "without the model (stub vectors)"
        print(f"build {n:,} chunks from {files:,} files {label}: {build_s:.2f} s "
              f"(store writes + compaction {report.store_seconds:.2f} s)")
        if not args.real:
            print(f"  full build estimate: {build_s + n / rate:,.0f} s = {build_s:.1f} s + {n:,} chunks at "
                  f"{rate:,.1f} chunks/s of MiniLM")

        changed = root / "docs" / "doc00000.txt"
        changed.write_text(changed.read_text() + "\nOne more line.\n")
        t0 = time.perf_counter()
        update = build_index(root / "docs", root / "index", emb=real)
        print(f"update after 1 of {files:,} files changed (MiniLM): {time.perf_counter() - t0:.2f} s, "
              f"{update.chunks_embedded} chunk(s) embedded, {update.unchanged:,} files unchanged")

        index = open_index(root / "index")
        embed_ms, search_ms, brute_ms = [], [], []
        table = index.store._table.to_arrow()  # the stored vectors, for the brute-force comparison
        matrix = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(), np.float32)
        matrix = matrix.reshape(table.num_rows, -1)  # [n, dim]
        agree = 0
        for i in range(50):
            question = QUERIES[i % len(QUERIES)] + f" {i}"
            t0 = time.perf_counter()
            q = real.embed([question])[0]  # [dim]
            t1 = time.perf_counter()
            hits = index.search_vector(q, 3)
            t2 = time.perf_counter()
            top = np.argsort(-(matrix @ q))[:3]  # [3]
            t3 = time.perf_counter()
            embed_ms.append((t1 - t0) * 1e3)
            search_ms.append((t2 - t1) * 1e3)
            brute_ms.append((t3 - t2) * 1e3)
            agree += [table.column("text")[int(j)].as_py() for j in top] == [h.row.text for h in hits]
        med = statistics.median
        print(f"query at {index.count():,} chunks: embed question {med(embed_ms):.1f} ms + LanceDB search "
              f"{med(search_ms):.1f} ms = {med(embed_ms) + med(search_ms):.1f} ms (median of 50); numpy "
              f"brute force {med(brute_ms):.2f} ms; same top-3 as brute force in {agree}/50")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
