"""KV cache panel: the cache growing while the model generates, the size formula with this model's numbers,
prefix reuse across runs, a what-if calculator (kv_whatif.py) and eviction what-ifs (kv_eviction.py).

Growth chart: x = step (0 = prefill, one jump; then one token per decode step), y = cache MiB from
`Run.kv_bytes_per_layer(step)`, as the total, stacked by layer (one filled curve per layer, created once
per run) or a single layer; the context limit is a ceiling line. `draw_step` appends one point with
setData on the existing items.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QCheckBox, QComboBox, QGridLayout, QLabel, QTabWidget, QVBoxLayout, QWidget

from ...core.analysis import kv
from ...core.events import StepEvent
from ...core.run import Run
from .. import plot_style
from ..selection import Selection
from ..theme import OKABE_ITO
from ..widgets.flow import FlowLayout, labelled
from ..widgets.status_line import StatusLine
from .base import Panel
from .kv_eviction import EvictionView
from .kv_whatif import WhatIfCalculator
from .lab_routing import moda_depth_kv_text

MIB = float(1 << 20)
CACHED_COLOUR = OKABE_ITO["orange"]  # the reused prefix
TOTAL_COLOUR = OKABE_ITO["blue"]
LIMIT_COLOUR = OKABE_ITO["vermillion"]
_FIGURES = ("tokens in cache", "KV cache", "per token")


def prefill_compute_ms(event: StepEvent) -> float:
    """Milliseconds the prefill spent computing the model (embed, layers, lm_head; not tokenizing or stats)."""
    return float(sum(ms for stage, ms in event.timings_ms if stage == "embed" or stage.startswith("layer")
                     or stage == "lm_head"))


class KVCachePanel(Panel):
    title = "KV cache"
    help_text = (
        "Each layer keeps the keys (K) and values (V) of every token it has seen, so a new token only has to "
        "compute its own and can attend to all the earlier ones: that memory is the KV cache. The chart shows "
        "it growing: one jump for the prompt (prefill), then one token per generated step, up to the model's "
        "context limit. The formula shows where the bytes come from, and how grouped-query attention (several "
        "query heads sharing one KV head) shrinks it. 'What-if' sizes other models, contexts and number formats. "
        "'Eviction' tries keeping only part of the cache (as StreamingLLM, H2O and SnapKV do) and measures, by "
        "running the model again, how much the next-token predictions change. It hides the evicted entries and "
        "keeps every token at its original position: for StreamingLLM, which re-numbers positions inside its "
        "cache, that is a masking approximation. The what-if sizes assume every layer caches the whole context, "
        "except for models with a sliding window (Mistral-7B v0.1: 4,096 tokens), whose cache stops growing there."
    )

    def __init__(self, selection: Selection, parent: QWidget | None = None):
        super().__init__(selection, parent)
        self.tabs = QTabWidget()
        self.body.addWidget(self.tabs)
        self._build_growth_tab()
        self.whatif = WhatIfCalculator()
        self.tabs.addTab(self.whatif, "What-if calculator")
        self.eviction = EvictionView(lambda *args, **kw: self.services.submit_job(*args, **kw))
        self.tabs.addTab(self.eviction, "Eviction")
        self._layer_items: list[pg.PlotDataItem] = []
        self._n_layers = 0
        self._steps: list[float] = []
        self._per_layer: list[np.ndarray] = []  # per step [layers] bytes
        self._cached_fraction = 0.0
        self._history: dict[int, tuple[float, int, int]] = {}  # id(run) -> (prefill ms, new tokens, cached)
        self._order: list[int] = []

    # --- layout ----------------------------------------------------------------------------------------
    def _build_growth_tab(self) -> None:
        tab = QWidget()
        layout = QVBoxLayout(tab)
        figures = QGridLayout()
        big = QFont()
        big.setPointSizeF(big.pointSizeF() * 2.0)
        big.setBold(True)
        self.figures: dict[str, StatusLine] = {}
        for col, name in enumerate(_FIGURES):
            value = StatusLine("\u2014", chars=11)  # a figure that changes every step: its width stays put
            value.setFont(big)
            value.setAlignment(Qt.AlignCenter)
            caption = QLabel(name)
            caption.setAlignment(Qt.AlignCenter)
            figures.addWidget(value, 0, col)
            figures.addWidget(caption, 1, col)
            self.figures[name] = value
        layout.addLayout(figures)

        controls = FlowLayout()  # wraps in a narrow dock instead of clipping
        self.mode = QComboBox()
        self.mode.addItems(["Total", "Stacked by layer"])
        self.mode.currentIndexChanged.connect(lambda _i: self._refresh())
        controls.addWidget(labelled("Show:", self.mode))
        self.to_limit = QCheckBox("Zoom out to the context limit")
        self.to_limit.toggled.connect(lambda _on: self._set_range())
        controls.addWidget(self.to_limit)
        controls.addStretch(1)
        layout.addLayout(controls)

        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        plot_style.grid(self.plot, x=True, y=True, alpha=0.25)
        self.plot.setLabel("bottom", "step (0 = prefill: the whole prompt at once; then one token per step)")
        self.plot.setLabel("left", "KV cache (MiB)")
        self.plot.addLegend(offset=(10, 10))
        self.cached_item = pg.PlotDataItem(pen=pg.mkPen(CACHED_COLOUR, width=1), fillLevel=0,
                                           brush=pg.mkBrush(pg.mkColor(CACHED_COLOUR + "96")), name="reused prefix")
        self.total_item = pg.PlotDataItem(pen=pg.mkPen(TOTAL_COLOUR, width=2.5), symbol="o", symbolSize=5,
                                          symbolBrush=TOTAL_COLOUR, name="cache")
        self.total_item.setZValue(10)
        self.cached_item.setZValue(11)
        self.plot.addItem(self.total_item)
        self.plot.addItem(self.cached_item)
        self.ceiling = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(LIMIT_COLOUR, width=2, style=Qt.DashLine),
                                       label="context limit", labelOpts={"position": 0.1, "color": LIMIT_COLOUR})
        self.plot.addItem(self.ceiling)
        self.step_marker = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#888888", style=Qt.DotLine))
        self.plot.addItem(self.step_marker)
        self.plot.getAxis("left").enableAutoSIPrefix(False)  # "MiB (x0.001)" reads worse than 0.9 MiB
        plot_style.style(self.plot)
        layout.addWidget(self.plot, 1)

        self.formula = StatusLine(fit=True)  # (its figures change at every step)
        self.formula.setTextFormat(Qt.RichText)
        layout.addWidget(self.formula)
        self.reuse = StatusLine(fit=True)
        self.reuse.setTextFormat(Qt.RichText)
        layout.addWidget(self.reuse)
        self.tabs.addTab(tab, "Growth and formula")

    # --- drawing -----------------------------------------------------------------------------------------
    def draw_run(self, run: Run | None) -> None:
        self._steps, self._per_layer = [], []
        if run is None:
            self.eviction.set_run(None)
            self._refresh()
            return
        self._setup_layers(run)
        self._apply_ceiling(run)
        for i, event in enumerate(run.steps):
            self._steps.append(float(i))
            self._per_layer.append(run.kv_bytes_per_layer(i).astype(np.float64))
            if i == 0:
                self._remember_prefill(run, event)
        self._cached_fraction = self._cached_share(run)
        self._refresh()
        self.whatif.set_model(run.info)
        self.eviction.set_run(run, self.selection.step)

    def draw_step(self, run: Run, event: StepEvent) -> None:
        self.draw_steps(run, [event])

    def draw_steps(self, run: Run, events: list[StepEvent]) -> None:
        first = events[0]
        if self._n_layers != run.info.n_layers or first.step == 0 or len(self._steps) != first.step:
            self.draw_run(run)  # a new run (or a missed step): draw everything
            return
        for event in events:
            self._steps.append(float(event.step))
            self._per_layer.append(np.asarray(event.kv_bytes_per_layer, np.float64))
        self._refresh()
        if events[-1].finish_reason:
            self.eviction.set_run(run, self.selection.step)

    def draw_selection(self, field: str) -> None:
        if field == "step":
            self.step_marker.setValue(self.selection.step)
            self.eviction.set_row(self.selection.step)

    def _setup_layers(self, run: Run) -> None:
        n = run.info.n_layers
        self._n_layers = n
        if len(self._layer_items) == n:  # same shape: keep the items, only their data changes
            return
        self.mode.blockSignals(True)
        self.mode.clear()
        self.mode.addItems(["Total", "Stacked by layer"] + [f"Layer {i}" for i in range(n)])
        self.mode.blockSignals(False)
        for item in self._layer_items:
            self.plot.removeItem(item)
        cmap = plot_style.colormap("sequential")
        self._layer_items = []
        for layer in reversed(range(n)):  # the top of the stack first, so lower layers are drawn over it
            colour = cmap.map(layer / max(1, n - 1), mode="qcolor")
            item = pg.PlotDataItem(pen=pg.mkPen(colour, width=1), fillLevel=0, brush=pg.mkBrush(colour))
            self.plot.addItem(item)
            self._layer_items.append(item)
        self._layer_items.reverse()  # index = layer

    def _apply_ceiling(self, run: Run) -> None:
        cfg = kv.config_from_info(run.info)
        self._bytes_per_elem = kv.DTYPE_BYTES[kv.dtype_key(run.info.dtype)]
        self._cfg = cfg
        self.ceiling.setValue(cfg.bytes(cfg.context, kv.dtype_key(run.info.dtype)) / MIB)
        self.ceiling.label.setFormat(f"context limit: {cfg.context:,} tokens = "
                                     f"{kv.format_bytes(cfg.bytes(cfg.context, kv.dtype_key(run.info.dtype)))}")

    def chart_bytes(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps [S], bytes [S, layers]) as drawn (the chart shows them in MiB)."""
        if not self._steps:
            return np.zeros(0), np.zeros((0, max(1, self._n_layers)))
        return np.asarray(self._steps), np.stack(self._per_layer)

    def _refresh(self) -> None:
        x, per_layer = self.chart_bytes()
        mode = self.mode.currentIndex()
        stacked = mode == 1 and len(x) > 0
        if mode >= 2 and per_layer.shape[1] > mode - 2:
            y = per_layer[:, mode - 2]
        else:
            y = per_layer.sum(axis=1) if per_layer.size else np.zeros(0)
        self.total_item.setData(x, y / MIB)
        if stacked:
            cumulative = np.cumsum(per_layer, axis=1) / MIB  # [S, layers]
            for layer, item in enumerate(self._layer_items):
                item.setData(x, cumulative[:, layer])
        for item in self._layer_items:
            item.setVisible(stacked)
        if len(x) and self._cached_fraction > 0:  # the reused positions' share of the cache, at every step
            cached = y[0] * self._cached_fraction
            self.cached_item.setData(x, np.full(len(x), cached / MIB))
        else:
            self.cached_item.setData([], [])
        self._update_figures(x, per_layer)
        self._set_range()

    def _set_range(self) -> None:
        x, per_layer = self.chart_bytes()
        top = float(per_layer.sum(axis=1).max()) / MIB if per_layer.size else 1.0
        if self.to_limit.isChecked() and self._n_layers:
            top = max(top, float(self.ceiling.value()))
        steps = len(x)
        run = self.run
        if self.streamed and run is not None and run.finish_reason is None and run.info.is_causal:
            steps = max(steps, 1 + run.request.settings.max_new_tokens)  # room for the planned steps: no move a step
        self.plot.setXRange(-0.5, max(1.0, steps - 0.5), padding=0.02)
        self.plot.setYRange(0, plot_style.headroom(top * 1.12), padding=0)

    def _update_figures(self, x: np.ndarray, per_layer: np.ndarray) -> None:
        run = self.run
        if run is None or not len(x):
            for label in self.figures.values():
                label.setText("\u2014")
            self.formula.setText("")
            self.reuse.setText("")
            return
        last = run.steps[int(x[-1])]
        tokens = last.start + last.n_new
        total = float(per_layer[-1].sum())
        self.figures["tokens in cache"].setText(f"{tokens:,}")
        self.figures["KV cache"].setText(kv.format_bytes(total))
        self.figures["per token"].setText(kv.format_bytes(total / max(1, tokens)))
        f = kv.formula(self._cfg, tokens, self._bytes_per_elem)
        check = "\u2713 equals" if f.total == total else "\u2260 differs from"
        self.formula.setText(
            f"<b>Formula</b> (K and V \u00d7 layers \u00d7 KV heads \u00d7 head dim \u00d7 tokens \u00d7 bytes per "
            f"number, {run.info.dtype}):<br><span style='font-size:large'>{f.text()}</span> "
            f"({check} the measured cache)<br>{f.savings_text()}{moda_depth_kv_text(run, self._bytes_per_elem)}")
        self._update_reuse(run)

    # --- prefix reuse ------------------------------------------------------------------------------------
    def _remember_prefill(self, run: Run, event: StepEvent) -> None:
        key = id(run)
        if key not in self._history:
            self._order.append(key)
            self._order = self._order[-8:]
        self._history[key] = (prefill_compute_ms(event), event.n_new - event.cached_prefix, event.cached_prefix)
        self._history = {k: v for k, v in self._history.items() if k in self._order}

    @staticmethod
    def _cached_share(run: Run) -> float:
        """Fraction of the prefill's cache that was reused from the previous run."""
        if not run.steps or run.steps[0].cached_prefix <= 0:
            return 0.0
        return run.steps[0].cached_prefix / max(1, run.steps[0].n_new)

    def previous_full_prefill(self, run: Run) -> tuple[float, int] | None:
        """(ms, tokens) of the latest full (nothing reused) prefill among the runs seen before `run`."""
        for key in reversed(self._order):
            if key != id(run) and self._history[key][2] == 0:
                return self._history[key][0], self._history[key][1]
        return None

    def _update_reuse(self, run: Run) -> None:
        first = run.steps[0]
        if first.cached_prefix <= 0:
            self.reuse.setText("<b>Prefix reuse:</b> none in this run. Run a prompt that starts with the previous "
                               "run's text (e.g. add a follow-up) and its cached keys and values are reused.")
            return
        new = first.n_new - first.cached_prefix
        ms = prefill_compute_ms(first)
        text = (f"<b style='color:{CACHED_COLOUR}'>Prefix reuse:</b> {first.cached_prefix:,} tokens came from the "
                f"previous run's cache (orange); the prefill computed only {new:,} new tokens in {ms:,.1f} ms.")
        prev = self.previous_full_prefill(run)
        if prev is not None:
            prev_ms, prev_tokens = prev
            text += (f" The last full prefill ({prev_tokens:,} tokens) took {prev_ms:,.1f} ms: "
                     f"{prev_ms - ms:,.1f} ms saved ({(prev_ms - ms) / prev_ms if prev_ms else 0:.0%}).")
        self.reuse.setText(text)
