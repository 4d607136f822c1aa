"""The Embeddings panel's other views: vocabulary map, queries & keys, RoPE."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSplitter,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from ...core.analysis import projection as P
from ...core.analysis import rope as R
from ...core.labels import readable_label, token_label, vocab_label
from .. import plot_style
from ..table_fill import fill_table
from ..theme import OKABE_ITO
from ..widgets.heatmap import Heatmap
from ..widgets.status_line import StatusLine
from .embeddings_tokens import MAX_LABELS, SELECTED

NEIGHBOUR, KEY = OKABE_ITO["orange"], OKABE_ITO["orange"]

N_NEIGHBOURS = 12
KEY_LEVELS = 32  # keys are coloured in this many steps of attention: each distinct brush is a symbol to render
Q_BRUSH = pg.mkBrush(0, 114, 178, 150)
RUN_BRUSH, NEIGHBOUR_BRUSH, SELECTED_BRUSH = (pg.mkBrush(0, 114, 178, 200), pg.mkBrush(230, 120, 0, 230),
                                              pg.mkBrush(*SELECTED, 255))  # the run's tokens, neighbours, selected
SELECTED_PENS = (pg.mkPen(SELECTED, width=3), pg.mkPen(SELECTED, width=1.5))  # the selected query, its key
KEY_BRUSHES = [pg.mkBrush(*c[:3], 220) for c in pg.ColorMap([0.0, 1.0], [(200, 200, 200), (170, 0, 20)]).map(
    np.linspace(0.0, 1.0, KEY_LEVELS), mode="byte")]  # light grey (no attention) to dark red (the most)
VOCAB_SAMPLE = 4000


def _plot() -> pg.PlotWidget:
    plot = pg.PlotWidget()
    plot.setMenuEnabled(False)
    plot_style.grid(plot, x=True, y=True, alpha=0.15)
    return plot_style.style(plot)


class _Labels:
    """A small reusable pool of TextItems on a plot (only ever a few dozen)."""

    def __init__(self, plot: pg.PlotWidget):
        self.plot, self.items = plot, []

    def show(self, entries: list[tuple[float, float, str, tuple]]) -> None:
        while len(self.items) < len(entries):
            item = pg.TextItem(anchor=(0, 1))
            self.plot.addItem(item)
            self.items.append(item)
        for i, item in enumerate(self.items):
            if i < len(entries):
                x, y, text, colour = entries[i]
                item.setText(text, color=colour)
                item.setPos(float(x), float(y))
                item.show()
            else:
                item.hide()


# --- vocabulary ------------------------------------------------------------------------------------

class VocabView(QWidget):
    """A sampled embedding table in 2-D (cached on disk), the run's tokens on it, neighbours of the selected one."""

    def __init__(self, selection, background, parent: QWidget | None = None):
        super().__init__(parent)
        self.selection, self.background = selection, background
        self.run = None
        self.map: P.VocabMap | None = None
        self._unit: tuple[int, np.ndarray] | None = None  # (id of the table, unit rows)
        self.header = QLabel(" ")
        self.header.setWordWrap(True)
        self.plot = _plot()
        self.sample = pg.ScatterPlotItem(size=3, pen=None, brush=pg.mkBrush(150, 150, 150, 90))
        self.marks = pg.ScatterPlotItem(hoverable=True, hoverSize=12, tip=None)
        self.plot.addItem(self.sample)
        self.plot.addItem(self.marks)
        self.labels = _Labels(self.plot)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["token", "id", "cosine"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.nn_title = StatusLine(" ", lines=2)  # names the selected token: the table under it stays put
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(self.nn_title)
        side_layout.addWidget(self.table, 1)
        split = QSplitter(Qt.Horizontal)
        split.addWidget(self.plot)
        split.addWidget(side)
        split.setSizes([640, 260])
        self.readout = QLabel(" ")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.header)
        layout.addWidget(split, 1)
        layout.addWidget(self.readout)
        self.marks.sigHovered.connect(self._on_hovered)
        self._mark_ids = np.zeros(0, np.int64)

    def set_run(self, run) -> None:
        self.run = run
        if run is None or run.unembed is None:
            self.map = None
            self.sample.clear()
            self.marks.clear()
            self.labels.show([])
            self.table.setRowCount(0)
            self.header.setText("This model has no language-model head (an encoder such as BERT): "
                                "there is no token table in the captured run to map." if run else " ")
            return
        table = run.unembed  # [vocab, D]
        tied = P.embedding_is_tied(run)
        what = ("Input embedding table (tied: the model's output head re-uses it, so this is also the lm_head "
                "weight)" if tied else "Output embedding (the lm_head weight; the input table is a different "
                "matrix unless the model ties them)")
        self.header.setText(f"<b>{what}</b> \u2014 {table.shape[0]:,} tokens \u00d7 {table.shape[1]} dimensions. "
                            f"Grey: {min(VOCAB_SAMPLE, table.shape[0]):,} randomly sampled tokens; coloured: "
                            "this run's tokens; red: the selected token and its nearest neighbours.")
        if self.map is not None and self._unit is not None and self._unit[0] == id(table):
            self.draw()
            return
        name = run.info.name
        self.readout.setText("building the vocabulary map (once per model, then cached on disk)\u2026")
        self.background.submit("emb-vocab", lambda: (P.vocab_map(table, name, VOCAB_SAMPLE), id(table),
                                                     P.unit_rows(table)), self._got_map,
                               lambda m: self.readout.setText(f"vocabulary map failed: {m}"))

    def _got_map(self, result) -> None:
        self.map, key, unit = result
        self._unit = (key, unit)
        self.sample.setData(pos=self.map.coords)
        self.readout.setText("map loaded from the disk cache" if self.map.from_cache else
                             "map built and saved to the disk cache")
        self.draw()
        self.plot.autoRange()

    def draw(self) -> None:
        run, vm = self.run, self.map
        if run is None or vm is None or self._unit is None or run.n_tokens == 0:
            return
        table = run.unembed
        known = {t.id: t.text for t in run.tokens if t.text}
        sel = min(self.selection.position, run.n_tokens - 1)
        sel_id = run.tokens[sel].id
        nn_ids, sims = P.nearest_neighbours(table, sel_id, N_NEIGHBOURS, unit=self._unit[1])
        run_ids = np.unique(run.token_ids)
        ids = np.concatenate([run_ids, nn_ids, [sel_id]]).astype(np.int64)  # later entries draw on top
        xy = vm.place(table, ids)  # [M, 2]
        n_run, n_nn = len(run_ids), len(nn_ids)
        brushes = [RUN_BRUSH] * n_run + [NEIGHBOUR_BRUSH] * n_nn + [SELECTED_BRUSH]
        sizes = np.r_[np.full(n_run, 8.0), np.full(n_nn, 9.0), [15.0]]
        symbols = ["o"] * n_run + ["d"] * n_nn + ["star"]
        self.marks.setData(pos=xy, brush=brushes, size=sizes, symbol=symbols, pen=plot_style.NO_PEN)
        self._mark_ids = ids
        entries = [(xy[-1, 0], xy[-1, 1], vocab_label(run, sel_id, known), SELECTED)]
        entries += [(xy[n_run + j, 0], xy[n_run + j, 1], vocab_label(run, int(i), known), NEIGHBOUR)
                    for j, i in enumerate(nn_ids[:8])]
        if n_run <= MAX_LABELS:
            entries += [(xy[j, 0], xy[j, 1], vocab_label(run, int(i), known), plot_style.ink())
                        for j, i in enumerate(run_ids) if i != sel_id]
        self.labels.show(entries)
        self.nn_title.setText(f"Nearest neighbours (cosine) of <b>{vocab_label(run, sel_id, known, 30)}</b> "
                              f"(id {sel_id}) in the whole table:")
        fill_table(self.table, [[vocab_label(run, int(i), known, 30), str(int(i)), f"{s:.3f}"]
                                for i, s in zip(nn_ids, sims, strict=True)], resize=False)  # column 0 stretches

    def _on_hovered(self, _item, points, _event=None) -> None:
        if self.run is not None and len(points):
            tid = int(self._mark_ids[points[0].index()])
            in_run = [i for i, t in enumerate(self.run.tokens) if t.id == tid]
            where = f"at positions {in_run[:6]}" if in_run else "not in this run (a neighbour)"
            self.readout.setText(f"token id {tid}: {vocab_label(self.run, tid, None, 30)} \u2014 {where}")

    def on_selection(self, field: str) -> None:
        if field == "position":
            self.draw()


# --- queries and keys ------------------------------------------------------------------------------

class QueryKeyView(QWidget):
    """The selected layer/head's queries (circles) and keys (triangles) in one joint PCA."""

    def __init__(self, selection, parent: QWidget | None = None):
        super().__init__(parent)
        self.selection = selection
        self.run = None
        self.centre = QCheckBox("centre queries and keys separately (AttentionViz)")
        self.title = StatusLine(" ", lines=2)  # names the selected query: one that asked for its whole width
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.centre)
        self.plot = _plot()
        self.scatter = pg.ScatterPlotItem(hoverable=True, hoverSize=14, tip=None)
        self.plot.addItem(self.scatter)
        self.labels = _Labels(self.plot)
        self.readout = QLabel("hover a point to see its token and attention weight; click a query to select it")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.readout)
        self.centre.toggled.connect(lambda _on: self.draw())
        self.scatter.sigHovered.connect(self._on_hovered)
        self.scatter.sigClicked.connect(self._on_clicked)
        self._attn = np.zeros(0)

    def set_run(self, run) -> None:
        self.run = run
        self.draw()

    def draw(self) -> None:
        run = self.run
        if run is None or run.n_tokens == 0:
            self.scatter.clear()
            return
        info = run.info
        layer = min(self.selection.layer, info.n_layers - 1)
        head = min(self.selection.head, info.n_heads - 1)
        kv = head // info.group_size
        n = run.n_tokens
        sel = min(self.selection.position, n - 1)
        q = run.array("queries")[layer, head].astype(np.float32)  # [N, head_dim]
        k = run.array("keys")[layer, kv].astype(np.float32)  # [N, head_dim]
        if self.centre.isChecked():
            q, k = q - q.mean(axis=0), k - k.mean(axis=0)
        xy = P.pca(np.vstack([q, k]))  # [2N, 2]
        self._attn = run.attention(layer, head, rows=slice(sel, sel + 1))[0]  # [N] from the selected query
        level = np.rint(np.clip(self._attn / max(float(self._attn.max()), 1e-9), 0, 1) * (KEY_LEVELS - 1))  # [N]
        brushes = [Q_BRUSH] * n + [KEY_BRUSHES[int(i)] for i in level]  # few distinct brushes: symbols are cached
        sizes = np.full(2 * n, 9.0 if n <= 400 else 6.0)
        sizes[sel] = 18.0
        pens = [plot_style.NO_PEN] * (2 * n)  # shared objects: pyqtgraph caches a rendered symbol per object
        pens[sel], pens[n + sel] = SELECTED_PENS
        self.scatter.setData(pos=xy, brush=brushes, size=sizes, pen=pens, symbol=["o"] * n + ["t"] * n)
        after = " after RoPE" if info.rope_theta else ""
        self.title.setText(f"Layer {layer}, query head {head} (KV head {kv}): queries{after} \u25cf blue, "
                           f"keys{after} \u25bc coloured by the attention the selected query "
                           f"<b>{token_label(run, sel)}</b> gives them (dark red = most).")
        top = [j for j in np.argsort(-self._attn)[:4] if self._attn[j] >= 0.05]
        entries = [(xy[sel, 0], xy[sel, 1], "Q " + token_label(run, sel), SELECTED)]
        entries += [(xy[n + j, 0], xy[n + j, 1], f"K {token_label(run, int(j))} {self._attn[j]:.2f}", KEY)
                    for j in top]
        if n <= MAX_LABELS // 2:
            entries += [(xy[i, 0], xy[i, 1], token_label(run, i), plot_style.ink()) for i in range(n) if i != sel]
        self.labels.show(entries)

    def _on_hovered(self, _item, points, _event=None) -> None:
        if self.run is None or not len(points):
            return
        i, n = points[0].index(), self.run.n_tokens
        if i < n:
            self.readout.setText(f"query at position {i}: {token_label(self.run, i, 30)} \u2014 click to select")
        else:
            j = i - n
            self.readout.setText(f"key at position {j}: {token_label(self.run, j, 30)}; attention from the "
                                 f"selected query: {self._attn[j]:.3f}")

    def _on_clicked(self, _item, points, _event=None) -> None:
        if self.run is not None and len(points):
            self.selection.set("position", points[0].index() % self.run.n_tokens)

    def on_selection(self, field: str) -> None:
        self.draw()


# --- RoPE ---------------------------------------------------------------------------------------------
def _variant_note(info) -> str:
    """A warning when the model's RoPE is not plain (the view draws plain RoPE only).

    `info.rope_variant` (set from the config with core.analysis.rope.rope_variant) is read when present.
    """
    variant = getattr(info, "rope_variant", None)
    if not variant:
        return ""
    return (f" <b>This model uses {variant}: the angles and curve here are plain RoPE with this theta, "
            "not exactly what the model computes.</b>")


class RopeView(QWidget):
    """Rotation angle of each frequency pair against position, and the q.k dot product against distance."""

    def __init__(self, selection, parent: QWidget | None = None):
        super().__init__(parent)
        self.selection = selection
        self.run = None
        self.absent = QLabel()
        self.absent.setWordWrap(True)
        self.absent.setStyleSheet("padding: 12px; font-size: 13px;")
        self.title = StatusLine(" ", lines=2, fit=True)  # names this run's positions: a step relays out nothing
        self.heatmap = Heatmap("CET-C2")
        self.heatmap.plot.setLabel("bottom", "frequency pair i (fast \u2192 slow)")
        self.heatmap.plot.setLabel("left", "position")
        self.source = QComboBox()
        self.source.addItems(["a fixed random vector as both query and key (seed 0)",
                              "the selected token's own query and key (selected layer/head)"])
        self.curve_plot = _plot()
        self.curve_plot.setLabel("bottom", "distance between query and key (positions)")
        self.curve_plot.setLabel("left", "q \u00b7 k after RoPE")
        self.curve = pg.PlotDataItem(pen=pg.mkPen(OKABE_ITO["blue"], width=2))
        self.curve_plot.addItem(self.curve)
        self.curve_plot.addItem(pg.InfiniteLine(angle=0, pen=pg.mkPen((150, 150, 150), style=Qt.DashLine)))
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.source)
        rl.addWidget(self.curve_plot, 1)
        self.split = QSplitter(Qt.Horizontal)
        self.split.addWidget(self.heatmap)
        self.split.addWidget(right)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.absent)
        layout.addWidget(self.title)
        layout.addWidget(self.split, 1)
        self.heatmap.hovered.connect(self._on_hovered)
        self.source.currentIndexChanged.connect(lambda _i: self.draw_curve())
        self._rows = 0

    def set_run(self, run) -> None:
        self.run = run
        has_rope = run is not None and bool(run.info.rope_theta)
        self.absent.setVisible(run is not None and not has_rope)
        self.title.setVisible(has_rope)
        self.split.setVisible(has_rope)
        if run is None:
            return
        if not has_rope:
            self.absent.setText(f"{run.info.name} ({run.info.architecture}) has no rotary position embeddings: "
                                "it adds a learned position vector to each token's embedding before the first "
                                "layer, so its queries and keys are not rotated and there is nothing to show here. "
                                "Llama-family models such as SmolLM2 use RoPE.")
            return
        info = run.info
        rows = int(min(4096, max(256, run.n_tokens)))
        if rows != self._rows:
            self._rows = rows
            ang = R.rope_angles(rows, info.head_dim, info.rope_theta, wrap=True).astype(np.float32)  # [P, d/2]
            self.heatmap.set_data(ang, levels=(0.0, float(2 * np.pi)))
        wl = R.wavelengths(info.head_dim, info.rope_theta)
        self.title.setText(f"RoPE with theta = {info.rope_theta:g}, head_dim = {info.head_dim}: pair i (dimensions i "
                           f"and i + {info.head_dim // 2}) turns by position \u00d7 theta^(-2i/{info.head_dim}) "
                           f"radians; one full turn takes {wl[0]:.1f} positions for pair 0 and {wl[-1]:,.0f} for "
                           f"pair {len(wl) - 1}. Colour: angle mod 2\u03c0 (a cyclic map). This run has "
                           f"{run.n_tokens} positions." + _variant_note(info))
        self.draw_curve()

    def draw_curve(self) -> None:
        run = self.run
        if run is None or not run.info.rope_theta:
            return
        info = run.info
        if self.source.currentIndex() == 0:
            q = np.random.default_rng(0).normal(size=info.head_dim)
            k = q
        else:
            layer = min(self.selection.layer, info.n_layers - 1)
            head = min(self.selection.head, info.n_heads - 1)
            pos = min(self.selection.position, run.n_tokens - 1)
            qk = np.stack([run.array("queries")[layer, head, pos],
                           run.array("keys")[layer, head // info.group_size, pos]])  # [2, head_dim] post-RoPE
            q, k = R.apply_rope(qk, np.array([-pos, -pos]), info.rope_theta)  # undo the rotation
        curve = R.distance_curve(q, k, info.rope_theta, self._rows)  # [P + 1]
        self.curve.setData(np.arange(curve.shape[0]), curve)

    def _on_hovered(self, row: int, col: int) -> None:
        info = self.run.info if self.run else None
        if info is None or not info.rope_theta:
            return
        ang = self.heatmap.value_at(row, col)
        wl = R.wavelengths(info.head_dim, info.rope_theta)[col]
        self.heatmap.readout.setText(f"position {row}, pair {col} (dimensions {col} & {col + info.head_dim // 2}): "
                                     f"angle {ang:.2f} rad mod 2\u03c0; a full turn every {wl:,.1f} positions")

    def on_selection(self, field: str) -> None:
        if self.source.currentIndex() == 1:
            self.draw_curve()


__all__ = ["QueryKeyView", "RopeView", "VocabView", "readable_label"]
