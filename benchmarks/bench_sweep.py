"""Head sweep on the default model: ablate all 270 heads (30 layers x 9) one by one for one target on a
64-token prompt, reusing the KV cache of the prefix ("last position" mode); also the 60 block ablations,
and for comparison a few heads in "all positions" mode (the whole prompt recomputed per head).

    .venv/bin/python benchmarks/bench_sweep.py
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from explorer.core.analysis.sweep import default_target, head_sweep
from explorer.core.api import run_request
from explorer.core.events import RunRequest
from explorer.core.models import load_model
from explorer.core.runner import Session

PROMPT = ("The Eiffel Tower is in Paris, the Colosseum is in Rome, and the Brandenburg Gate is in Berlin. "
          "When Alice and Bob went to the market, Alice bought apples and Bob bought pears. Later that day, after "
          "a long walk along the river and a cup of tea in a small cafe near the old bridge, Bob gave the pears to")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}  cpus: {os.cpu_count()}  (machine shared with other jobs)")
    t0 = time.perf_counter()
    session = Session(load_model("smollm2-135m-instruct"))
    print(f"load: {time.perf_counter() - t0:.1f} s")
    ids = session.loaded.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 64, len(ids)
    text = session.loaded.tokenizer.decode(ids[:64])
    base = run_request(session, RunRequest(text))
    pos = base.n_tokens - 1
    target = default_target(base, pos)
    print(f"prompt: {base.n_tokens} tokens; target {session.vocab[target]!r} after position {pos}")
    for batch in (1, 9):
        r = head_sweep(session, base.token_ids, pos, target, blocks=False, batch=batch)
        print(f"head sweep, last position (cached prefix), {batch} ablation(s) per forward: {r.heads.size} heads, "
              f"{r.forwards} forwards, {r.seconds:.2f} s ({r.seconds / r.heads.size * 1e3:.1f} ms/head)")
    full = head_sweep(session, base.token_ids, pos, target)
    print(f"heads + 60 blocks, last position: {full.forwards} forwards, {full.seconds:.2f} s")
    layer, head, change = full.strongest(1)[0]
    print(f"strongest head: L{layer}.H{head} changes the target logprob by {change:+.3f} "
          f"(baseline {full.baseline:.3f})")
    t = time.perf_counter()
    from explorer.core.analysis.sweep import sweep_plan
    from explorer.core.interventions import InterventionContext

    n = 3
    with torch.inference_mode():
        for iv in sweep_plan(session.info.n_layers, session.info.n_heads, pos, "all", blocks=False)[:n]:
            with InterventionContext(session.loaded.model, session.adapter, (iv,), session.info.n_heads,
                                     session.info.head_dim):
                session.loaded.model(input_ids=torch.tensor([base.token_ids.tolist()]), logits_to_keep=1)
    per = (time.perf_counter() - t) / n
    print(f"all-positions mode: {per * 1e3:.0f} ms/head -> about {per * 270:.0f} s for 270 heads")


if __name__ == "__main__":
    main()
