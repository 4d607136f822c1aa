"""Head statistics over many prompts, in a dialog: one sortable row per head with its label, on how many
prompts that label held, and each score's mean and spread (core.analysis.head_stats_many).

The prompts run as one engine job (the model's one road), with progress; closing the dialog cancels it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import Qt, Signal
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
from ..core.analysis.head_stats_many import ManyPromptStats, read_prompts
from ..core.analysis.jobs import HeadStatsOverPrompts
from ..core.errors import ExplorerError
from .export import documents_dir

if TYPE_CHECKING:
    from .main_window import MainWindow

log = logging.getLogger(__name__)
COLUMNS = ("layer", "head", "label", "label holds on", *[f"{s} {k}" for s in STAT_NAMES for k in ("mean", "sd")])


class HeadStatsDialog(QDialog):
    finished_stats = Signal(object)  # ManyPromptStats

    def __init__(self, w: MainWindow, prompts: list[str], source: str):
        super().__init__(w)
        self.setWindowTitle(f"Head statistics over {len(prompts)} prompts ({source})")
        self.resize(900, 600)
        self.stats: ManyPromptStats | None = None
        self.status = QLabel(f"Running {len(prompts)} prompts...")
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
        self.job = w.host.submit_job(
            HeadStatsOverPrompts(tuple(prompts)), on_done=self._show, key="head-stats",
            on_error=lambda m: self.status.setText(f"Head statistics failed: {m}"),
            on_progress=lambda f, m: self.status.setText(f"{f:.0%}: {m}"))
        self.rejected.connect(self.job.cancel)

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
    if w.info is None:
        w.show_banner("Load a model first.")
        return None
    if w.running:
        w.show_banner("A run is in progress: stop it or wait, then ask for head statistics again.")
        return None
    dialog = HeadStatsDialog(w, prompts if prompts is not None else tour_prompts(), source)
    dialog.show()
    return dialog


def open_head_stats_file(w: MainWindow) -> None:
    path, _ = QFileDialog.getOpenFileName(w, "Prompts (blank-line separated)", documents_dir(),
                                          "Text (*.txt);;All files (*)")
    if not path:
        return
    try:
        prompts = read_prompts(path)
    except ExplorerError as exc:
        w.show_banner(str(exc))
        return
    open_head_stats(w, prompts, source=path)
