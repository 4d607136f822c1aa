"""Batch throughput and latency on this machine: batch sizes 1, 2, 4, 8, 16, prefill and decode apart.

    .venv/bin/python benchmarks/bench_batching.py [--model smollm2-135m-instruct] [--prompt-tokens 32]
        [--new-tokens 16] [--repeats 3] [--threads 1]

One torch thread by default; sizes interleaved within each repeat and the best repeat kept per size (a busy
moment then hits every size alike and the least disturbed figure stands). Also prints the paged-KV layout of a
batch with a common chat prefix (blocks of 16, shared blocks, fragmentation, bytes versus contiguous).
Times on a shared machine are inflated by other load.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from explorer.core.analysis import batching as bt  # noqa: E402
from explorer.core.analysis import paged_kv as pk  # noqa: E402
from explorer.core.analysis.batch_bench import SIZES, measure_throughput  # noqa: E402
from explorer.core.models import load_model  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "Why is the sky blue?",
             "What is 12 times 12?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = ap.parse_args()
    loaded = load_model(args.model)
    t0 = time.perf_counter()
    table = measure_throughput(loaded, tuple(int(s) for s in args.sizes.split(",")), prompt_tokens=args.prompt_tokens,
                               new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads,
                               progress=lambda f, m: print(f"  {f:4.0%} {m}", end="\r", flush=True))
    print(" " * 60, end="\r")
    print(table.text())
    print(f"\n(measured in {time.perf_counter() - t0:.0f} s)\n")

    rows = bt.encode_prompts(loaded, QUESTIONS, 16, chat=True)
    res = bt.run_batch(loaded, rows, 16)
    lay = pk.from_batch(res, max_length=loaded.info.context_length)
    mib = 1 / 2**20
    print(f"Paged KV of a {len(rows)}-prompt chat batch (blocks of {lay.block_size}, "
          f"{lay.bytes_per_token:,} bytes per token):")
    print(f"  blocks {lay.n_blocks} ({lay.shared_blocks} shared; {lay.blocks_unshared} without sharing), "
          f"internal fragmentation {lay.internal_fragmentation} slots")
    print(f"  paged {lay.paged_bytes * mib:.2f} MiB | padded batch {pk.padded_bytes(res) * mib:.2f} MiB | "
          f"contiguous at {lay.max_length:,} tokens {lay.contiguous_bytes * mib:,.1f} MiB "
          f"(saves {lay.saved_bytes / max(lay.contiguous_bytes, 1):.1%})")


if __name__ == "__main__":
    main()
