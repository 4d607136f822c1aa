"""Eviction what-if on the default model: one policy, 32 decode steps (target < 10 s).

    .venv/bin/python benchmarks/bench_eviction.py

Prints the time of the keep-mask computation and of the measured re-computation (prompt + 32 decode steps
with the full cache, then with the evictions). Times on a shared machine are inflated by other load.
"""

from __future__ import annotations

import time

from explorer import capture
from explorer.core.analysis import eviction as ev
from explorer.core.models import load_model
from explorer.core.runner import Session

PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
          "movable metal type, oil-based ink and a screw press. Explain in a few sentences why this mattered:")


def main() -> None:
    t0 = time.perf_counter()
    loaded = load_model("smollm2-135m-instruct")
    session = Session(loaded)
    print(f"load: {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    run = capture(PROMPT, session, chat=True, max_new_tokens=33)
    print(f"capture: {run.n_prompt} prompt + {run.n_tokens - run.n_prompt} generated tokens "
          f"in {time.perf_counter() - t0:.2f} s")
    rows = ev.decode_rows(run, 32)
    for kind in ev.POLICIES:
        policy = ev.EvictionPolicy(kind, budget=32, sinks=4, window=8)
        t0 = time.perf_counter()
        keep = ev.keep_mask(run, policy, rows)
        t_mask = time.perf_counter() - t0
        t0 = time.perf_counter()
        effect = ev.measure_effects(loaded, run, {kind: keep}, rows)[kind]
        t_measure = time.perf_counter() - t0
        total = t_mask + t_measure
        print(f"{policy.label:12s} {len(rows)} decode steps: masks {t_mask:.2f} s + re-computation {t_measure:.2f} s "
              f"= {total:.2f} s ({'OK' if total < 10 else 'OVER'} the 10 s target); mean KL {effect.mean_kl:.4f} "
              f"nats, top-1 changed {int(effect.top1_changed.sum())}/{len(rows)}, kept {effect.kept_fraction:.0%}")


if __name__ == "__main__":
    main()
