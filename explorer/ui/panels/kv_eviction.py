"""Eviction what-ifs of the KV cache panel: for a budget, which cache entries StreamingLLM, H2O and SnapKV keep
(one layer x position mask image per policy, the fraction of KV heads keeping each entry) and, on request, the
measured effect: the model re-runs the decode steps with the evicted entries masked out (core/analysis/eviction)
and the KL divergence / top-1 change of each step's next-token distribution vs the full cache is plotted.

The masks are pure numpy (Background pool); the re-computation needs the model, so it is an engine job
(core.analysis.jobs.EvictionWhatIf, through the panel's `services.submit_job`) that reports progress to a
progress bar; panels never hold the model themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (
    QGridLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...core.analysis import eviction as ev
from ...core.analysis.jobs import EvictionWhatIf
from ...core.run import Run
from .. import plot_style
from ..theme import OKABE_ITO
from ..widgets.background import Background
from ..widgets.flow import FlowLayout, labelled
from ..widgets.heatmap import Heatmap
from ..widgets.status_line import StatusLine

COLOURS = {"streaming": OKABE_ITO["blue"], "h2o": OKABE_ITO["vermillion"], "snapkv": OKABE_ITO["green"]}


class EvictionView(QWidget):
    def __init__(self, submit_job: Callable[..., object], parent: QWidget | None = None):
        super().__init__(parent)
        self.submit_job = submit_job  # PanelServices.submit_job of the panel holding this view
        self.job = None  # the measurement in progress (a JobHandle)
        self.run: Run | None = None
        self.rows = np.zeros(0, np.int64)
        self.keeps: dict[str, np.ndarray] = {}
        self.effects: dict[str, ev.EvictionEffect] = {}
        self._row_step = 0
        self.background = Background(self)
        layout = QVBoxLayout(self)

        controls = FlowLayout()  # wraps in a narrow dock instead of clipping
        self.spins: dict[str, QSpinBox] = {}
        for key, label, lo, hi, value, tip in (
            ("budget", "Budget", 2, 100_000, 16, "cache entries kept per layer and KV head"),
            ("sinks", "Sinks", 0, 64, 4, "StreamingLLM: first tokens always kept (attention sinks)"),
            ("window", "Recent / obs. window", 1, 4096, 4,
             "H2O: recent tokens always kept; SnapKV: last prompt tokens whose attention scores the rest"),
            ("steps", "Decode steps", 1, 4096, 32, "decode steps to re-compute"),
        ):
            spin = QSpinBox()
            spin.setRange(lo, hi)
            spin.setValue(value)
            spin.setToolTip(tip)
            spin.valueChanged.connect(lambda _v: self._recompute_masks())
            controls.addWidget(labelled(label, spin))
            self.spins[key] = spin
        self.measure = QPushButton("Measure the effect (re-run the model)")
        self.measure.clicked.connect(self.start_measure)
        controls.addWidget(self.measure)
        controls.addStretch(1)
        layout.addLayout(controls)
        self.bar = QProgressBar()
        self.bar.setRange(0, 100)
        self.bar.setTextVisible(True)
        self.bar.hide()
        layout.addWidget(self.bar)

        grid = QGridLayout()
        self.maps: dict[str, Heatmap] = {}
        self.captions: dict[str, QLabel] = {}
        for col, kind in enumerate(ev.POLICIES):
            caption = QLabel(f"<b>{ev.LABELS[kind]}</b>" + (" (masking approximation)" if kind == "streaming" else ""))
            caption.setWordWrap(True)
            heat = Heatmap("sequential", colorbar=(col == len(ev.POLICIES) - 1))
            heat.plot.setLabel("left", "layer")
            heat.plot.setLabel("bottom", "cache position")
            grid.addWidget(caption, 0, col)
            grid.addWidget(heat, 1, col)
            self.maps[kind], self.captions[kind] = heat, caption
        layout.addLayout(grid, 3)

        self.kl_plot = pg.PlotWidget()
        self.kl_plot.setMenuEnabled(False)
        plot_style.grid(self.kl_plot, x=True, y=True, alpha=0.25)
        self.kl_plot.setLabel("bottom", "decode step")
        self.kl_plot.setLabel("left", "KL(full \u2016 evicted), nats")
        self.kl_plot.addLegend(offset=(10, 10))
        self.kl_items = {kind: self.kl_plot.plot(pen=pg.mkPen(COLOURS[kind], width=2), symbol="o", symbolSize=5,
                                                 **plot_style.symbol_style(COLOURS[kind]), name=ev.LABELS[kind])
                         for kind in ev.POLICIES}
        plot_style.style(self.kl_plot)
        layout.addWidget(self.kl_plot, 2)
        self.status = StatusLine("Generate some tokens, then the masks appear here; 'Measure' re-runs the model.",
                                 lines=3)
        layout.addWidget(self.status)

    # --- inputs -------------------------------------------------------------------------------------------
    def policies(self) -> list[ev.EvictionPolicy]:
        s = {k: v.value() for k, v in self.spins.items()}
        return [ev.EvictionPolicy(kind, budget=s["budget"], sinks=min(s["sinks"], s["budget"] - 1), window=s["window"])
                for kind in ev.POLICIES]

    def set_run(self, run: Run | None, step: int = 0) -> None:
        self.run = run
        self.effects = {}
        for item in self.kl_items.values():
            item.setData([], [])
        self._row_step = step
        self._recompute_masks()

    def set_row(self, step: int) -> None:
        """Show the masks at decode step `step` (the selection's step; prefill shows the first decode step)."""
        self._row_step = step
        self._draw_masks()

    # --- keep-masks (no model needed) ---------------------------------------------------------------------
    def _recompute_masks(self) -> None:
        run = self.run
        if run is None or run.n_tokens <= run.n_prompt or run.finish_reason is None:
            self.keeps, self.rows = {}, np.zeros(0, np.int64)
            return
        n_steps, policies = self.spins["steps"].value(), self.policies()
        self.status.setText("Computing which entries each policy keeps\u2026")
        self.background.submit(
            "kv-masks", lambda: _masks(run, policies, n_steps), self._masks_done,
            lambda msg: self.status.setText(f"Could not compute the masks: {msg}"))

    def _masks_done(self, result) -> None:
        run, rows, keeps = result
        if run is not self.run:
            return
        self.rows, self.keeps = rows, keeps
        self.status.setText(f"Masks for decode steps 1\u2013{len(rows)} of {run.n_tokens - run.n_prompt}. "
                            "Bright = kept by every KV head of that layer, dark = evicted. "
                            "'Measure' re-runs the model with the dark entries hidden.")
        self._draw_masks()

    def _draw_masks(self) -> None:
        if not self.keeps or not len(self.rows):
            return
        row = int(np.clip(self._row_step - 1, 0, len(self.rows) - 1))
        position = int(self.rows[row])
        for kind, keep in self.keeps.items():
            image = ev.keep_image(keep, row)  # [layers, N]
            image[:, position + 1:] = np.nan  # not generated yet at this step: transparent
            self.maps[kind].set_data(image, levels=(0.0, 1.0))
            kept = keep[:, :, row, : position + 1].mean()
            text = f"<b style='color:{COLOURS[kind]}'>{ev.LABELS[kind]}</b>: step {row + 1} (query at {position}), " \
                   f"keeps {kept:.0%} of {position + 1} entries"
            if ev.APPROXIMATIONS.get(kind):
                text += f"<br><i>{ev.APPROXIMATIONS[kind]}</i>"
            effect = self.effects.get(kind)
            if effect is not None:
                text += (f"<br>mean KL {effect.mean_kl:.4f} nats; top-1 changed at "
                         f"{int(effect.top1_changed.sum())}/{len(effect.kl)} steps")
            self.captions[kind].setText(text)

    # --- measured effect (needs the model) ----------------------------------------------------------------
    def start_measure(self) -> None:
        run = self.run
        if run is None or run.n_tokens <= run.n_prompt:
            self.status.setText("This run has no generated tokens: nothing to re-compute.")
            return
        if run.finish_reason is None:
            self.status.setText("Wait until the run has finished: its last steps are still coming.")
            return
        self.bar.setValue(0)
        self.bar.show()
        self.measure.setEnabled(False)
        request = EvictionWhatIf(run, tuple(self.policies()), self.spins["steps"].value())
        self.job = self.submit_job(request, self._measure_done, self._measure_failed, self._on_progress,
                                   key=f"kv-measure-{id(self)}")

    def _on_progress(self, fraction: float, message: str) -> None:
        self.bar.setValue(int(round(fraction * 100)))
        self.bar.setFormat(f"{message} %p%")

    def _measure_done(self, result) -> None:
        run, rows, keeps, effects = result
        self.bar.hide()
        self.measure.setEnabled(True)
        if run is not self.run:
            return
        self.rows, self.keeps, self.effects = rows, keeps, effects
        steps = np.arange(1, len(rows) + 1)
        for kind, effect in effects.items():
            self.kl_items[kind].setData(steps, effect.kl)
        self.status.setText("Measured by re-running the model on the run's own tokens with the evicted entries "
                            "hidden from attention (every token keeps its original position), compared with the "
                            "same re-run on the full cache.")
        self._draw_masks()

    def _measure_failed(self, message: str) -> None:
        self.bar.hide()
        self.measure.setEnabled(True)
        self.status.setText(f"The re-computation failed: {message}")


def _masks(run: Run, policies: list[ev.EvictionPolicy], n_steps: int):
    rows = ev.decode_rows(run, n_steps)
    return run, rows, {p.kind: ev.keep_mask(run, p, rows) for p in policies}
