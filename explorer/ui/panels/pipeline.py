"""Pipeline panel: where the time of a run goes, stage by stage and step by step.

Each StepEvent carries `timings_ms` (tokenize, embed, layer.0 .. layer.{L-1}, lm_head, capture,
sample). The panel draws the selected step as a Gantt strip (one row per stage, bars placed at
their start time) and every step as a compact stacked bar (prefill on top, decode steps below);
clicking a bar selects that step. Figures: time to first token, tokens/s, capture overhead
(from the last `lm-explorer bench`), capture and process memory.

pyqtgraph items: one BarGraphItem for the Gantt strip, one per stage group in the overview.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QSplitter, QWidget

from ...core.events import StepEvent
from ...core.models import cache_root
from ...core.run import Run
from .. import plot_style
from ..theme import OKABE_ITO as C
from ..widgets.status_line import StatusLine
from .base import Panel

# stage group -> (label, colour) in drawing order (Okabe-Ito palette, colour-blind safe)
GROUPS: dict[str, tuple[str, str]] = {
    "tokenize": ("tokenize", C["orange"]),
    "embed": ("embed", C["sky"]),
    "layers": ("layers (attention + MLP)", C["blue"]),
    "lm_head": ("final norm + lm_head", C["green"]),
    "capture": ("capture (our stats)", C["purple"]),
    "sample": ("sample", C["vermillion"]),
    "other": ("other", C["grey"]),
}
_LAYER_ALT = "#004C80"  # odd layers in the Gantt strip (a darker blue), so layer boundaries stay visible
BENCH_FILE = "bench-latest.json"

EXPLANATION = (  # str.format with the Okabe-Ito names
    "<b>What happens between your prompt and the answer.</b> "
    "<b style='color:{orange}'>tokenize</b>: the text is cut into tokens "
    "(<a href='panel:tokens'>Tokens</a>). "
    "<b style='color:{sky}'>embed</b>: each token id becomes a vector "
    "(<a href='panel:embeddings'>Embeddings</a>). "
    "<b style='color:{blue}'>layers</b>: every layer mixes information between positions with attention "
    "(<a href='panel:attention'>Attention</a>; its keys and values fill the "
    "<a href='panel:kv_cache'>KV cache</a>) and then transforms each position with an MLP "
    "(<a href='panel:depth'>Layer depth</a>). "
    "<b style='color:{green}'>lm_head</b>: the last state is normalised and scored against the whole "
    "vocabulary. <b style='color:{vermillion}'>sample</b>: one token is picked from that distribution "
    "(<a href='panel:next_token'>Next token</a>) and fed back as the next step's input. "
    "<b style='color:{purple}'>capture</b> is what this explorer adds: per-position predictions and "
    "statistics. The first step (prefill) reads the whole prompt at once; each later step (decode) reads "
    "one token and reuses the cached keys and values."
).format(**C)


def stage_group(stage: str) -> str:
    """The colour group of a timing stage name ("layer.3" -> "layers")."""
    if stage.startswith("layer"):
        return "layers"
    return stage if stage in GROUPS else "other"


def step_group_ms(timings: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """Milliseconds per stage group for one step."""
    out = dict.fromkeys(GROUPS, 0.0)
    for stage, ms in timings:
        out[stage_group(stage)] += ms
    return out


def bench_path() -> Path:
    """Where `lm-explorer bench` leaves its latest results (the user cache folder)."""
    return cache_root() / BENCH_FILE


def read_bench() -> dict | None:
    try:
        return json.loads(bench_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def process_rss_bytes() -> int:
    """Resident memory of this process (/proc/self/statm on Linux, else psutil, else 0)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing or unsupported platform
        return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def overhead_text(bench: dict | None) -> str:
    """'prefill x1.04, decode 0.91x speed' from the suite's JSON, or how to get it."""
    if not bench:
        return "run <code>lm-explorer bench</code> to measure"
    parts = []
    prefill = bench.get("prefill", {}).get("sizes", {})
    if prefill:
        size = "512" if "512" in prefill else sorted(prefill, key=int)[-1]
        parts.append(f"prefill {prefill[size]['ratio']:.2f}x time ({size} tokens)")
    decode = bench.get("decode", {})
    if "ratio" in decode:
        parts.append(f"decode {decode['ratio']:.2f}x speed")
    when = bench.get("meta", {}).get("date", "")[:10]
    return ", ".join(parts) + (f" <span style='color:gray'>(bench {when})</span>" if when else "")


class PipelinePanel(Panel):
    title = "Pipeline"
    help_text = (
        "Where the time goes. The big strip shows the selected step stage by stage: tokenizing, the "
        "embedding lookup, each layer, the final norm and lm_head, our capture statistics and sampling, each "
        "bar starting where the previous one ended. Below, every step of the run as one stacked bar: the "
        "prefill (the whole prompt at once) on top, then one decode step per generated token. Click a bar to "
        "select that step. The figures compare reading the prompt (prefill tokens/s) with generating "
        "(decode tokens/s) and show what capturing everything costs in time and memory."
    )
    panel_requested = Signal(str)  # a link in the explanation: the registry name of a panel

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self._bench = read_bench()
        self._figures: dict[str, StatusLine] = {}
        grid = QGridLayout()
        names = [("ttft", "time to first token"), ("prefill", "prefill"), ("decode", "decode"),
                 ("overhead", "capture overhead"), ("capture", "capture memory"), ("process", "process memory")]
        for i, (key, label) in enumerate(names):
            name = QLabel(f"<span style='color:gray'>{label}</span>")
            # long figures wrap rather than widen the panel (presenter fonts); a new figure relays out nothing
            value = StatusLine("-", chars=12, fit=True, policy=QSizePolicy.Preferred)
            value.setTextFormat(Qt.TextFormat.RichText)
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(name, i // 3, (i % 3) * 2)
            grid.addWidget(value, i // 3, (i % 3) * 2 + 1)
            self._figures[key] = value
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        grid.setColumnStretch(5, 1)
        self.body.addLayout(grid)

        split = QSplitter(Qt.Orientation.Vertical)
        self.detail = pg.PlotWidget()
        self.detail.setMouseEnabled(x=True, y=False)
        self.detail.getPlotItem().invertY(True)
        self.detail.setLabel("bottom", "milliseconds since the step started")
        self.detail.getPlotItem().hideButtons()
        self.gantt = pg.BarGraphItem(x0=[], y=[], height=[], width=[])
        self.detail.addItem(self.gantt)
        split.addWidget(self.detail)

        self.overview = pg.PlotWidget()
        self.overview.setMouseEnabled(x=True, y=True)
        self.overview.getPlotItem().invertY(True)
        self.overview.getPlotItem().hideButtons()
        self.overview.setLabel("bottom", "milliseconds per step (all steps; click one)")
        self.overview.setLabel("left", "step (0 = prefill)")
        legend = self.detail.addLegend(offset=(-10, 10), labelTextSize="8pt")  # the strip's empty corner
        self._bars: dict[str, pg.BarGraphItem] = {}
        for group, (label, colour) in GROUPS.items():
            item = pg.BarGraphItem(x0=[], y=[], height=[], width=[], brush=colour, pen=None)
            self._bars[group] = item
            self.overview.addItem(item)
            if group != "other":
                legend.addItem(item, label)
        self._cursor = pg.BarGraphItem(x0=[0], y=[0], height=[1.0], width=[0], brush=None,
                                       pen=pg.mkPen(plot_style.ink(), width=2))
        self.overview.addItem(self._cursor)
        self._prefill_note = pg.TextItem(anchor=(1, 0.5), color=plot_style.ink(), fill=plot_style.fill())
        self.overview.addItem(self._prefill_note)
        self.overview.scene().sigMouseClicked.connect(self._overview_clicked)
        split.addWidget(self.overview)
        for plot in (self.detail, self.overview):
            for name in ("left", "bottom"):
                plot.getPlotItem().getAxis(name).enableAutoSIPrefix(False)  # no label re-layout per update
        plot_style.style(self.detail, tick_scale=0.8)  # many stage names: smaller ticks
        plot_style.style(self.overview)
        split.setSizes([300, 200])
        self.body.addWidget(split, stretch=1)

        self.explain = QLabel(EXPLANATION)
        self.explain.setWordWrap(True)
        self.explain.setTextFormat(Qt.TextFormat.RichText)
        self.explain.linkActivated.connect(lambda link: self.panel_requested.emit(link.split(":", 1)[-1]))
        self.body.addWidget(self.explain)
        self._groups = np.zeros((0, len(GROUPS)), np.float64)  # [steps, groups] ms
        self._rss_at = -1.0

    # --- drawing -------------------------------------------------------------------------------
    def apply_theme(self) -> None:
        self._cursor.setOpts(pen=pg.mkPen(plot_style.ink(), width=2))
        self._prefill_note.setColor(plot_style.ink())
        self._prefill_note.fill = pg.mkBrush(plot_style.fill())
        self._prefill_note.update()
        self._redraw_detail()

    def draw_run(self, run: Run | None) -> None:
        self._groups = np.zeros((0, len(GROUPS)), np.float64)
        if run is None or not run.steps:
            for item in self._bars.values():
                item.setOpts(x0=[], y=[], height=[], width=[])
            self.gantt.setOpts(x0=[], y=[], height=[], width=[])
            for label in self._figures.values():
                label.setText("-")
            return
        self._groups = np.array([list(step_group_ms(s.timings_ms).values()) for s in run.steps])
        self._redraw_overview()
        self._redraw_detail()
        self._redraw_figures()

    def draw_step(self, run: Run, event: StepEvent) -> None:
        self.draw_steps(run, [event])

    def draw_steps(self, run: Run, events: list[StepEvent]) -> None:
        if len(self._groups) != len(run.steps) - len(events):
            self.draw_run(run)
            return
        rows = np.array([list(step_group_ms(event.timings_ms).values()) for event in events])  # [steps, groups]
        self._groups = np.concatenate([self._groups, rows])
        self._redraw_overview()
        if self._shown_step() == len(run.steps) - 1:
            self._redraw_detail()
        self._redraw_figures()

    def draw_selection(self, field: str) -> None:
        if field == "step":
            self._redraw_detail()
            self._move_cursor()

    def _shown_step(self) -> int:
        """The selected step, among the steps drawn so far (the selection may run ahead of on_step)."""
        return max(0, min(self.selection.step, len(self._groups) - 1))

    def _redraw_overview(self) -> None:
        groups = self._groups  # [steps, groups]
        n = len(groups)
        y = np.arange(n, dtype=float)
        left = np.zeros(n)
        for g, item in enumerate(self._bars.values()):
            width = groups[:, g]
            keep = width > 0
            item.setOpts(x0=left[keep], y=y[keep], height=0.8, width=width[keep])
            left += width
        totals = left
        plot = self.overview.getPlotItem()
        if n > 1:  # fit the decode steps; the prefill bar runs off the edge and says its length
            xmax = float(totals[1:].max()) * 1.15
            self._prefill_note.setText(f"prefill {totals[0]:,.0f} ms ▸" if totals[0] > xmax else "")
            self._prefill_note.setPos(xmax, 0)
        else:
            xmax = float(totals.max()) * 1.05 if n else 1.0
            self._prefill_note.setText("")
        plot.vb.setRange(xRange=(0, max(xmax, 1e-3)), yRange=(-0.6, max(n, 4) - 0.4), padding=0)
        self._move_cursor()

    def _move_cursor(self) -> None:
        if not len(self._groups):
            return
        s = self._shown_step()
        total = float(self._groups[s].sum())
        self._cursor.setOpts(x0=[0], y=[s], height=[0.95], width=[total])

    def _redraw_detail(self) -> None:
        if self.run is None or not len(self._groups):
            return
        s = self._shown_step()
        step = self.run.steps[s]
        names = [name for name, _ in step.timings_ms]
        ms = np.array([v for _, v in step.timings_ms], dtype=float)  # [stages]
        starts = np.concatenate([[0.0], np.cumsum(ms)[:-1]])
        brushes = []
        for name in names:
            group = stage_group(name)
            colour = GROUPS[group][1]
            if group == "layers" and name.rsplit(".", 1)[-1].isdigit() and int(name.rsplit(".", 1)[-1]) % 2:
                colour = _LAYER_ALT
            brushes.append(pg.mkBrush(colour))
        y = np.arange(len(names), dtype=float)
        self.gantt.setOpts(x0=starts, y=y, height=0.8, width=np.maximum(ms, 1e-6), brushes=brushes, pen=None)
        axis = self.detail.getPlotItem().getAxis("left")
        height = self.detail.getPlotItem().vb.height() or 300.0
        every = max(1, int(np.ceil(len(names) * 13.0 / height)))  # about 13 px per label: no overlaps
        ticks = [(i, n) for i, n in enumerate(names) if i % every == 0]
        axis.setTicks([ticks])
        kind = "prefill" if step.is_prefill else "decode"
        n_new = step.n_new - step.cached_prefix
        self.detail.setTitle(f"step {s} ({kind}, {n_new} new token{'s' * (n_new != 1)}): {ms.sum():,.1f} ms")
        total = max(float(ms.sum()), 1e-3)
        self.detail.getPlotItem().vb.setRange(xRange=(-0.02 * total, 1.02 * total),
                                              yRange=(-0.6, len(names) - 0.4), padding=0)

    def _redraw_figures(self) -> None:
        run = self.run
        first = run.steps[0]
        ttft = sum(v for _, v in first.timings_ms)
        f = self._figures
        f["ttft"].setText(f"<b>{ttft:,.0f} ms</b>")
        f["prefill"].setText(f"<b>{run.prefill_tokens_per_s():,.0f}</b> tokens/s "
                             f"({first.n_new - first.cached_prefix} tokens)")
        f["decode"].setText(f"<b>{run.decode_tokens_per_s():,.1f}</b> tokens/s ({len(run.steps) - 1} steps)"
                            if len(run.steps) > 1 else "no tokens generated")
        totals = self._groups.sum(axis=0)
        share = totals[list(GROUPS).index("capture")] / max(totals.sum(), 1e-9)
        f["overhead"].setText(f"stats {share:.0%} of this run; {overhead_text(self._bench)}")
        wide = run.widened
        f["capture"].setText(f"<b>{_mib(run.capture_bytes())}</b> for {run.n_tokens} tokens"
                             + (f" ({', '.join(wide)} kept in float32: values beyond float16's range)" if wide else ""))
        now = time.monotonic()
        if now - self._rss_at > 0.5 or self.run.finish_reason is not None:  # at most twice a second while streaming
            self._rss_at = now
            f["process"].setText(f"<b>{_mib(process_rss_bytes())}</b> resident")

    # --- interaction ---------------------------------------------------------------------------
    def _overview_clicked(self, event) -> None:
        if self.run is None or not len(self._groups):
            return
        plot = self.overview.getPlotItem()
        if not plot.sceneBoundingRect().contains(event.scenePos()):
            return
        point = plot.vb.mapSceneToView(event.scenePos())
        step = int(round(point.y()))
        if 0 <= step < len(self._groups):
            self.selection.set("step", step)

    def export_widget(self) -> QWidget:
        return self
