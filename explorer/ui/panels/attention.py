"""The Attention panel: heatmap of one head (or an aggregate), overview grid of every head, head view,
head statistics. Maps are computed from the Run's captured queries and keys, only for what is shown.

Long runs: the selected head is computed in row chunks and max-pooled to at most 1,024 pixels;
zooming in computes the visible region at full resolution (debounced). The overview and statistics
run off the GUI thread, one layer per job, from evenly sampled query rows.

Signal `request_prompt(str)`: the "Run induction test" button emits a prompt of random words
repeated twice; the main window may connect it to its prompt runner (the panel cannot run the model).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QCheckBox, QComboBox, QSpinBox, QSplitter, QTabWidget, QWidget

from ...core.analysis import attention as att
from ..widgets.background import Background
from ..widgets.flow import FlowLayout, labelled
from ..widgets.heatmap import Heatmap
from . import intervention_menu as im
from .attention_overview import HeadStatsTable, OverviewGrid
from .base import Panel
from .head_view import HeadLines, HeadView

MAX_PIXELS = 1024  # the heatmap image is at most this many pixels on a side
MIN_PIXELS = 256  # ... and pooled no further than this (a small or not yet laid out view)
OFFTHREAD_TOKENS = 256  # a streamed run's full map from this length on is computed off the GUI thread
# ... and a run drawn whole (opened from a file, captured by a script): its map costs about n^2, 15 ms at 1,024 tokens
# and 76 ms at 4,096 on the GUI thread, once per run and per head selected
WHOLE_OFFTHREAD_TOKENS = 1024
ROLLOUT_MAX_TOKENS = 1024  # rollout multiplies N x N matrices: only up to this length
MODES = (("head", "Selected head"), ("mean", "Mean over heads"), ("max", "Max over heads"),
         ("rollout", "Rollout (layers 0..L)"))
TOP_K = 12


class AttentionPanel(Panel):
    title = "Attention"
    help_text = (
        "Each row of the heatmap is a query token (the token being computed) and each column a key token it "
        "can look at; the colour is how much of its attention the query gives to that key (every row sums to 1; "
        "a decoder cannot look ahead, so the upper triangle is empty). Pick a layer and head, or click a "
        "thumbnail in the overview, where every layer x head is shown at once and heads sharing a KV head "
        "(GQA) are framed together. Many heads park most of their attention on the first token (a 'sink'): "
        "hide it to see the rest. The head view draws lines from the selected token to the keys it reads; "
        "the statistics table labels heads as sink, previous-token, induction, local or broad."
    )

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.background = Background(self)
        self.thresholds = att.Thresholds()
        self._build()
        self._gen = 0  # bumps on every new run: stale background results are dropped
        self._n = 0  # positions drawn so far
        self._map_job = 0  # bumps with every full map; `_waiting` is the one being computed off the GUI thread
        self._waiting: int | None = None
        self._factor = 1
        self._keep: np.ndarray | None = None  # positions shown when special tokens are hidden
        self._summaries: dict[int, att.LayerSummary] = {}
        self._summary_key: tuple | None = None
        self._hover_row: tuple | None = None
        self._refine_timer = QTimer(self, singleShot=True, interval=150)
        self._refine_timer.timeout.connect(self._refine)

    # --- widgets --------------------------------------------------------------------------------
    def _build(self) -> None:
        bar = FlowLayout()  # wraps in a narrow dock instead of clipping
        self.layer_box, self.head_box = QSpinBox(), QSpinBox()
        self.mode_box = QComboBox()
        for key, text in MODES:
            self.mode_box.addItem(text, key)
        self.sink_box = QCheckBox("Hide sink")  # short: the bar must fit a presenter screen
        self.sink_box.setToolTip("hide the first token's column (the attention sink) and renormalise the rows")
        self.value_box = QCheckBox("Value-weighted")
        self.value_box.setToolTip("weight x ||v_j||, rows renormalised: how much each key actually moves the output")
        self.special_box = QCheckBox("Hide special tokens")
        self.contrast_box = QCheckBox("Auto contrast")
        self.contrast_box.setChecked(True)
        for label, w in (("Layer", self.layer_box), ("Head", self.head_box)):
            bar.addWidget(labelled(label, w))
        for w in (self.mode_box, self.sink_box, self.value_box, self.special_box, self.contrast_box):
            bar.addWidget(w)
        bar.addStretch(1)
        self.body.addLayout(bar)
        self.heatmap = Heatmap("viridis")
        self.heatmap.plot.setLabel("left", "query")
        self.heatmap.plot.setLabel("bottom", "key")
        self.query_line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#ff4040", width=1))
        self.heatmap.plot.addItem(self.query_line)
        self.overview = OverviewGrid()
        self.head_view = HeadView()
        self.all_heads_box = QCheckBox("All heads of the layer (one colour each)")
        hv = QWidget()
        hv_layout = pg.QtWidgets.QVBoxLayout(hv)
        hv_layout.setContentsMargins(0, 0, 0, 0)
        hv_layout.addWidget(self.all_heads_box)
        hv_layout.addWidget(self.head_view, 1)
        self.stats = HeadStatsTable(self.thresholds)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.overview, "Overview (all heads)")
        self.tabs.addTab(hv, "Head view")
        self.tabs.addTab(self.stats, "Head statistics")
        split = QSplitter()
        split.addWidget(self.heatmap)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        self.body.addWidget(split, 1)
        # signals
        self.layer_box.valueChanged.connect(lambda v: self.selection.set("layer", v))
        self.head_box.valueChanged.connect(lambda v: self.selection.set("head", v))
        for box in (self.sink_box, self.value_box, self.special_box, self.contrast_box):
            box.toggled.connect(self._options_changed)
        self.mode_box.currentIndexChanged.connect(self._options_changed)
        self.all_heads_box.toggled.connect(self._draw_head_view)
        self.heatmap.hovered.connect(self._on_hover)
        self.heatmap.clicked.connect(lambda row, _col: self.selection.set("position", self._position(row)))
        self.heatmap.plot.vb.sigRangeChanged.connect(lambda *_: self._refine_timer.start())
        self.heatmap.plot.vb.sigResized.connect(self._resized)
        self.overview.clicked.connect(self._open_head)
        self.stats.open_head.connect(self._open_head)
        self.stats.induction_test.connect(lambda: self.request_prompt.emit(att.induction_prompt(
            seed=int(np.random.default_rng().integers(1 << 16)))))
        self.head_view.clicked.connect(lambda pos: self.selection.set("position", pos))
        im.attach_head_menu(self.heatmap.view, lambda _p: (self.selection.layer, self.selection.head))  # right-click:
        im.attach_head_menu(self.overview.view, im.plot_locator(self.overview.view, self.overview.plot,  # ablate,
                                                                self.overview.cell_at))  # scale, patch
        im.attach_head_menu(self.stats.table, im.table_head_locator(self.stats.table))

    # --- Panel contract ---------------------------------------------------------------------------
    def draw_run(self, run) -> None:
        self._gen += 1
        self._hover_row = None
        if run is None or run.n_tokens == 0:
            self._n, self._waiting = 0, None
            self.heatmap.set_data(np.zeros((1, 1), np.float32))
            self.head_view.clear()
            return
        info = run.info
        for box, limit in ((self.layer_box, info.n_layers), (self.head_box, info.n_heads)):
            box.blockSignals(True)
            box.setRange(0, limit - 1)
            box.blockSignals(False)
        self._sync_boxes()
        self.draw_heatmap()
        self._draw_head_view()
        self._start_summaries()

    def draw_step(self, run, event) -> None:
        self.draw_steps(run, [event])

    def set_run(self, run, postpone: bool = False) -> None:
        self._waiting = None  # (a map still computed for the previous run is dropped: see Panel.offthread)
        super().set_run(run, postpone)

    def draw_steps(self, run, events) -> None:
        if self._waiting is not None:  # the full map is being computed: it adds these rows when it lands
            if events[-1].finish_reason:
                self._start_summaries()
            return
        start = events[0].start
        if self._n == 0 or start != self._n or self._keep is not None or self.mode != "head":
            self.draw_run(run)  # nothing usable drawn yet, or a mode that needs a full recompute
            return
        self.append_rows(start, run.n_tokens)
        if not run.info.is_causal and self.selection.position >= start - 1:
            self._draw_head_view()  # (a causal row never changes when later keys arrive)
        if events[-1].finish_reason:
            self._start_summaries()

    def draw_selection(self, field: str) -> None:
        if field in ("layer", "head"):
            self._sync_boxes()
            if field == "head" and self.mode in ("mean", "max", "rollout"):
                self._draw_head_view()
                return
            self.draw_heatmap()
            self._draw_head_view()
        elif field == "position":
            self._place_query_line()
            self._draw_head_view()

    # --- state helpers ---------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.mode_box.currentData()

    @property
    def options(self) -> att.MapOptions:
        return att.MapOptions(hide_sink=self.sink_box.isChecked(), value_weighted=self.value_box.isChecked())

    def _sync_boxes(self) -> None:
        for box, value in ((self.layer_box, self.selection.layer), (self.head_box, self.selection.head)):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        self.overview.select(self.selection.layer, self.selection.head)

    def _open_head(self, layer: int, head: int) -> None:
        if self.mode != "head":
            self.mode_box.setCurrentIndex(0)
        self.selection.set("layer", layer)
        self.selection.set("head", head)

    def _options_changed(self, *_args) -> None:
        if self.run is not None and self.run.n_tokens:
            self._hover_row = None
            self.draw_heatmap()
            self._draw_head_view()

    def _position(self, display_index: int) -> int:
        return int(self._keep[display_index]) if self._keep is not None else int(display_index)

    def _display_index(self, position: int) -> int | None:
        if self._keep is None:
            return position
        hit = np.searchsorted(self._keep, position)
        return int(hit) if hit < self._keep.size and self._keep[hit] == position else None

    def _labels(self) -> list[str]:
        toks = self.run.tokens
        return [toks[p].text for p in (self._keep if self._keep is not None else range(len(toks)))]

    def row_fn(self, layer: int, head: int, run=None) -> att.RowFn:
        """Attention rows of one head in display indices, with the panel's options applied (of `run`, by default
        the run on screen)."""
        run = run or self.run
        info = run.info
        base = att.head_row_fn(run.array("queries"), run.array("keys"), layer, head, info.group_size,
                               run.layer_scaling(layer), info.is_causal)
        opts = self.options
        norms = att.value_norms(run.array("values"), layer, head // info.group_size) if opts.value_weighted else None
        keep = self._keep

        def rows(display_rows: np.ndarray) -> np.ndarray:
            positions = keep[display_rows] if keep is not None else display_rows
            return att.transform_rows(base(positions), opts, norms, keep)

        return rows

    # --- heatmap ----------------------------------------------------------------------------------
    def draw_heatmap(self) -> None:
        """Compute and show the selected head (or aggregate) for the whole run."""
        run = self.run
        self._keep = None
        self._map_job += 1
        self._waiting = None
        if self.special_box.isChecked():
            keep = np.array([i for i, t in enumerate(run.tokens) if not t.is_special], np.int64)
            if 0 < keep.size < run.n_tokens:
                self._keep = keep
        n = run.n_tokens if self._keep is None else self._keep.size
        self._n = run.n_tokens
        self._target = self._pixels()
        self._factor = att.pool_factor(n, self._target)
        layer, head = self.selection.layer, self.selection.head
        if self.mode == "head":
            title = f"layer {layer}, head {head} (KV head {head // run.info.group_size})"
            if n >= (OFFTHREAD_TOKENS if self.streamed else WHOLE_OFFTHREAD_TOKENS):
                self._map_offthread(run, n, layer, head, title)
                return
            view = att.pooled_map(self.row_fn(layer, head), n, self._factor, causal=run.info.is_causal)
            self._show(view, n)
            self.heatmap.plot.setTitle(title)
            return
        if self.mode == "rollout" and n > ROLLOUT_MAX_TOKENS:
            self.heatmap.plot.setTitle(f"rollout needs N x N products: available up to {ROLLOUT_MAX_TOKENS} tokens")
            self._show(np.zeros((1, 1), np.float32), 1)
            return
        self.heatmap.plot.setTitle(f"{dict(MODES)[self.mode]}, layer {layer}: computing…")
        fns = [[self.row_fn(lay, h) for h in range(run.info.n_heads)]
               for lay in (range(layer + 1) if self.mode == "rollout" else [layer])]
        mode, factor, gen, causal = self.mode, self._factor, self._gen, run.info.is_causal

        def job():
            if mode == "rollout":
                maps = (att.reduce_heads(layer_fns, np.arange(n), "mean") for layer_fns in fns)
                return att.max_pool(att.rollout(maps), factor)
            return att.pooled_map(lambda rows: att.reduce_heads(fns[0], rows, mode), n, factor, causal=causal)

        def done(view):
            if gen == self._gen and mode == self.mode and layer == self.selection.layer:
                self._show(view, n)
                self.heatmap.plot.setTitle(f"{dict(MODES)[mode]}, layer {layer}")

        self.background.submit("aggregate", job, done, lambda msg: self.heatmap.plot.setTitle(msg))

    def _map_offthread(self, run, n: int, layer: int, head: int, title: str) -> None:
        """A long run's full map of one head, computed off the GUI thread (its softmax rows took 10-25 ms of the GUI
        thread at 1,024 tokens while a run streamed, 76 ms at 4,096 for a run opened whole, in one piece); the steps
        that arrive meanwhile are added when it lands."""
        job = self._waiting = self._map_job
        frozen = run.snapshot()  # (the run on screen grows while the job runs)
        rows, factor, causal = self.row_fn(layer, head, frozen), self._factor, run.info.is_causal
        self._n = 0
        self.heatmap.clear()  # (not the previous run's map under this run's title)
        self.heatmap.plot.setTitle(f"{title}: computing…")

        def done(view: np.ndarray) -> None:
            if job != self._waiting or self.run is None:  # a newer map was asked for meanwhile
                return
            self._waiting = None
            self._n = frozen.n_tokens
            self._show(view, n)
            self.heatmap.plot.setTitle(title)
            if self.run.n_tokens > self._n:  # steps that arrived while it was computed
                if self._keep is None:
                    self.append_rows(self._n, self.run.n_tokens)
                else:
                    self.draw_heatmap()

        self.offthread("head map", lambda: att.pooled_map(rows, n, factor, causal=causal), done, priority=1)

    _target = MAX_PIXELS  # image pixels a side the current heatmap was pooled to

    def _pixels(self) -> int:
        """Image pixels a side for the heatmap: about its size on screen, so that a long run's map is max-pooled
        (every peak stays visible, where scaling the full image down would drop rows) and each step uploads and
        paints a quarter of the pixels at 1,024 tokens; zooming in shows the region finer (`_refine`)."""
        vb = self.heatmap.plot.vb
        side = max(vb.width(), vb.height()) * self.heatmap.devicePixelRatioF()
        return int(min(MAX_PIXELS, max(MIN_PIXELS, side)))

    def _resized(self, *_args) -> None:
        """The heatmap grew on screen (a dock resized, a first layout): pool the map finer if it can (once a frame)."""
        if self.run is None or self._factor == 1 or self.mode != "head" or self.heatmap.data is None:
            return
        n = self._keep.size if self._keep is not None else self.run.n_tokens
        if att.pool_factor(n, self._pixels()) < self._factor:
            self.frames.post("repool", self.run_serial, lambda: self._guard(self.draw_heatmap))

    def _show(self, view: np.ndarray, n: int) -> None:
        f = self._factor
        rows, cols = self._axis_labels(n)
        self.heatmap.set_data(view, levels=self._levels(view), row_labels=rows, col_labels=cols,
                              shape=(view.shape[0] * f, view.shape[1] * f))
        self._place_query_line()

    def _axis_labels(self, n: int) -> tuple[list[str] | None, list[str] | None]:
        """Token text on an axis only when every label gets room (about 14 px a row, 56 px a column)."""
        if self._factor > 1:
            return None, None
        # the first n: an aggregate computed while the run streams can land after more steps arrived (the panel
        # recomputes it at its next draw); it is labelled with the tokens it covers
        labels = self._labels()[:n]
        size = self.heatmap.view.size()
        rows = labels if n * 14 <= max(size.height(), 300) else None
        cols = labels if n * 56 <= max(size.width(), 300) else None
        return rows, cols

    def _levels(self, view: np.ndarray) -> tuple[float, float]:
        if not self.contrast_box.isChecked() or view.size == 0:
            return (0.0, 1.0)
        flat = view.reshape(-1)[:: max(1, view.size // 65536)]
        flat = flat[flat > 0]
        top = float(np.quantile(flat, 0.995)) if flat.size else 1.0
        return (0.0, float(min(1.0, max(top, 0.02))))

    def append_rows(self, start: int, n: int) -> None:
        """Streaming: compute only the new query rows [start, n) and add them to the image."""
        f = self._factor
        if -(-n // f) > self._target:  # the pooling factor has to grow: recompute once
            self.draw_heatmap()
            return
        rows = self.row_fn(self.selection.layer, self.selection.head)(np.arange(start, n))  # [new, n]
        old = self.heatmap.data
        size = -(-n // f)
        view = np.zeros((size, size), np.float32)
        view[: old.shape[0], : old.shape[1]] = old
        if f == 1:
            view[start:n, :n] = rows
        else:  # new rows need not start on a block boundary: max them into their blocks
            for i, r in enumerate(range(start, n)):
                np.maximum(view[r // f], att.max_pool(rows[i: i + 1], f)[0], out=view[r // f])
        self._n = n
        if view.shape == old.shape:
            self.heatmap.update_rows(view)
        else:
            row_labels, col_labels = self._axis_labels(size)
            self.heatmap.set_data(view, levels=self.heatmap.levels, row_labels=row_labels, col_labels=col_labels,
                                  shape=(size * f, size * f), auto_range=True)

    def _place_query_line(self) -> None:
        idx = self._display_index(self.selection.position) if self.run is not None else None
        self.query_line.setVisible(idx is not None)
        if idx is not None:
            self.query_line.setValue(idx + 0.5)

    def _refine(self) -> None:
        """After zooming: the visible region at full (or finer) resolution as an overlay."""
        if self.run is None or self.mode != "head" or self._factor == 1 or self.heatmap.data is None:
            return
        (x0, x1), (y0, y1) = self.heatmap.plot.vb.viewRange()
        n = self._keep.size if self._keep is not None else self.run.n_tokens
        c0, c1 = max(0, int(x0)), min(n, int(np.ceil(x1)))
        r0, r1 = max(0, int(y0)), min(n, int(np.ceil(y1)))
        if c1 <= c0 or r1 <= r0:
            return
        f2 = att.pool_factor(max(c1 - c0, r1 - r0), self._target)
        if f2 >= self._factor:
            self.heatmap.clear_detail()
            return
        r0, c0 = r0 // f2 * f2, c0 // f2 * f2
        rows = self.row_fn(self.selection.layer, self.selection.head)(np.arange(r0, r1))[:, c0:c1]
        region = att.max_pool(rows, f2)
        self.heatmap.set_detail(region, (c0, r0, region.shape[1] * f2, region.shape[0] * f2))

    def _on_hover(self, row: int, col: int) -> None:
        n = self._keep.size if self._keep is not None else self._n
        if self.run is None or row >= n or col >= n:
            return
        qpos, kpos = self._position(row), self._position(col)
        toks = self.run.tokens
        if self.mode == "head":
            key = (self.selection.layer, self.selection.head, row, self.options, self._n)
            if self._hover_row is None or self._hover_row[0] != key:
                self._hover_row = (key, self.row_fn(self.selection.layer, self.selection.head)(np.array([row]))[0])
            weight, note = float(self._hover_row[1][col]), ""
        else:
            weight, note = self.heatmap.value_at(row, col), " (max of block)" if self._factor > 1 else ""
        self.heatmap.readout.setText(f"query {qpos} {toks[qpos].text!r}  →  key {kpos} {toks[kpos].text!r}:  "
                                     f"{weight:.4f}{note}")

    # --- head view -----------------------------------------------------------------------------
    def _draw_head_view(self, *_args) -> None:
        run = self.run
        if run is None or run.n_tokens == 0:
            return
        qidx = self._display_index(min(self.selection.position, run.n_tokens - 1))
        if qidx is None:
            self.head_view.clear()
            return
        layer = self.selection.layer
        heads = range(run.info.n_heads) if self.all_heads_box.isChecked() else [self.selection.head]
        lines = []
        k = TOP_K if len(heads) > 1 else 2 * TOP_K
        for h in heads:
            row = self.row_fn(layer, h)(np.array([qidx]))[0]  # [n]
            top = np.argsort(row)[::-1][:k]
            top = top[row[top] > 0.01]
            lines.append(HeadLines(h, top, row[top]))
        self.head_view.set_data(self._labels(), qidx, lines)

    def apply_theme(self) -> None:
        """Repaint the overview's thumbnails with the theme's colour map (the heatmap follows by itself)."""
        for layer, summary in self._summaries.items():
            self.overview.set_layer(layer, summary.thumbs)

    # --- overview and statistics (off the GUI thread) -----------------------------------------
    def _start_summaries(self) -> None:
        run = self.run
        info = run.info
        key = (id(run), run.n_tokens)
        if key == self._summary_key:
            return
        self._summary_key, self._summaries = key, {}
        gen = self._gen
        self.overview.reset(info.n_layers, info.n_heads, info.group_size)
        self.overview.select(self.selection.layer, self.selection.head)
        self.overview.status.setText(f"computing 0/{info.n_layers} layers…")
        q, k, ids = run.array("queries"), run.array("keys"), run.token_ids
        scalings = [run.layer_scaling(layer) for layer in range(info.n_layers)]

        def job(layer: int):
            if gen != self._gen:
                return None  # a newer run started: skip
            return att.layer_summary(q, k, layer, info.group_size, scalings[layer], info.is_causal, ids,
                                     window=self.thresholds.window)

        def done(summary):
            if summary is None or gen != self._gen:
                return
            self._summaries[summary.layer] = summary
            self.overview.set_layer(summary.layer, summary.thumbs, show=False)  # paint the pixels now,
            self.frames.post("overview", self.run_serial, self.overview.show_image)  # show once a frame
            left = info.n_layers - len(self._summaries)
            self.overview.status.setText(f"computing {len(self._summaries)}/{info.n_layers} layers…" if left else
                                         f"{info.n_layers} layers x {info.n_heads} heads; each thumbnail scaled "
                                         "to its own maximum; click one to open it")
            if not left:
                self.stats.set_summaries([self._summaries[i] for i in range(info.n_layers)], info.group_size)

        for layer in range(info.n_layers):
            self.background.submit(f"layer{layer}", lambda layer=layer: job(layer), done)

    def memory_bytes(self) -> int:
        """Arrays the panel holds (heatmap image and overlay, overview image, thumbnails, stats)."""
        total = 0
        for arr in (self.heatmap.data, self.overview.rgb):
            total += arr.nbytes if arr is not None else 0
        if self.heatmap.detail is not None and self.heatmap.detail.image is not None:
            total += self.heatmap.detail.image.nbytes
        total += sum(s.thumbs.nbytes + s.scores.nbytes for s in self._summaries.values())
        return total
