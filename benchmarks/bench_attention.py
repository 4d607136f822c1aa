"""Attention panel benchmark on the default model at 1,024 and 4,096 tokens.

Prints: time from selecting a head to the heatmap shown (target < 100 ms at 4,096), time to add a
new query row during generation (target < 16 ms), zoom-detail time, overview/statistics time (off
the GUI thread), and memory held by the panel (plus the peak transient allocation while drawing).

    python benchmarks/bench_attention.py [--tokens 1024 4096] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import tracemalloc

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _prompt(tokenizer, n_tokens: int) -> str:
    rng = random.Random(0)
    words = ("the", "model", "reads", "every", "token", "and", "attends", "to", "earlier", "ones", "while", "it",
             "writes", "a", "story", "about")
    ids: list[int] = []
    text = ""
    while len(ids) < n_tokens:
        text += " ".join(rng.choice(words) for _ in range(64)) + ". "
        ids = tokenizer(text)["input_ids"]
    return tokenizer.decode(ids[: n_tokens - 2])


def _ms(fn, repeat: int = 5) -> tuple[float, float]:
    """Median wall-clock ms and median GUI-thread CPU ms (the latter is less sensitive to other load)."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--new-tokens", type=int, default=4)
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from explorer.core.api import session_for

    session = session_for(args.model)
    print(f"model {args.model}; timings on a shared 2-core machine (inflated by other load)")
    for n in args.tokens:
        bench_one(app, session, n, args.new_tokens)


def bench_one(app, session, n: int, new_tokens: int) -> None:
    from explorer.core.api import capture
    from explorer.core.run import Run
    from explorer.ui.panels.attention import AttentionPanel
    from explorer.ui.selection import Selection
    from explorer.ui.widgets.background import Background

    t0 = time.perf_counter()
    full = capture(_prompt(session.loaded.tokenizer, n), session, max_new_tokens=new_tokens,
                   temperature=0.0)
    print(f"\n== {full.n_tokens} tokens (prefill + {len(full.steps) - 1} decode steps: "
          f"{time.perf_counter() - t0:.1f} s)")
    run = Run.start(full.info, full.request, full.norm, full.unembed)
    run.apply(full.steps[0])
    sel = Selection()
    sel.set_limits(steps=len(full.steps), positions=full.n_tokens, layers=full.info.n_layers,
                   heads=full.info.n_heads)
    panel = AttentionPanel(sel)
    panel.resize(1400, 820)
    panel.show()
    panel.set_run(run)
    t0 = time.perf_counter()
    Background.wait_idle(600_000)
    app.processEvents()
    print(f"overview + head statistics, all {full.info.n_layers}x{full.info.n_heads} heads (background): "
          f"{time.perf_counter() - t0:.1f} s")

    heads = iter(range(10_000))

    def select_head():
        i = next(heads)
        sel.set("layer", 3 + i % 20)
        sel.set("head", i % full.info.n_heads)
        app.processEvents()
        panel.heatmap.view.grab()  # force the paint

    med, cpu = _ms(select_head, 7)
    print(f"select head -> heatmap shown: median {med:.1f} ms wall, {cpu:.1f} ms GUI-thread CPU "
          f"(image {panel.heatmap.data.shape}, pool factor {panel._factor})")

    step_times, step_cpu = [], []
    for event in full.steps[1:]:
        run.apply(event)
        t0, c0 = time.perf_counter(), time.thread_time()
        panel.on_step(run, event)
        app.processEvents()
        panel.heatmap.view.grab()
        step_times.append((time.perf_counter() - t0) * 1e3)
        step_cpu.append((time.thread_time() - c0) * 1e3)
    print(f"new row during generation: median {statistics.median(step_times):.1f} ms wall "
          f"(max {max(step_times):.1f}), {statistics.median(step_cpu):.1f} ms GUI-thread CPU, "
          f"over {len(step_times)} steps")

    m = run.n_tokens
    panel.heatmap.plot.setRange(xRange=(m - 400, m), yRange=(m - 400, m), padding=0)
    med, cpu = _ms(panel._refine, 3)
    detail = panel.heatmap.detail.image.shape if panel.heatmap.detail is not None else None
    print(f"zoom to 400x400 -> full-resolution detail: {med:.1f} ms wall, {cpu:.1f} ms CPU (detail image {detail})")

    tracemalloc.start()
    select_head()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"memory held by the panel: {panel.memory_bytes() / 2**20:.1f} MiB; peak transient while "
          f"drawing a head: {peak / 2**20:.1f} MiB; run capture: {run.capture_bytes() / 2**20:.0f} MiB")
    panel.close()
    panel.deleteLater()
    app.processEvents()


if __name__ == "__main__":
    main()
