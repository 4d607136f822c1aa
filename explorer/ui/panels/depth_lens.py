"""The Layer-depth panel's lens switch: logit, tuned or Jacobian lens, and the per-layer KL curves beside it.

`LensSelector` owns the choice and hands the depth panel a `readout` (None = logit lens, else a fitted
core.lens.Lens). Fitted lenses come from the user cache; a built-in model without one gets it fitted once,
in a background thread on its own copy of the model (minutes), with progress here, never blocking the
window; the fit stops when the app quits. Other models say how to fit one from the command line.

The plot shows, per depth, this run's KL(final || lens) averaged over the positions computed so far (solid,
for the lens in use, growing live), and the held-out KL of the logit lens and of the fitted lens from the
lens' metrics.json (dashed).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QApplication, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ...core import catalogue
from ...core.lens import FITTED_KINDS, Lens
from ...core.lens_store import cached_lens, lens_dir
from .. import plot_style

log = logging.getLogger(__name__)
CHOICES = (("logit", "logit lens"), ("tuned", "tuned lens"), ("jacobian", "Jacobian lens"))
CURVE_MS = 250  # the run's KL curve redraws at most this often while streaming
RUN_COLOUR = plot_style.series(3)  # vermillion
LOGIT_COLOUR = plot_style.series(0)  # blue
FITTED_COLOUR = plot_style.series(2)  # green
FIT_MINUTES = {"tuned": 3.0, "jacobian": 6.0}  # first-use fits; the Jacobian estimate is noisier (see lens_fit.py)
KL_FLOOR = 1e-3  # the last depth's KL is 0: the log axis draws it at this floor


class _FitRelay(QObject):
    progress = Signal(str, float, str)  # kind, fraction, message
    finished = Signal(str, str)  # kind, error ("" when fine)


class LensFitter:
    """One background fit at a time, in a process of its own (a fit uses a CPU core for minutes; the window's
    process never runs torch): core/side_jobs.py."""

    relay: _FitRelay | None = None
    job = None  # the SideJob
    kind: str | None = None

    @classmethod
    def get_relay(cls) -> _FitRelay:
        if cls.relay is None:
            cls.relay = _FitRelay()
            app = QApplication.instance()
            if app is not None:
                app.aboutToQuit.connect(cls.stop)
        return cls.relay

    @classmethod
    def busy(cls) -> bool:
        return cls.job is not None and not cls.job.done

    @classmethod
    def start(cls, model: str, kind: str, minutes: float = 3.0) -> bool:
        from ...core import engine as eng
        from ...core.side_jobs import FitLens, SideJob

        if cls.busy():
            return False
        relay = cls.get_relay()

        def on_event(event) -> None:  # on the side process' reader thread: the relay's signals are queued
            if isinstance(event, eng.Progress):
                relay.progress.emit(kind, event.fraction, event.message)
            elif isinstance(event, eng.Done):
                relay.finished.emit(kind, "")
            elif isinstance(event, eng.Failed):
                log.warning("lens fit failed: %s", event.message)
                relay.finished.emit(kind, event.message.split("\n\n")[0])
            elif isinstance(event, eng.JobCancelled):
                relay.finished.emit(kind, "cancelled")

        cls.kind = kind
        cls.job = SideJob(FitLens(model, kind, minutes, str(lens_dir(model, kind))), on_event, name=f"lens-fit-{kind}")
        return True

    @classmethod
    def stop(cls) -> None:
        if cls.job is not None:
            cls.job.cancel()


_ACTIVE: list = []  # the selector whose choice other panels follow (the last one created or changed)


def active_readout(info) -> tuple[Lens | None, str]:
    """The lens the depth panel shows, for panels that diff runs (prompt A/B, interventions): (readout, label);
    the logit lens when no selector exists or its lens is for another model."""
    sel = _ACTIVE[-1] if _ACTIVE else None
    lens = sel.readout() if sel is not None else None
    if lens is None or info is None or (lens.n_layers, lens.hidden) != (info.n_layers, info.hidden_size) or \
            (lens.model and lens.model != info.name):
        return None, "logit lens"
    return lens, lens.label


class LensSelector(QWidget):
    """Combo box + status line + KL-per-depth plot; `changed` fires when the readout changes."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None, auto_fit: bool = True):
        super().__init__(parent)
        self.auto_fit = auto_fit  # fit a missing lens of a built-in model on first use
        self.fit_minutes: float | None = None  # None: FIT_MINUTES per kind
        self.info = None
        self._lenses: dict[str, Lens | None] = {}
        self._pending_kl: np.ndarray | None = None
        self._last_curve = -1e9
        self._curve_timer = QTimer(self)
        self._curve_timer.setSingleShot(True)
        self._curve_timer.timeout.connect(self._draw_run_curve)
        self.combo = QComboBox()
        for key, label in CHOICES:
            self.combo.addItem(label, key)
        self.status = QLabel(" ")
        self.status.setWordWrap(True)
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "depth (0 = embed)")
        self.plot.setLabel("left", "KL from final (nats, log)")
        plot_style.grid(self.plot, y=True, alpha=0.3)
        self.plot.setLogMode(y=True)  # the logit lens' first rows are 100x the last ones
        self.plot.addLegend(offset=(5, 5))
        self.run_curve = self.plot.plot([], [], pen=pg.mkPen(RUN_COLOUR, width=2), name="this run")
        self.held_logit = self.plot.plot([], [], pen=pg.mkPen(LOGIT_COLOUR, width=2, style=Qt.DashLine),
                                         name="held-out: logit lens")
        self.held_fitted = self.plot.plot([], [], pen=pg.mkPen(FITTED_COLOUR, width=2, style=Qt.DashLine),
                                          name="held-out: fitted lens")
        plot_style.style(self.plot)  # after the legend: the theme styles it too, and again on theme changes
        self.plot.setMinimumWidth(220)
        self.plot.setMinimumHeight(110)
        small = self.status.font()
        small.setPointSizeF(max(6.0, small.pointSizeF() * 0.9))
        self.status.setFont(small)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Lens:"))
        row.addWidget(self.combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, 1)
        self.combo.currentIndexChanged.connect(self._on_choice)
        _ACTIVE[:] = [self]
        self.destroyed.connect(lambda *_: _ACTIVE.clear())
        relay = LensFitter.get_relay()
        relay.progress.connect(self._on_fit_progress)
        relay.finished.connect(self._on_fit_finished)

    # --- what the depth panel asks ------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.combo.currentData()

    def readout(self) -> Lens | None:
        """The fitted lens in use, or None for the logit lens (also while a fitted one is missing)."""
        return None if self.kind == "logit" else self._lenses.get(self.kind)

    def label(self) -> str:
        lens = self.readout()
        return "logit lens" if lens is None else lens.label

    def set_model(self, info) -> None:
        """A run of this model is shown: look its lenses up (once per model)."""
        if self.info is not None and info is not None and (self.info.name, self.info.n_layers) == \
                (info.name, info.n_layers):
            return
        self.info = info
        self._lenses = {}
        if info is not None:
            for kind in FITTED_KINDS:
                self._lenses[kind] = cached_lens(info.name, kind, info.n_layers, info.hidden_size)
        self._describe()

    def set_lens(self, kind: str, lens: Lens | None) -> None:
        """Use `lens` for `kind` (tests and scripts; the window uses the cache)."""
        self._lenses[kind] = lens
        if self.kind == kind:
            self._describe()
            self.changed.emit()

    def choose(self, kind: str) -> None:
        self.combo.setCurrentIndex([k for k, _ in CHOICES].index(kind))

    def update_run_curve(self, mean_kl: np.ndarray | None, final: bool = True) -> None:
        """This run's KL per depth, live but coalesced: at most one redraw per CURVE_MS while the lens table is
        still filling (a redraw re-lays out the selector and its plot; every streamed token would otherwise pay
        for it); `final` (the table is complete) draws at once."""
        self._pending_kl = mean_kl
        now = time.monotonic()
        if final or now - self._last_curve >= CURVE_MS / 1e3:
            self._draw_run_curve()
        elif not self._curve_timer.isActive():
            self._curve_timer.start(CURVE_MS)

    def _draw_run_curve(self) -> None:
        self._curve_timer.stop()
        self._last_curve = time.monotonic()
        mean_kl = self._pending_kl
        if mean_kl is None or not np.isfinite(mean_kl).any():
            self.run_curve.setData([], [])
            return
        x = np.arange(mean_kl.size)
        ok = np.isfinite(mean_kl)
        self.run_curve.setData(x[ok], np.maximum(mean_kl[ok], KL_FLOOR))

    # --- internals ------------------------------------------------------------------------------------------------
    def _on_choice(self, _index: int) -> None:
        _ACTIVE[:] = [self]
        kind = self.kind
        if kind != "logit" and self._lenses.get(kind) is None and self.info is not None:
            self._maybe_fit(kind)
        self._describe()
        self.changed.emit()

    def _maybe_fit(self, kind: str) -> None:
        name = self.info.name
        builtin = catalogue.get(name) is not None and self.info.is_causal
        if not builtin or not self.auto_fit:
            return
        if LensFitter.busy():
            return
        LensFitter.start(name, kind, self._minutes(kind))

    def _minutes(self, kind: str) -> float:
        return self.fit_minutes if self.fit_minutes is not None else FIT_MINUTES.get(kind, 3.0)

    def _describe(self) -> None:
        kind, info = self.kind, self.info
        lens = self._lenses.get(kind) if kind != "logit" else None
        curves = lens.kl_curves() if lens is not None else None
        if curves is None:
            other = next((v for v in self._lenses.values() if v is not None and v.kl_curves()), None)
            curves = (other.kl_curves()[0], None) if other is not None else None
        if curves is not None:
            x = np.arange(curves[0].size)
            self.held_logit.setData(x, np.maximum(curves[0], KL_FLOOR))
            if curves[1] is not None:
                self.held_fitted.setData(x, np.maximum(curves[1], KL_FLOOR))
            else:
                self.held_fitted.setData([], [])
        else:
            self.held_logit.setData([], [])
            self.held_fitted.setData([], [])
        if kind == "logit" or info is None:
            self.status.setText("Logit lens: each state read through the final norm and the unembedding.")
        elif lens is not None:
            m = lens.metrics or {}
            rows = m.get("layers") or []
            better = sum(r.get("kl_fitted", 0) < r.get("kl_logit_lens", 0) for r in rows)
            fit = m.get("fit_seconds")
            fit = f"{float(fit):.0f} s fit" if isinstance(fit, int | float) else "fitted"
            self.status.setText(f"{lens.label} ({fit}): held-out KL below the logit lens at {better} of {len(rows)} "
                                "depths.")
        elif LensFitter.busy() and LensFitter.kind == kind:
            self.status.setText(f"Fitting the {kind} lens for {info.name} in the background (about "
                                f"{self._minutes(kind):.0f} min, once); showing the logit lens meanwhile.")
        elif catalogue.get(info.name) is not None and self.auto_fit:
            self.status.setText(f"Another lens fit is running; the {kind} lens starts after it. Logit lens meanwhile.")
        else:
            self.status.setText(f"No {kind} lens for {info.name}: fit one with `lm-explorer lens fit --kind {kind} "
                                f"--model {info.name} --out {lens_dir(info.name, kind)}`. Logit lens meanwhile.")

    def _on_fit_progress(self, kind: str, fraction: float, message: str) -> None:
        if kind == self.kind:
            self.status.setText(f"Fitting the {kind} lens ({fraction:.0%}): {message}. Logit lens meanwhile.")

    def _on_fit_finished(self, kind: str, error: str) -> None:
        info = self.info
        if error:
            if kind == self.kind:
                self.status.setText(f"The {kind} lens fit stopped: {error}")
            return
        if info is not None:
            self._lenses[kind] = cached_lens(info.name, kind, info.n_layers, info.hidden_size)
        if kind == self.kind:
            self._describe()
            self.changed.emit()
        elif self.kind in FITTED_KINDS and self._lenses.get(self.kind) is None:
            self._maybe_fit(self.kind)
