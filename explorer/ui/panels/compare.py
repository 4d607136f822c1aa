"""Prompt A/B: run a second prompt, align the tokens, compare internals at matched positions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
)

from ...core.analysis.align import Alignment, align_runs, attention_diff, lens_diff, next_token_diff
from ...core.engine import CompleteRun
from ...core.labels import readable_label
from ...core.run import Run
from .. import plot_style
from ..table_fill import fill_table
from ..theme import OKABE_ITO
from ..widgets.background import Background
from ..widgets.flow import FlowLayout
from ..widgets.heatmap import Heatmap
from .base import Panel
from .depth_lens import active_readout

_ONLY_A, _ONLY_B, _DIFF = QColor(255, 200, 120), QColor(150, 200, 255), QColor(255, 235, 150)


class ComparePanel(Panel):
    title = "Prompt A/B"
    help_text = (
        "Compare two prompts. A is the run on screen; type prompt B (for example the same sentence with one word "
        "changed) and press 'Run B'. The tokens are aligned: identical prefix, then an edit-distance alignment; the "
        "strip shows A above B, with tokens only in A (orange), only in B (blue) or different (yellow). Below, for "
        "the selected position of A and its partner in B: the next-token distributions (KL divergence, top-1), the "
        "logit-lens KL per layer (where in depth the two predictions part), and the selected head's attention in A, "
        "in B and their difference over the matched positions."
    )

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.run_b: Run | None = None
        self.alignment: Alignment | None = None
        self.background = Background(self)
        row = FlowLayout()  # wraps in a narrow dock instead of clipping
        self.prompt_b = QLineEdit()
        self.prompt_b.setPlaceholderText("prompt B (same model and settings as A)")
        self.run_button = QPushButton("Run B")
        row.addWidget(QLabel("B:"))
        row.addWidget(self.prompt_b, 1)
        row.addWidget(self.run_button)
        self.body.addLayout(row)
        self.strip = QTableWidget(2, 0)
        self.strip.setVerticalHeaderLabels(["A", "B"])
        self.strip.setMaximumHeight(90)
        self.strip.setEditTriggers(QTableWidget.NoEditTriggers)
        self.body.addWidget(self.strip)
        self.summary = QLabel("Type prompt B and press 'Run B'.")
        self.summary.setWordWrap(True)
        self.body.addWidget(self.summary)
        self.lens = pg.PlotWidget()
        self.lens.setLabel("bottom", "depth (0 = embeddings)")
        self.lens.setLabel("left", "KL(A || B) of the logit lens, nats")
        self.lens_curve = self.lens.plot([], [], pen=pg.mkPen(OKABE_ITO["orange"], width=2), symbol="o", symbolSize=5,
                                         **plot_style.symbol_style(OKABE_ITO["orange"]))
        plot_style.style(self.lens)
        self.attn_a, self.attn_b, self.attn_d = Heatmap("viridis"), Heatmap("viridis"), Heatmap("CET-D1")
        for hm, name in ((self.attn_a, "A"), (self.attn_b, "B"), (self.attn_d, "A − B")):
            hm.plot.setTitle(f"head attention {name}")  # short: titles do not wrap (presenter fonts are 1.5x)
        split = QSplitter()
        for w in (self.lens, self.attn_a, self.attn_b, self.attn_d):
            split.addWidget(w)
        self.body.addWidget(split, 1)
        self.run_button.clicked.connect(self.run_prompt_b)
        self.prompt_b.returnPressed.connect(self.run_prompt_b)
        self.strip.cellClicked.connect(self._strip_clicked)

    def run_prompt_b(self) -> None:
        if self.run is None or not self.prompt_b.text():  # whitespace is a valid prompt
            return
        request = replace(self.run.request, prompt=self.prompt_b.text(), interventions=())
        self.summary.setText("Running B...")
        self.services.submit_job(CompleteRun(request), self.set_run_b, lambda m: self.summary.setText(f"B failed: {m}"),
                                 key=f"run-b-{id(self)}")

    def set_run_b(self, run_b: Run) -> None:
        self.run_b = run_b
        self.draw_run(self.run)

    # --- drawing -----------------------------------------------------------------------------------------
    def draw_run(self, run: Run | None) -> None:
        if self.run_b is not None and (run is None or run.info.name != self.run_b.info.name):
            self._forget_b()  # B belongs to another model (or the run was cleared)
        if run is None or self.run_b is None:
            return
        self.alignment = align_runs(run, self.run_b)
        self._draw_strip()
        self.draw_selection("position")

    def _forget_b(self) -> None:
        self.run_b, self.alignment = None, None
        self.strip.setColumnCount(0)
        self.lens_curve.setData([], [])
        for hm in (self.attn_a, self.attn_b, self.attn_d):
            hm.image.clear()
        self.summary.setText("Type prompt B and press 'Run B'.")

    def draw_step(self, run: Run, event) -> None:
        if event.finish_reason:
            self.draw_run(run)

    def _draw_strip(self) -> None:
        a, b, al = self.run, self.run_b, self.alignment
        cells: list[list[QTableWidgetItem]] = [[], []]  # [A row, B row] one column per aligned pair
        for i, j in al.pairs:
            for r, (run, k) in enumerate(((a, i), (b, j))):
                item = QTableWidgetItem("" if k is None else readable_label(run.tokens[k].text, None))
                fill = (_ONLY_B if i is None else _ONLY_A) if i is None or j is None else \
                    _DIFF if a.tokens[i].text != b.tokens[j].text else None
                if fill is not None:  # a light fill: dark text on it in every theme
                    item.setBackground(fill)
                    item.setForeground(QColor("#1a1a1a"))
                cells[r].append(item)
        fill_table(self.strip, cells, columns=len(al.pairs))
        self.strip.setVerticalHeaderLabels(["A", "B"])

    def _strip_clicked(self, _row: int, col: int) -> None:
        i = self.alignment.pairs[col][0] if self.alignment is not None else None
        if i is not None:
            self.selection.set("position", i)

    def partner(self, pos_a: int) -> int | None:
        """B's position matched to A's `pos_a` (or the nearest matched one before it)."""
        best = None
        for i, j in self.alignment.matched:
            if i <= pos_a:
                best = j
        return best

    def draw_selection(self, field: str) -> None:
        if self.run_b is None or self.alignment is None or field not in ("position", "layer", "head"):
            return
        # A frozen: the run may grow while this computes, and the result is drawn (and counted) for the A it saw
        a, b, al = self.run.snapshot(), self.run_b, self.alignment
        pos_a = min(self.selection.position, a.n_tokens - 1)
        pos_b = self.partner(pos_a)
        if pos_b is None:
            return
        layer, head = self.selection.layer, self.selection.head

        readout, self._lens_label = active_readout(a.info)  # the depth panel's lens (logit, tuned, Jacobian)

        def job():
            return (next_token_diff(a, pos_a, b, pos_b), lens_diff(a, pos_a, b, pos_b, readout),
                    a.attention(layer, head), b.attention(layer, head), attention_diff(a, b, al, layer, head)[0])

        self.background.submit("compare", job, lambda r: self._show(a, b, al, pos_a, pos_b, *r))

    def _show(self, a: Run, b: Run, al: Alignment, pos_a: int, pos_b: int, nxt: dict, lens: dict, att_a, att_b,
              att_d) -> None:
        """Draw a comparison of `a` and `b` (the runs it was computed from, not necessarily those on screen now)."""
        if b is not self.run_b:
            return  # B was replaced (drawn afresh) or forgotten with the run it belonged to: no longer on screen
        vocab = a.vocab or []

        def name(i: int) -> str:
            return repr(vocab[i]) if i < len(vocab) else str(i)
        first = int(np.argmax(lens["kl"] > 0.1 * max(lens["kl"].max(), 1e-9)))
        self.summary.setText(
            f"A: {a.n_tokens} tokens, B: {b.n_tokens}; identical prefix {al.prefix}, {len(al.matched)} "
            f"matched. Next token after A[{pos_a}] / B[{pos_b}]: top-1 {name(nxt['top1_a'])} "
            f"({nxt['p_a'][0]:.2f}) vs {name(nxt['top1_b'])}; KL(A‖B) = {nxt['kl_ab']:.3f} nats. "
            f"The {getattr(self, '_lens_label', 'logit lens')} parts from depth {first} on.")
        self.lens_curve.setData(np.arange(lens["kl"].size), lens["kl"])
        self.attn_a.set_data(att_a, (0.0, float(att_a.max()) or 1.0))
        self.attn_b.set_data(att_b, (0.0, float(att_b.max()) or 1.0))
        span = float(np.abs(att_d).max()) or 1e-6
        self.attn_d.set_data(att_d.astype(np.float32), (-span, span))
