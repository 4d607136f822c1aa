"""Head statistics over many prompts, in a dialog: one sortable row per head with its label, on how many
prompts that label held, and each score's mean and spread (core.analysis.head_stats_many).

The prompts run on a private copy of the loaded model in a background thread (the window's model and its
capture hooks stay untouched), with progress and cancel.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ..core.analysis.attention import STAT_NAMES
from ..core.analysis.head_stats_many import ManyPromptStats, head_stats_over_prompts, read_prompts
from ..core.errors import ExplorerError

if TYPE_CHECKING:
    from .main_window import MainWindow

log = logging.getLogger(__name__)
COLUMNS = ("layer", "head", "label", "label holds on", *[f"{s} {k}" for s in STAT_NAMES for k in ("mean", "sd")])


class _Relay(QObject):
    progress = Signal(float, str)
    done = Signal(object)
    failed = Signal(str)


class HeadStatsDialog(QDialog):
    finished_stats = Signal(object)  # ManyPromptStats

    def __init__(self, w: MainWindow, prompts: list[str], source: str):
        super().__init__(w)
        self.setWindowTitle(f"Head statistics over {len(prompts)} prompts ({source})")
        self.resize(900, 600)
        self.stats: ManyPromptStats | None = None
        self.cancel = threading.Event()
        self.status = QLabel(f"Running {len(prompts)} prompts on a copy of the model...")
        self.status.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSortingEnabled(True)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 1)
        layout.addWidget(buttons)
        self.relay = _Relay(self)
        self.relay.progress.connect(lambda f, m: self.status.setText(f"{f:.0%}: {m}"))
        self.relay.done.connect(self._show)
        self.relay.failed.connect(lambda m: self.status.setText(f"Head statistics failed: {m}"))
        self.rejected.connect(self.cancel.set)
        loaded = w.loaded_model()
        private = type(loaded)(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.info, loaded.source)
        self.thread = threading.Thread(target=self._work, args=(private, prompts), daemon=True,
                                       name="head-stats")
        self.thread.start()

    def _work(self, loaded, prompts: list[str]) -> None:
        from ..core.runner import Session

        try:
            stats = head_stats_over_prompts(Session(loaded), prompts, on_progress=self.relay.progress.emit,
                                            cancel=self.cancel)
        except Exception as exc:  # shown in the dialog, never raised in a thread
            if not isinstance(exc, ExplorerError):
                log.exception("head statistics failed")
            self.relay.failed.emit(str(exc))
        else:
            self.relay.done.emit(stats)

    def _show(self, stats: ManyPromptStats) -> None:
        self.stats = stats
        labels, agree = stats.labels()
        mean, sd = stats.mean, stats.std
        L, H = labels.shape
        self.table.setSortingEnabled(False)
        self.table.setRowCount(L * H)
        for r, (layer, head) in enumerate((a, b) for a in range(L) for b in range(H)):
            values = [layer, head, labels[layer, head], f"{agree[layer, head]:.0%}"]
            for s in range(len(STAT_NAMES)):
                values += [_num(mean[layer, head, s]), _num(sd[layer, head, s])]
            for c, v in enumerate(values):
                item = QTableWidgetItem()
                item.setData(Qt.DisplayRole, v)
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)
        self.table.sortItems(COLUMNS.index("induction mean"), Qt.DescendingOrder)
        shown = ", ".join(f"{n} tokens" for n in stats.n_tokens[:6]) + ("..." if len(stats.n_tokens) > 6 else "")
        self.status.setText(
            f"{len(stats.prompts)} prompts ({shown}). Label = the panel's rule applied to the mean scores; 'label "
            "holds on' = share of prompts where the head gets that label on its own. Induction is averaged over "
            "prompts that repeat a token. Sorted by induction; click a header to sort by another score.")
        self.finished_stats.emit(stats)


def _num(x: float) -> float:
    return float("nan") if not np.isfinite(x) else round(float(x), 3)


def tour_prompts() -> list[str]:
    from .tour_scripts import TOURS

    return list(dict.fromkeys(step.prompt for tour in TOURS.values() for step in tour.steps))


def open_head_stats(w: MainWindow, prompts: list[str] | None = None, source: str = "the tours' prompts"):
    """Open the dialog (None while a run is in progress or no model is loaded: it says why in the banner)."""
    if w.loaded_model() is None:
        w.show_banner("Load a model first.")
        return None
    if w.running:
        w.show_banner("A run is in progress: stop it or wait, then ask for head statistics again.")
        return None
    dialog = HeadStatsDialog(w, prompts if prompts is not None else tour_prompts(), source)
    dialog.show()
    return dialog


def open_head_stats_file(w: MainWindow) -> None:
    path, _ = QFileDialog.getOpenFileName(w, "Prompts (blank-line separated)", "", "Text (*.txt);;All files (*)")
    if not path:
        return
    try:
        prompts = read_prompts(path)
    except ExplorerError as exc:
        w.show_banner(str(exc))
        return
    open_head_stats(w, prompts, source=path)
