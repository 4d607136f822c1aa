"""Head sweep and head search: which heads matter for this prediction, and which heads behave how."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ...core.analysis import head_search
from ...core.analysis.jobs import HeadSweep
from ...core.analysis.sweep import SweepResult, default_target
from ..table_fill import fill_table
from ..widgets.background import Background
from ..widgets.flow import FlowLayout, labelled
from ..widgets.heatmap import Heatmap
from .base import Panel
from .intervention_menu import attach_head_menu, plot_locator

SWEEP_MODES = (("last", "ablate at the predicting position only (prefix from the KV cache, fast)"),
               ("all", "ablate at every position (whole prompt recomputed per head, slow)"))


class HeadSweepPanel(Panel):
    title = "Head sweep and search"
    help_text = (
        "Head sweep: for the prediction made at the selected position (the token that follows it), every head is "
        "knocked out in turn (its output set to zero) and the change in that token's log-probability is drawn as "
        "a layers x heads map: blue cells are heads the prediction relies on, red ones work against it. The right "
        "strip does the same for whole attention and MLP blocks. By default a head is ablated only at the "
        "predicting position: everything before it is unchanged, so the prompt's KV cache is reused and the "
        "sweep is quick; 'every position' recomputes the whole prompt per head. Click a cell to open that head. "
        "Head search ranks heads by behaviour on this run: sink, previous-token, induction, or attention to a "
        "token or a span of positions."
    )

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.job = None  # the sweep in progress (a JobHandle)
        self.result: SweepResult | None = None
        self.background = Background(self)
        self.tabs = QTabWidget()
        self.body.addWidget(self.tabs, 1)
        self._build_sweep()
        self._build_search()

    # --- sweep -----------------------------------------------------------------------------------------
    def _build_sweep(self) -> None:
        page = QWidget()
        v = QVBoxLayout(page)
        row = FlowLayout()  # wraps in a narrow dock instead of clipping
        self.mode = QComboBox()
        for key, text in SWEEP_MODES:
            self.mode.addItem(text, key)
        self.start = QPushButton("Sweep heads")
        self.stop = QPushButton("Cancel")
        self.stop.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(200)
        for w in (self.mode, self.start, self.stop, self.progress):
            row.addWidget(w)
        row.addStretch(1)
        v.addLayout(row)
        self.sweep_label = QLabel("Select a position, then press 'Sweep heads'.")
        self.sweep_label.setWordWrap(True)
        v.addWidget(self.sweep_label)
        self.map = Heatmap("CET-D1")
        self.map.plot.setLabel("left", "layer")
        self.map.plot.setLabel("bottom", "head")
        self.blocks = Heatmap("CET-D1")
        self.blocks.plot.setLabel("left", "layer")
        split = QSplitter()
        split.addWidget(self.map)
        split.addWidget(self.blocks)
        split.setSizes([700, 220])
        v.addWidget(split, 1)
        self.tabs.addTab(page, "Head sweep")
        self.start.clicked.connect(self.start_sweep)
        self.stop.clicked.connect(lambda: self.job is not None and self.job.cancel())
        self.map.clicked.connect(self.open_head)
        self.map.hovered.connect(self._hover)
        attach_head_menu(self.map.view, plot_locator(self.map.view, self.map.plot, self._cell))

    def _cell(self, x: float, y: float) -> tuple[int, int] | None:
        if self.result is None:
            return None
        L, H = self.result.heads.shape
        layer, head = int(y), int(x)
        return (layer, head) if 0 <= layer < L and 0 <= head < H else None

    def target(self) -> tuple[int, int]:
        pos = min(self.selection.position, self.run.n_tokens - 1)
        return pos, default_target(self.run, pos)

    def start_sweep(self) -> None:
        if self.run is None or not self.run.info.is_causal:
            self.sweep_label.setText("A head sweep needs a run of a causal language model.")
            return
        pos, target = self.target()
        ids, mode = self.run.token_ids, self.mode.currentData()
        self.start.setEnabled(False)
        self.stop.setEnabled(True)
        self.progress.setValue(0)
        self.sweep_label.setText(f"Sweeping {self.run.info.n_layers * self.run.info.n_heads} heads for "
                                 f"{self._name(target)} after position {pos}...")
        self.job = self.services.submit_job(HeadSweep(ids, pos, target, mode), self.show_result, self._failed,
                                            self._progress, key=f"sweep-{id(self)}")

    def _progress(self, fraction: float, _message: str = "") -> None:
        self.progress.setMaximum(1000)
        self.progress.setValue(int(round(fraction * 1000)))

    def _failed(self, message: str) -> None:
        self.start.setEnabled(True)
        self.stop.setEnabled(False)
        self.sweep_label.setText(f"The sweep failed: {message}")

    def show_result(self, result: SweepResult) -> None:
        self.start.setEnabled(True)
        self.stop.setEnabled(False)
        self.result = result
        heads = np.nan_to_num(result.heads, nan=0.0).astype(np.float32)
        span = float(np.abs(heads).max()) or 1e-6  # heads and blocks have their own scales (blocks move far more)
        L, H = heads.shape
        self.map.set_data(heads, (-span, span), row_labels=[str(i) for i in range(L)],
                          col_labels=[str(i) for i in range(H)])
        strip = np.nan_to_num(np.stack([result.attn, result.mlp], axis=1), nan=0.0).astype(np.float32)  # [L, 2]
        block_span = float(np.abs(strip).max()) or 1e-6
        self.blocks.set_data(strip, (-block_span, block_span), row_labels=[str(i) for i in range(L)],
                             col_labels=["attn", "mlp"])
        top = ", ".join(f"L{a}.H{b} {c:+.2f}" for a, b, c in result.strongest(3))
        state = "" if result.complete else " (cancelled: the rest is blank)"
        self.sweep_label.setText(
            f"Target {self._name(result.target_id)} after position {result.position}: logprob {result.baseline:.3f}; "
            f"change when ablated ({'predicting position only' if result.mode == 'last' else 'every position'})"
            f"{state}. Strongest: {top}. {result.forwards} forwards in {result.seconds:.1f} s.")

    def _hover(self, row: int, col: int) -> None:
        if self.result is not None and 0 <= row < self.result.heads.shape[0] and 0 <= col < self.result.heads.shape[1]:
            self.map.readout.setText(f"L{row}.H{col}: target logprob change {self.result.heads[row, col]:+.4f}")

    def open_head(self, layer: int, head: int) -> None:
        if self.run is None:
            return
        if 0 <= layer < self.run.info.n_layers and 0 <= head < self.run.info.n_heads:
            self.selection.set("layer", layer)
            self.selection.set("head", head)

    def _name(self, token_id: int) -> str:
        vocab = self.run.vocab if self.run is not None else None
        return repr(vocab[token_id]) if vocab and token_id < len(vocab) else f"token {token_id}"

    # --- search ------------------------------------------------------------------------------------------
    def _build_search(self) -> None:
        page = QWidget()
        v = QVBoxLayout(page)
        row = FlowLayout()  # wraps in a narrow dock instead of clipping
        self.behaviour = QComboBox()
        self.behaviour.addItems(head_search.BEHAVIOURS)
        self.token = QLineEdit()
        self.token.setPlaceholderText("token text (for 'token')")
        self.span_lo, self.span_hi = QSpinBox(), QSpinBox()
        for box in (self.span_lo, self.span_hi):
            box.setMaximum(1_000_000)
        self.span_hi.setValue(1)
        self.find = QPushButton("Find heads")
        for w in (labelled("Behaviour", self.behaviour), self.token, labelled("span", self.span_lo), self.span_hi,
                  self.find):
            row.addWidget(w)
        row.addStretch(1)
        v.addLayout(row)
        self.hits = QTableWidget(0, 3)
        self.hits.setHorizontalHeaderLabels(["layer", "head", "score"])
        self.hits.setEditTriggers(QTableWidget.NoEditTriggers)
        self.hits.setSelectionBehavior(QTableWidget.SelectRows)
        v.addWidget(self.hits, 1)
        self.tabs.addTab(page, "Head search")
        self.find.clicked.connect(self.search)
        self.hits.cellClicked.connect(lambda r, _c: self.open_head(*self._hit(r)))
        attach_head_menu(self.hits, lambda p: self._hit(self.hits.rowAt(p.y())) if self.hits.rowAt(p.y()) >= 0
                         else None)

    def _hit(self, row: int) -> tuple[int, int]:
        return int(self.hits.item(row, 0).text()), int(self.hits.item(row, 1).text())

    def search(self) -> None:
        if self.run is None:
            return
        run, behaviour, token = self.run, self.behaviour.currentText(), self.token.text()
        span = (self.span_lo.value(), self.span_hi.value())
        self.background.submit("search", lambda: head_search.search(run, behaviour, token=token, span=span),
                               self.show_hits)

    def show_hits(self, hits) -> None:
        rows = []
        for hit in hits:
            rows.append([QTableWidgetItem(text) for text in (str(hit.layer), str(hit.head), f"{hit.score:.3f}")])
            for item in rows[-1]:
                item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
        fill_table(self.hits, rows)

    def draw_run(self, run) -> None:
        self.result = None  # a sweep and a search belong to the run (and model) they were made for
        self.map.image.clear()
        self.blocks.image.clear()
        self.hits.setRowCount(0)
        self.sweep_label.setText("Select a position, then press 'Sweep heads'.")
