"""Depth lab panel: train small depth-addressable Transformers here and watch their routing emerge.

Top: what to train (variant, size, minutes, seed) with Train / Cancel; training runs on a background
process (explorer.lab.jobs.TrainJob), polled by a timer, so the GUI thread never waits on it.
Left: held-out (solid) and train (dashed) bits per byte of every variant trained so far, at equal
tokens and at equal training time; several seeds of one variant draw a band (min-max).
Right: the selected checkpoint's learned routing (explorer/ui/panels/lab_routing.py) over a probe text,
with the loss change when each source is switched off; a slider replays the routing snapshots
recorded during training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSlider,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from ...lab.config import ARCHS
from ...lab.jobs import LabEntry, TrainJob, lab_root, list_checkpoints, probe_in_process
from ...lab.train import LIVE_METRICS, SIZES, TrainConfig
from .. import plot_style
from ..empty_state import show_empty
from ..widgets.background import Background
from ..widgets.flow import FlowLayout, labelled
from .base import Panel
from .lab_routing import LearnedRoutingView

# the theme's categorical colours (Okabe-Ito: colour-blind safe), one per variant, as RGB tuples
COLOURS = {arch: tuple(QColor(plot_style.series(i)).getRgb()[:3]) for i, arch in enumerate(ARCHS)}
POLL_MS = 300


class DepthLabPanel(Panel):
    title = "Depth lab"
    help_text = (
        "Train small Transformers whose depth is addressable, here on this computer, on the Python standard "
        "library's own source (held-out files are never trained on), and watch how they route through depth. "
        "Plain is the usual residual sum. Attention Residuals let every sublayer choose, by softmax, which earlier "
        "outputs to read; MoDA lets attention heads read this token's keys from earlier layers; mHC keeps several "
        "residual streams mixed by doubly-stochastic matrices; Engram adds hashed 2-/3-gram memory with a gate. "
        "Curves: bits per byte (lower is better) against tokens seen and against training time. The matrices show "
        "what each sublayer reads; beside them, the measured loss change when that source is switched off — a "
        "large weight is not always an important one. Numbers from a few minutes on a CPU are noisy: train 2–3 "
        "seeds to see the band."
    )

    def __init__(self, selection, parent=None, root: Path | None = None):
        super().__init__(selection, parent)
        self.root = Path(root) if root is not None else lab_root()
        self.job: TrainJob | None = None
        self.bg = Background(self)
        self.entries: list[LabEntry] = []
        self.probe_result = None

        self.arch = QComboBox()
        self.arch.addItems(ARCHS)
        self.size = QComboBox()
        self.size.addItems(list(SIZES))
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 120.0)
        self.minutes.setValue(10.0)
        self.minutes.setSuffix(" min")
        self.tokenizer = QComboBox()
        self.tokenizer.addItems(["bytes", "smollm2-135m-instruct"])
        self.tokenizer.setToolTip("bytes: V = 256 (default, fast). SmolLM2's tokenizer: V = 49,152, the embedding "
                                  "dwarfs the model body and a step is ~24x slower.")
        self.seed = QSpinBox()
        self.seed.setRange(0, 10_000)
        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.status = QLabel(" ")
        self.status.setWordWrap(True)  # progress lines are long: they wrap under the controls (presenter fits)
        controls = FlowLayout()  # wraps in a narrow dock instead of clipping
        for label, widget in (("Variant", self.arch), ("Size", self.size), ("Tokens", self.tokenizer),
                              ("Time", self.minutes), ("Seed", self.seed)):
            controls.addWidget(labelled(label, widget))
        controls.addWidget(self.train_button)
        controls.addWidget(self.cancel_button)
        controls.addStretch(1)
        self.body.addLayout(controls)
        self.body.addWidget(self.status)

        self.by_tokens = self._loss_plot("tokens seen")
        self.by_time = self._loss_plot("training time (s)")
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.by_tokens, 1)
        left_layout.addWidget(self.by_time, 1)

        self.models = QListWidget()
        self.models.setMaximumHeight(110)
        self.routing = LearnedRoutingView()
        self.position = QSpinBox()
        self.position.setPrefix("probe token ")
        self.snapshot = QSlider(Qt.Horizontal)
        self.snapshot_label = QLabel("training snapshots: -")
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(QLabel("Trained models (select one to see its routing):"))
        right_layout.addWidget(self.models)
        right_layout.addWidget(self.routing, 1)
        row = QHBoxLayout()
        row.addWidget(self.position)
        row.addWidget(self.snapshot_label)
        row.addWidget(self.snapshot, 1)
        right_layout.addLayout(row)
        self.snapshot_view = LearnedRoutingView()  # the mean matrix as training went on
        self.snapshot_view.mean.hide()
        self.snapshot_view.ablation_note = False
        self.snapshot_view.setMaximumHeight(260)
        left_layout.addWidget(self.snapshot_view)  # under the loss curves: the right column fits 720 lines

        split = QSplitter(Qt.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([500, 600])
        self.body.addWidget(split, 1)

        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        self.train_button.clicked.connect(self.start_training)
        self.cancel_button.clicked.connect(self.cancel_training)
        self.models.currentRowChanged.connect(self._on_model_selected)
        self.position.valueChanged.connect(lambda _v: self._draw_probe())
        self.routing.mean.toggled.connect(lambda _c: self._draw_probe())
        self.snapshot.valueChanged.connect(lambda _v: self._draw_snapshot())
        app = QApplication.instance()
        if app is not None:  # a training thread must not outlive the interpreter (torch aborts at exit)
            app.aboutToQuit.connect(self.shutdown)
        self.refresh()

    def is_empty(self) -> bool:
        """The lab shows checkpoints, not the run on screen: empty until one is trained."""
        return not getattr(self, "entries", None)

    def shutdown(self) -> None:
        """Cancel a running training and wait for its checkpoint (the step in flight finishes first)."""
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.job.join(timeout=60)

    @staticmethod
    def _loss_plot(x_label: str) -> pg.PlotWidget:
        plot = pg.PlotWidget()
        plot.setLabel("bottom", x_label)
        plot.setLabel("left", "bits per byte")
        plot_style.grid(plot, x=True, y=True, alpha=0.3)
        plot.addLegend(offset=(-10, 10))
        return plot_style.style(plot)  # the theme's background, axes, legend and fonts, kept on theme changes

    # --- training ---------------------------------------------------------------------------------
    def start_training(self) -> TrainJob | None:
        if self.job is not None and not self.job.done:
            return None
        arch, seed = self.arch.currentText(), self.seed.value()
        cfg = TrainConfig(arch=arch, size=self.size.currentText(), minutes=self.minutes.value(), seed=seed,
                          tokenizer=self.tokenizer.currentText())
        vocab = "" if cfg.tokenizer == "bytes" else f"-{cfg.tokenizer.split('-')[0]}"
        out = self.root / f"{arch}-{cfg.size}{vocab}-seed{seed}"
        self.job = TrainJob(cfg, out, resume=(out / "train_state.json").is_file()).start()
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Training {arch} (seed {seed}) for {cfg.minutes:g} min...")
        self.timer.start()
        return self.job

    def cancel_training(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling: the step in flight finishes, then a checkpoint is saved...")

    def poll(self) -> None:
        job = self.job
        if job is None:
            self.timer.stop()
            return
        p = job.progress
        if p is not None:
            held = "" if p.heldout_bpb is None else f", held-out {p.heldout_bpb:.3f}"
            self.status.setText(f"{job.config.arch}: step {p.step}, {p.tokens:,} tokens, {p.elapsed_s:.0f} s, "
                                f"train {p.train_bpb:.3f}{held} bits/byte")
        self.refresh(live=job.out / LIVE_METRICS if not job.done else None)
        if job.done:
            self.timer.stop()
            self.train_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            if job.error:
                self.status.setText(f"Training failed: {job.error}")
            elif job.result is not None:
                m = job.result.metrics
                row = next((i for i, e in enumerate(self.entries) if e.folder == job.out), -1)
                if row >= 0:  # show the model just trained, with its measured importances
                    self.models.setCurrentRow(row)
                state = "cancelled; checkpoint saved" if job.result.cancelled else "done"
                self.status.setText(f"{job.config.arch} {state}: held-out {m['heldout_bpb'][-1][1]:.3f} bits/byte "
                                    f"after {m['tokens_seen']:,} tokens ({m['tokens_per_s']:,.0f} tokens/s).")

    # --- curves -----------------------------------------------------------------------------------
    def refresh(self, live: Path | None = None) -> None:
        """Re-read every checkpoint's metrics (and the running job's live ones) and redraw the curves."""
        selected = self.models.currentRow()
        self.entries = list_checkpoints(self.root)
        if live is not None and live.is_file():
            from ...lab.checkpoint import read_json

            try:
                m = read_json(live)
                self.entries = [e for e in self.entries if e.folder != live.parent]
                self.entries.append(LabEntry(live.parent, m["arch"], int(m["seed"]), m))
            except Exception:  # a half-written file: next poll
                pass
        self.models.blockSignals(True)
        self.models.clear()
        for e in self.entries:
            held = e.metrics["heldout_bpb"]
            self.models.addItem(f"{e.label} · {e.folder.name} · held-out {held[-1][1]:.3f} bits/byte "
                                f"at {held[-1][0]:,} tokens")
        if 0 <= selected < len(self.entries):
            self.models.setCurrentRow(selected)
        self.models.blockSignals(False)
        self.draw_curves()
        show_empty(self, self.title, self.is_empty())  # before the first checkpoint: what will appear here
        if 0 <= selected < len(self.entries):  # the selected model may be the one training: follow its snapshots
            snaps = self.entries[selected].metrics.get("routing") or []
            at_end = self.snapshot.value() >= self.snapshot.maximum()
            self.snapshot.setRange(0, max(0, len(snaps) - 1))
            if at_end:
                self.snapshot.setValue(self.snapshot.maximum())
            self._draw_snapshot()

    def curves(self) -> dict[str, dict[str, list[np.ndarray]]]:
        """arch -> {"tokens": [held-out [n, 2] per seed], "time": [...], "train": [...]}."""
        out: dict[str, dict[str, list[np.ndarray]]] = {}
        for e in self.entries:
            d = out.setdefault(e.arch, {"tokens": [], "time": [], "train": []})
            for key, name in (("heldout_bpb", "tokens"), ("heldout_bpb_time", "time"), ("train_bpb", "train")):
                a = np.asarray(e.metrics.get(key) or np.zeros((0, 2)), dtype=np.float64).reshape(-1, 2)
                d[name].append(a)
        return out

    def draw_curves(self) -> None:
        for plot in (self.by_tokens, self.by_time):
            plot.clear()
        for arch, d in self.curves().items():
            colour = COLOURS.get(arch, (128, 128, 128))
            for plot, series in ((self.by_tokens, d["tokens"]), (self.by_time, d["time"])):
                self._series(plot, series, colour, arch)
            for a in d["train"]:
                if len(a):
                    self.by_tokens.plot(a[:, 0], a[:, 1], pen=pg.mkPen(colour, width=1, style=Qt.DashLine))

    @staticmethod
    def _series(plot: pg.PlotWidget, series: list[np.ndarray], colour, name: str) -> None:
        series = [a for a in series if len(a)]
        if not series:
            return
        if len(series) == 1:
            plot.plot(series[0][:, 0], series[0][:, 1], pen=pg.mkPen(colour, width=2), name=name)
            return
        n = min(len(a) for a in series)  # seeds share the evaluation schedule: align on the shortest
        x = np.mean([a[:n, 0] for a in series], axis=0)
        ys = np.stack([a[:n, 1] for a in series])  # [seeds, n]
        lo = plot.plot(x, ys.min(0), pen=pg.mkPen(colour + (90,)))
        hi = plot.plot(x, ys.max(0), pen=pg.mkPen(colour + (90,)))
        plot.addItem(pg.FillBetweenItem(lo, hi, brush=pg.mkBrush(colour + (50,))))
        plot.plot(x, ys.mean(0), pen=pg.mkPen(colour, width=2), name=f"{name} ({len(series)} seeds)")

    # --- routing ----------------------------------------------------------------------------------
    def _on_model_selected(self, row: int) -> None:
        if not 0 <= row < len(self.entries):
            return
        entry = self.entries[row]
        snaps = entry.metrics.get("routing") or []
        self.snapshot.setRange(0, max(0, len(snaps) - 1))
        self.snapshot.setValue(max(0, len(snaps) - 1))
        self._draw_snapshot()
        if not (entry.folder / "model.safetensors").is_file():
            return
        self.status.setText(f"Reading the routing of {entry.label} and switching sources off one by one...")

        def done(result) -> None:
            self.probe_result = result
            self.position.setRange(0, len(result.tokens) - 1)
            self._draw_probe()
            self.status.setText(f"{entry.label}: routing over the probe text; base loss "
                                f"{float(result.ablation['base_bpb']):.3f} bits/byte.")

        self.bg.submit("probe", lambda: probe_in_process(entry.folder), done,
                       lambda msg: self.status.setText(f"Could not read {entry.folder.name}: {msg}"))

    def _draw_probe(self) -> None:
        r = self.probe_result
        if r is None:
            return
        pos = min(self.position.value(), len(r.tokens) - 1)
        self.routing.draw(r.routing, r.n_layers, pos, r.ablation, r.tokens[pos], tokens=r.tokens)

    def _draw_snapshot(self) -> None:
        row = self.models.currentRow()
        if not 0 <= row < len(self.entries):
            return
        entry = self.entries[row]
        snaps = entry.metrics.get("routing") or []
        if not snaps:
            self.snapshot_label.setText("training snapshots: none")
            return
        snap = snaps[min(self.snapshot.value(), len(snaps) - 1)]
        self.snapshot_label.setText(f"training snapshot at {snap['tokens']:,} tokens")
        n_layers = int(entry.metrics.get("n_layers", 6))
        routing = {"arch": np.array(entry.arch)}
        for key in ("attnres", "mhc_read"):
            if key in snap:
                routing[key] = np.array(snap[key], dtype=np.float64)[:, None, :]  # [readers, 1, sources]
        if "moda_depth" in snap:
            routing["moda_depth"] = np.array(snap["moda_depth"], dtype=np.float64)[:, :, None]
        if "engram_gate" in snap:
            g = np.array(snap["engram_gate"], dtype=np.float64).reshape(-1, 1)
            routing.update(engram_gate=g, engram_layers=np.arange(len(g)), engram_rows=np.zeros((len(g), 1, 0)))
        self.snapshot_view.draw(routing, n_layers, 0, None, "",
                                where=f"during training, at {snap['tokens']:,} tokens (mean over held-out text)")
