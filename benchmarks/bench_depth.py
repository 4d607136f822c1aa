"""Layer-depth benchmark on the default model: logit-lens window, full progressive lens, streamed column,
and the per-selection analyses. Prints milliseconds (median of a few repeats).

    .venv/bin/python benchmarks/bench_depth.py [--positions 256] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _ms(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--positions", type=int, default=256)
    args = parser.parse_args()

    import torch

    from explorer.core.analysis.depth import (
        compute_lens,
        direct_logit_attribution,
        layer_similarity,
        lens_inputs,
        residual_share,
        update_ratios,
    )
    from explorer.core.analysis.depth_attention import depth_attention, depth_weights, head_attribution
    from explorer.core.api import run_request
    from explorer.core.events import GenerationSettings, RunRequest
    from explorer.core.models import load_model
    from explorer.core.runner import Session

    loaded = load_model(args.model)
    info = loaded.info
    text = ("The quick brown fox jumps over the lazy dog while the language model reads every word. " * 40)
    ids = loaded.tokenizer(text)["input_ids"][: args.positions]
    prompt = loaded.tokenizer.decode(ids)
    run = run_request(Session(loaded), RunRequest(prompt, settings=GenerationSettings(max_new_tokens=1)))
    n, rows = run.n_tokens, info.n_layers + 1
    flop_cell = 2 * info.vocab_size * info.hidden_size
    print(f"model {info.name}: {info.n_layers} layers, vocab {info.vocab_size}, hidden {info.hidden_size}; "
          f"{n} positions; {flop_cell / 1e6:.0f} MFLOP per lens cell; torch threads {torch.get_num_threads()}")
    print("(timings on a shared 2-core machine with other engineers' jobs running: inflated)")

    def lens(lo: int, hi: int):
        resid, targets = lens_inputs(run, lo, hi)
        return compute_lens(resid, targets, run.norm, run.unembed, start=lo)

    window = min(64, n)
    t_window = _ms(lambda: lens(n - window, n), repeat=2)
    gflops = rows * window * flop_cell / (t_window / 1e3) / 1e9
    print(f"logit lens, visible window {rows} depths x {window} positions: {t_window:8.1f} ms ({gflops:.0f} GFLOP/s)")
    t = time.perf_counter()
    for lo in range(0, n, 64):
        lens(lo, min(n, lo + 64))
    t_full = (time.perf_counter() - t) * 1e3
    print(f"logit lens, full run progressively ({n} positions in blocks of 64): {t_full:8.1f} ms "
          f"({t_full / n:.1f} ms per position)")
    t_col = _ms(lambda: lens(n - 1, n), repeat=5)
    print(f"logit lens, one streamed column ({rows} depths):              {t_col:8.1f} ms  (target < 100 ms)")

    weights = depth_weights(loaded)
    p = n - 1
    token = int(run.steps[-1].choice.token_id) if run.steps[-1].choice else int(run.token_ids[-1])
    att = direct_logit_attribution(run, p, token)
    figures = {
        "direct logit attribution (one position)": lambda: direct_logit_attribution(run, p, token),
        "per-head attribution (all layers)": lambda: head_attribution(run, weights, p, token, att.scale),
        "residual share (one position)": lambda: residual_share(run, p),
        f"layer similarity ({n} positions)": lambda: layer_similarity(run),
        f"update ratios ({n} positions)": lambda: update_ratios(run),
        "depth attention (one layer/head/position)": lambda: depth_attention(run, weights, info.n_layers - 1, 0, p),
    }
    for name, fn in figures.items():
        print(f"{name:45s} {_ms(fn):8.1f} ms")
    print(f"attribution check: logit {att.logit:.4f} = sum {att.contributions.sum():.4f} + offset {att.offset} "
          f"(error {att.error:+.1e}, float16 storage)")


if __name__ == "__main__":
    main()
