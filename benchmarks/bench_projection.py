"""Embeddings panel benchmark: shared-basis projection and vocabulary map.

Prints: projection of 4,096 tokens x 31 layers (synthetic [31, 4096, 576] float16 states; target < 1 s),
both the bare shared-basis PCA and the panel's full path (massive-activation check + unit-RMS scaling);
the vocabulary map built once (target < 5 s) and then loaded from the disk cache; a nearest-neighbour
query over the whole table; and one animation frame (4,096 points into one ScatterPlotItem).

    python benchmarks/bench_projection.py [--tokens 4096] [--layers 31] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from explorer.core.analysis import projection as P  # noqa: E402


def _time(fn, repeat: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _table(model: str | None, vocab: int, dim: int) -> tuple[np.ndarray, str]:
    if model:
        try:
            from explorer.core.api import capture

            run = capture("hello", model)
            return run.unembed, f"{model} lm_head [{run.unembed.shape[0]:,} x {run.unembed.shape[1]}]"
        except Exception as exc:  # no model on this machine: fall back to a random table
            print(f"(could not load {model}: {exc}; using a random table)")
    rng = np.random.default_rng(0)
    return rng.normal(size=(vocab, dim)).astype(np.float32), f"random [{vocab:,} x {dim}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=31)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="'' for a random 49,152-row table")
    args = parser.parse_args()
    print(f"note: timings on a shared machine are inflated by other processes (load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")

    rng = np.random.default_rng(0)
    states = rng.normal(size=(args.layers, args.tokens, args.dim)).astype(np.float16)  # [layers, N, D]
    states[:, 0] *= 50  # one massive-activation token, as real models have
    t_bare, (coords, _) = _time(lambda: P.project_layers(states))

    t_panel, _ = _time(lambda: P.project_trajectories(states, normalise=True))
    label = f"{args.tokens:,} tokens x {args.layers} layers x {args.dim}"
    print(f"shared-basis PCA projection, {label}: {t_bare * 1e3:8.0f} ms   (target < 1000 ms)")
    print(f"panel path project_trajectories (+ massive check + unit RMS), {label}: {t_panel * 1e3:8.0f} ms")
    assert coords.shape == (args.layers, args.tokens, 2)

    table, what = _table(args.model, 49152, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        t0 = time.perf_counter()
        built = P.vocab_map(table, "bench-model", 4000, cache_dir=cache)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        loaded = P.vocab_map(table, "bench-model", 4000, cache_dir=cache)
        t_load = time.perf_counter() - t0
        assert not built.from_cache and loaded.from_cache
        size = sum(f.stat().st_size for f in cache.iterdir())
    print(f"vocabulary map of {what}, 4,000 sampled rows: built {t_build * 1e3:8.0f} ms (target < 5000 ms), "
          f"loaded from disk cache {t_load * 1e3:6.1f} ms ({size / 1024:.0f} KiB on disk)")
    t_unit, unit = _time(lambda: P.unit_rows(table))
    t_nn, _ = _time(lambda: P.nearest_neighbours(table, 123, 12, unit=unit), repeat=5)
    t_place, _ = _time(lambda: built.place(table, np.arange(4096)), repeat=5)
    print(f"normalise table once {t_unit * 1e3:6.0f} ms; 12 nearest neighbours of one token {t_nn * 1e3:6.1f} ms; "
          f"place 4,096 run tokens on the map {t_place * 1e3:6.1f} ms")

    import pyqtgraph as pg
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    plot = pg.PlotWidget()
    scatter = pg.ScatterPlotItem(hoverable=True)
    plot.addItem(scatter)
    plot.resize(900, 600)
    plot.show()
    brushes = [pg.mkBrush(0, 158, 115, 220)] * args.tokens
    sizes = np.full(args.tokens, 6.0)
    pens = [None] * args.tokens

    def restyle(layer=[0]):  # noqa: B006 - a counter across calls
        layer[0] = (layer[0] + 1) % args.layers
        xy = coords[layer[0]]
        scatter.setData(x=xy[:, 0], y=xy[:, 1], brush=brushes, size=sizes, pen=pens)
        plot.grab()  # forces a full render (an upper bound on the paint)

    def frame(layer=[0]):  # noqa: B006 - the panel's play path: positions moved in place, then painted
        layer[0] = (layer[0] + 1) % args.layers
        xy = coords[layer[0]]
        scatter.data["x"], scatter.data["y"] = xy[:, 0], xy[:, 1]
        scatter.prepareGeometryChange()
        scatter.informViewBoundsChanged()
        scatter.bounds = [None, None]
        scatter.invalidate()
        plot.grab()  # forces a full render (an upper bound on the paint)

    t_restyle, _ = _time(restyle, repeat=3)
    t_frame, _ = _time(frame, repeat=9)
    app.processEvents()
    print(f"{args.tokens:,} points: restyle (new selection or colouring, per-point brushes) {t_restyle * 1e3:6.1f} ms; "
          f"one animation frame (move + full render) {t_frame * 1e3:6.1f} ms (play: one layer per 160 ms)")


if __name__ == "__main__":
    main()
