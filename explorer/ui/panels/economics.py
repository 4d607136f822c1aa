"""Token economics: what the run's tokens cost, by kind (core/economics.py), as one bar chart and a table.

One BarGraphItem (horizontal bars, one per row: each token kind's forward compute, the lm_head, the compute
the prefix cache saved and rejected draft tokens), a figures line and a QTableWidget.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QLabel, QSplitter, QTableWidget, QTableWidgetItem

from ...core.economics import SAVED, Economics, economics
from ...core.events import TokenKind
from .. import plot_style
from ..table_fill import fill_table, interactive_columns
from ..widgets.status_line import StatusLine
from .base import Panel
from .token_colors import KIND_COLORS, KIND_NAMES

HEADERS = ("tokens of kind", "tokens", "prefill", "decode", "GFLOPs", "share")
EXTRA_COLOURS = {"lm_head (logits)": "#b9b9b9", SAVED: KIND_COLORS[TokenKind.CACHED_PREFIX],
                 "draft tokens rejected": "#ff9d9d"}
FORMULA = ("per token 2N + 4·L·H·d<sub>head</sub>·c (c = keys attended) + 2·d·V per logits row; "
           "N = L·(q, k, v, o + MLP weights) (Kaplan et al. 2020, Table 1; attention as in Hoffmann et al. 2022, "
           "App. F)")


def _label(kind: str) -> str:
    try:
        return KIND_NAMES.get(TokenKind(kind), kind)
    except ValueError:  # a kind this build does not know (a newer run file)
        return kind


def _colour(kind: str) -> str:
    try:
        return KIND_COLORS.get(TokenKind(kind), "#d6d6d6")
    except ValueError:
        return EXTRA_COLOURS.get(kind, "#d6d6d6")


class EconomicsPanel(Panel):
    title = "Token economics"
    help_text = (
        "What this run's tokens cost. Every token the model reads or writes goes through all its layers: about "
        "2 FLOPs per weight (2N), plus attention to every earlier token, plus the lm_head for each position "
        "whose next token is picked. The bars split that compute by token kind: the chat template, the system "
        "message, tool definitions and results, retrieved passages and reasoning are tokens too, and often "
        "cost more than the prompt you typed. Prefill reads the whole prompt in one pass; decode pays once "
        "per generated token. Tokens reused from the KV cache were not computed (the compute they saved is "
        "shown); rejected draft tokens were computed and thrown away."
    )

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.figures = StatusLine("-", fit=True)  # (a new run's figures relay out nothing)
        self.figures.setTextFormat(Qt.TextFormat.RichText)
        self.figures.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.addWidget(self.figures)
        split = QSplitter(Qt.Orientation.Vertical)
        self.plot = pg.PlotWidget()
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.getPlotItem().hideButtons()
        self.plot.getPlotItem().invertY(True)
        self.plot.setLabel("bottom", "GFLOPs (forward pass)")
        self.bars = pg.BarGraphItem(x0=[], y=[], height=[], width=[])
        self.plot.addItem(self.bars)
        self.plot.getPlotItem().getAxis("bottom").enableAutoSIPrefix(False)
        plot_style.style(self.plot)
        split.addWidget(self.plot)
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        interactive_columns(self.table, stretch_last=True)
        split.addWidget(self.table)
        split.setSizes([260, 200])
        self.body.addWidget(split, stretch=1)
        self.formula = QLabel(f"<span style='color:gray'>{FORMULA}</span>")
        self.formula.setWordWrap(True)
        self.body.addWidget(self.formula)
        self.economics: Economics | None = None

    def draw_run(self, run) -> None:
        if run is None or not run.steps:
            self.economics = None
            self.bars.setOpts(x0=[], y=[], height=[], width=[])
            fill_table(self.table, [])
            self.figures.setText("-")
            return
        e = self.economics = economics(run)
        rows = e.table()
        total = e.total_flops or 1
        values = np.array([r[4] for r in rows], float)  # [rows] GFLOPs
        colours = [QColor(_colour(r[0])).darker(115) for r in rows]
        saved = [r[0] == SAVED for r in rows]  # compute not spent: an outline, lightly filled
        brushes = [pg.mkBrush(QColor(c.red(), c.green(), c.blue(), 70 if s else 255)) for c, s in zip(colours, saved,
                                                                                                        strict=True)]
        pens = [pg.mkPen(c.darker(130), width=2, style=Qt.PenStyle.DashLine) if s else pg.mkPen(None)
                for c, s in zip(colours, saved, strict=True)]
        self.bars.setOpts(x0=np.zeros(len(rows)), y=np.arange(len(rows)), height=0.7, width=values,
                          brushes=brushes, pens=pens)
        axis = self.plot.getPlotItem().getAxis("left")
        axis.setTicks([[(i, f"{_label(r[0])} ({r[1]:,})") for i, r in enumerate(rows)]])
        self.plot.setYRange(-0.5, len(rows) - 0.5, padding=0.02)
        top = max(float(values.max()) if len(values) else 1.0, 1e-9) * 1.05
        self.plot.setXRange(0, plot_style.headroom(top, plot_style.FINE_STEPS), padding=0)
        cells = []
        for what, n, pre, dec, gflops in rows:
            share = "saved" if what == SAVED else f"{gflops * 1e9 / total:.1%}"
            cells.append([_label(what), _number(n), _number(pre), _number(dec), f"{gflops:,.4f}", share])
        fill_table(self.table, cells)
        self.figures.setText(_figures(e, run))

    def draw_step(self, run, event) -> None:
        if event.finish_reason or event.is_prefill or len(run.steps) % 8 == 0:  # streaming: every 8th step
            self.draw_run(run)

    def apply_theme(self) -> None:
        if self.run is not None:
            self.draw_run(self.run)


def _number(n: int) -> QTableWidgetItem:
    item = QTableWidgetItem(f"{n:,}")
    item.setData(Qt.ItemDataRole.UserRole, n)
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def _figures(e: Economics, run) -> str:
    g = 1e-9
    parts = [f"<b>{e.total_tokens:,}</b> tokens", f"prefill <b>{e.prefill_flops * g:,.3f}</b> GFLOPs",
             f"decode <b>{e.decode_flops * g:,.3f}</b> GFLOPs ({run.n_generated:,} tokens)",
             f"overhead (not your prompt, not the answer): <b>{e.overhead_share():.0%}</b>"]
    if e.cached_tokens:
        parts.append(f"cache saved <b>{e.cached_flops_saved * g:,.3f}</b> GFLOPs ({e.cached_tokens:,} tokens)")
    if e.draft_tokens:
        parts.append(f"drafts: {e.rejected_tokens:,} of {e.draft_tokens:,} rejected "
                     f"(≈{e.rejected_flops * g:,.3f} GFLOPs)")
    n = e.shapes.body_params
    parts.append(f"<span style='color:gray'>N = {n / 1e6:,.1f} M weights per token"
                 + (", MLP size estimated" if e.shapes.estimated else "") + "</span>")
    return " · ".join(parts)
