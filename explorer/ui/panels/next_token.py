"""Next-token panel: the prediction at the selected position as top-k probability bars, and live
what-if sliders (temperature, top-k, top-p) that reshape it exactly as the runner's sampler does."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QPushButton, QSlider, QSpinBox

from ...core import sampling
from ...core.errors import InputError
from ...core.events import StepEvent
from ...core.labels import readable_label, token_text
from ...core.run import Run
from .. import plot_style
from ..theme import OKABE_ITO
from ..widgets.status_line import StatusLine
from .base import Panel

ORIGINAL, FILTERED = (170, 170, 170), (40, 110, 200)  # removed bars take the theme's faint colour
CHOSEN = OKABE_ITO["orange"]
LABEL_WIDTH = 18


def _label(run: Run, token_id: int) -> str:
    return readable_label(token_text(run, token_id), LABEL_WIDTH)


class _BarPlot(pg.PlotWidget):
    """A modest preferred size: the dock's scroll area sizes a panel with wrapped text to its preferred
    height, and pyqtgraph's default (~600 x 400) would put a scroll bar on a normal dock."""

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(300, 180)


class NextTokenPanel(Panel):
    title = "Next token"
    help_text = (
        "At every position the model outputs a probability for every token in its vocabulary: its guess for the "
        "next token. The grey bars are that distribution (top-k shown, the token that actually came next in "
        "orange). The blue bars are what the sampler would draw from after temperature (below 1 sharpens, above 1 "
        "flattens; 0 = always the top token), top-k (keep only the k likeliest) and top-p (keep the smallest set "
        "reaching probability p). Move the sliders: nothing re-runs, this is the same filter the generator uses."
    )

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.filtered: sampling.Filtered | None = None
        self.logprobs: np.ndarray | None = None
        grid = QGridLayout()
        self.show_k = QSpinBox()
        self.show_k.setRange(2, 50)
        self.show_k.setValue(10)
        self.show_k.setPrefix("show top ")
        self.temperature = self._slider(0, 300, 100)
        self.top_k = self._slider(0, 100, 0)
        self.top_p = self._slider(1, 100, 100)
        self.t_label, self.k_label, self.p_label = QLabel(), QLabel(), QLabel()
        reset = QPushButton("run's settings")
        reset.setToolTip("Set the sliders to the settings this run was generated with")
        reset.clicked.connect(self.reset_to_run)
        for row, (label, slider) in enumerate(((self.t_label, self.temperature), (self.k_label, self.top_k),
                                               (self.p_label, self.top_p))):
            grid.addWidget(label, row, 0)
            grid.addWidget(slider, row, 1)
        grid.addWidget(self.show_k, 0, 2)
        grid.addWidget(reset, 1, 2)
        self.show_k.valueChanged.connect(self.redraw)
        self.body.addLayout(grid)
        self.info = StatusLine(lines=2, fit=True)  # a new step's figures relay out nothing
        self.body.addWidget(self.info)

        self.plot = plot_style.style(_BarPlot())
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.getPlotItem().hideButtons()
        self.plot.invertY(True)
        self.plot.setLabel("bottom", "probability")
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.bars = pg.BarGraphItem(x0=[], y=[], height=[], width=[])
        self.plot.addItem(self.bars)
        self.body.addWidget(self.plot, 1)
        self._update_labels()

    def _slider(self, lo: int, hi: int, value: int) -> QSlider:
        s = QSlider(Qt.Orientation.Horizontal)
        s.setRange(lo, hi)
        s.setValue(value)
        s.valueChanged.connect(self.redraw)
        return s

    # --- settings -----------------------------------------------------------------------------
    def settings(self) -> tuple[float, int | None, float | None]:
        """(temperature, top_k, top_p) as the sampler takes them (top-k 0 / top-p 1 = off)."""
        k = self.top_k.value()
        p = self.top_p.value() / 100
        return self.temperature.value() / 100, (k or None), (p if p < 1.0 else None)

    def set_settings(self, temperature: float, top_k: int | None, top_p: float | None) -> None:
        for slider, value in ((self.temperature, round(temperature * 100)), (self.top_k, top_k or 0),
                              (self.top_p, round((top_p or 1.0) * 100))):
            slider.blockSignals(True)
            slider.setValue(int(value))
            slider.blockSignals(False)
        self.redraw()

    def reset_to_run(self) -> None:
        if self.run is not None:
            s = self.run.request.settings
            self.set_settings(s.temperature, s.top_k, s.top_p)

    def _update_labels(self) -> None:
        t, k, p = self.settings()
        self.t_label.setText(f"temperature {t:.2f}" + (" (greedy)" if t == 0 else ""))
        self.k_label.setText(f"top-k {k}" if k else "top-k off")
        self.p_label.setText(f"top-p {p:.2f}" if p else "top-p off")

    # --- Panel contract -----------------------------------------------------------------------
    def draw_run(self, run: Run | None) -> None:
        if run is not None:
            s = run.request.settings
            self.set_settings(s.temperature, s.top_k, s.top_p)
        else:
            self.redraw()

    def draw_step(self, run: Run, event: StepEvent) -> None:
        self.draw_steps(run, [event])

    def draw_steps(self, run: Run, events: list[StepEvent]) -> None:
        if any(e.is_prefill for e in events):
            self.draw_run(run)
        elif self.selection.position >= events[0].start - 1:  # the actual next token just arrived
            self.redraw()

    def draw_selection(self, field: str) -> None:
        if field == "position":
            self.redraw()

    # --- drawing ------------------------------------------------------------------------------
    def apply_theme(self) -> None:
        self.redraw()  # the cut bars take the theme's faint colour

    def redraw(self) -> None:
        """Draw the prediction at the selected position. For a run that streamed into this panel the numbers (an
        lm_head product and sorts over the vocabulary) are computed off the GUI thread and drawn at the next
        frame; a run drawn whole (opened from a file, captured by a script) is drawn at once."""
        self._update_labels()
        run = self.run
        if run is None or run.n_tokens == 0:
            self._clear("No run yet.")
            return
        if run.unembed is None or run.norm is None:
            self._clear("This model is an encoder: it makes no next-token prediction.")
            return
        pos = min(self.selection.position, run.n_tokens - 1)
        settings, n_show = self.settings(), self.show_k.value()
        if not self.streamed:
            self._show(run, pos, self.compute(run, pos, settings, n_show))
            return
        frozen = run.snapshot()
        self.offthread("prediction", lambda: self.compute(frozen, pos, settings, n_show),
                       lambda result: self._show(frozen, pos, result) if self.run is not None else None)

    @staticmethod
    def compute(run: Run, pos: int, settings: tuple, n_show: int):
        """(logprobs, filtered, probs, order, entropy, filtered entropy), or the message of a refused setting."""
        logprobs = run.next_token_logprobs(pos)  # [vocab]
        try:
            filtered = sampling.filter_logits(logprobs, *settings)
        except InputError as exc:
            return str(exc)
        probs = np.exp(logprobs.astype(np.float64))  # [vocab]
        order = np.argsort(-probs)[:n_show]
        entropy = float(sampling.entropy(logprobs.astype(np.float64)))
        fp = filtered.probs[filtered.kept]
        filtered_entropy = float(-(fp * np.log(fp, where=fp > 0, out=np.zeros_like(fp))).sum())
        return logprobs, filtered, probs, order, entropy, filtered_entropy

    def _show(self, run: Run, pos: int, result) -> None:
        if isinstance(result, str):
            self._clear(result)
            return
        logprobs, filtered, probs, order, entropy, filtered_entropy = result
        self.logprobs, self.filtered = logprobs, filtered
        actual = run.tokens[pos + 1].id if pos + 1 < run.n_tokens else None
        rows = np.arange(len(order), dtype=np.float64)
        kept = self.filtered.kept[order]
        after = self.filtered.probs[order]
        x0 = np.zeros(2 * len(order))
        y = np.concatenate([rows - 0.19, rows + 0.19])
        width = np.concatenate([probs[order], after])
        brushes = [pg.mkBrush(CHOSEN if int(i) == actual else ORIGINAL) for i in order]
        brushes += [pg.mkBrush(FILTERED) if ok else pg.mkBrush(plot_style.faint()) for ok in kept]
        self.bars.setVisible(True)
        self.bars.setOpts(x0=x0, y=y, height=np.full(y.shape, 0.36), width=width, brushes=brushes,
                          pens=[pg.mkPen(None)] * len(y))
        ticks = [(float(r), f"{'✂ ' if not ok else ''}{_label(run, int(i))}")
                 for r, i, ok in zip(rows, order, kept, strict=True)]
        self.plot.getAxis("left").setTicks([ticks, []])
        self.plot.setYRange(-0.6, len(order) - 0.4, padding=0)
        top = plot_style.headroom(max(1e-3, float(width.max())) * 1.05, plot_style.FINE_STEPS)
        self.plot.setXRange(0, min(top, 1.05), padding=0)  # (a probability: never past 1)
        actual_text = ""
        if actual is not None:
            rank = int((probs > probs[actual]).sum())
            survives = "survives the filter" if self.filtered.kept[actual] else "is cut by the filter"
            actual_text = (f" Actual next token <b>{html.escape(_label(run, actual))}</b>: rank {rank}, "
                           f"p = {probs[actual]:.3f} → {self.filtered.probs[actual]:.3f} ({survives}).")
        self.info.setText(
            f"Prediction at position <b>{pos}</b> (after {html.escape(_label(run, run.tokens[pos].id))}): entropy "
            f"<b>{entropy:.2f}</b> nats; the sampler keeps <b>{int(self.filtered.kept.sum())}</b> of "
            f"{len(probs)} tokens (entropy {max(0.0, filtered_entropy):.2f} nats).{actual_text} "
            "<span style='color:gray'>grey: model · blue: sampler · ✂ cut</span>")

    def _clear(self, message: str) -> None:
        self.filtered = None
        self.bars.setVisible(False)
        self.plot.getAxis("left").setTicks(None)
        self.info.setText(message)
