"""Retrieval: the run's question and its retrieved chunks in MiniLM's embedding space, and which passage
each generated token attends to, layer by layer ("which passage did this answer come from").

The map is an engine job (core.retrieval.jobs.EmbeddingMap: MiniLM runs where the model work runs); the
attention shares are recomputed here from the run's captured queries and keys (core/retrieval/attribution.py),
only for the positions a step adds while the run streams. Indexes are built from this panel too (an engine
job with progress and Stop); the prompt bar's Retrieve box picks one and k.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...core.events import StepEvent
from ...core.retrieval.attribution import ChunkAttention, chunk_attention
from ...core.retrieval.chunking import STDLIB
from ...core.retrieval.jobs import BuildIndex, EmbeddingMap, MapResult
from ...core.run import Run
from .. import plot_style
from ..widgets.heatmap import Heatmap
from .base import Panel

TABLE_COLUMNS = ("#", "source", "score", "attention")


class RetrievalPanel(Panel):
    title = "Retrieval"
    help_text = (
        "Retrieval-augmented generation. With Retrieve ticked in the prompt bar, the question is embedded with "
        "MiniLM (mean-pooled, unit-length sentence vectors), the index's k closest chunks (cosine similarity) "
        "are inserted before it and become 'retrieved' tokens. Left: the question (star), the retrieved chunks "
        "(numbered) and their nearest neighbours in the index (grey) in MiniLM's embedding space, projected to "
        "2-D with PCA; the score is the cosine similarity to the question. Right: for the generated token "
        "selected (or, on a prompt token, the mean over all generated tokens), the share of attention each "
        "chunk receives in each layer, summed over heads with the first token (the attention sink) left out; "
        "below, the answer token by token (averaged over layers): which passage each token leaned on. "
        "Attention is where the model looked, not proof of what it used. Click a chunk or a cell to select "
        "its tokens or layer."
    )

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.attn: ChunkAttention | None = None
        self._attn_run: Run | None = None  # the run the shares were computed for (streaming adds to them)
        self.map: MapResult | None = None
        self._map_for: tuple | None = None
        self.build_job = None
        self._build_row()
        split = QSplitter(Qt.Horizontal)
        split.addWidget(self._build_map())
        split.addWidget(self._build_attention())
        split.setSizes([480, 620])
        self.body.addWidget(split, 1)

    # --- layout ---------------------------------------------------------------------------------------
    def _build_row(self) -> None:
        row = QHBoxLayout()
        self.index_stdlib = QPushButton("Index the standard library")
        self.index_stdlib.setToolTip("Build or update the index of the Python standard library's docstrings "
                                     "(in the user cache; only changed modules are embedded again)")
        self.index_folder = QPushButton("Index a folder…")
        self.index_folder.setToolTip("Build or update the index of a folder of .txt/.md/.rst/.py files")
        self.stop = QPushButton("Stop")
        self.stop.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(160)
        self.progress.setMaximum(1000)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        for w in (self.index_stdlib, self.index_folder, self.stop, self.progress):
            row.addWidget(w)
        row.addWidget(self.status, 1)
        self.body.addLayout(row)
        self.index_stdlib.clicked.connect(lambda: self.build(STDLIB))
        self.index_folder.clicked.connect(self._choose_folder)
        self.stop.clicked.connect(lambda: self.build_job is not None and self.build_job.cancel())

    def _build_map(self) -> QWidget:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "PCA 1")
        self.plot.setLabel("left", "PCA 2")
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).enableAutoSIPrefix(False)
        plot_style.style(self.plot)
        self.neighbours = pg.ScatterPlotItem(size=6, pen=None)
        self.chunks = pg.ScatterPlotItem(size=16, symbol="o")
        self.query = pg.ScatterPlotItem(size=22, symbol="star")
        for item in (self.neighbours, self.chunks, self.query):
            self.plot.addItem(item)
        self.labels: list[pg.TextItem] = []
        self.map_caption = QLabel(" ")
        self.map_caption.setWordWrap(True)
        v.addWidget(self.plot, 1)
        v.addWidget(self.map_caption)
        return box

    def _build_attention(self) -> QWidget:
        box = QWidget()
        v = QVBoxLayout(box)
        v.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(TABLE_COLUMNS)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setMaximumHeight(150)
        self.table.cellClicked.connect(lambda r, _c: self.select_chunk(r))
        self.caption = QLabel(" ")
        self.caption.setWordWrap(True)
        self.layers = Heatmap("sequential")
        self.layers.plot.setLabel("left", "layer")
        self.layers.plot.setLabel("bottom", "retrieved chunk")
        self.layers.clicked.connect(self._layer_clicked)
        self.tokens = Heatmap("sequential")
        self.tokens.plot.setLabel("left", "generated token")
        self.tokens.plot.setLabel("bottom", "retrieved chunk")
        self.tokens.clicked.connect(self._token_clicked)
        maps = QSplitter(Qt.Horizontal)
        maps.addWidget(self.layers)
        maps.addWidget(self.tokens)
        v.addWidget(self.table)
        v.addWidget(self.caption)
        v.addWidget(maps, 1)
        return box

    # --- the panel contract -------------------------------------------------------------------------------
    def is_empty(self) -> bool:
        return self.full_run is None or not self.full_run.retrieved

    def draw_run(self, run: Run | None) -> None:
        self._attn_run, self.attn = None, None
        if run is None or not run.retrieved:
            self.table.setRowCount(0)
            self.caption.setText("This run has no retrieved chunks: tick Retrieve in the prompt bar and run "
                                 "(build an index here first)." if run is not None else " ")
            self._clear_map()
            return
        self._fill_table(run)
        self._update_attention(run)
        self._request_map(run)
        self.draw_selection("position")

    def draw_step(self, run: Run, event: StepEvent) -> None:
        if not run.retrieved:
            return
        if self._attn_run is not run:
            self.draw_run(run)
            return
        self._update_attention(run)
        self.draw_selection("position")

    def draw_selection(self, field: str) -> None:
        if self.run is None or self.attn is None or field not in ("position", "layer", "step"):
            return
        self._draw_layers()
        self._fill_shares()

    def apply_theme(self) -> None:
        if self.map is not None:
            self._draw_map(self.map)

    # --- attention ---------------------------------------------------------------------------------------
    def _update_attention(self, run: Run) -> None:
        """Shares for every generated position; while streaming, only the positions added since the last step."""
        done = self.attn.positions.size if self.attn is not None and self._attn_run is run else 0
        new = chunk_attention(run, np.arange(run.n_prompt + done, run.n_tokens))
        if new is None:
            self.attn = None
            self.caption.setText("Attention to the chunks needs a causal model's captured queries and keys.")
            return
        if done:
            new = ChunkAttention(np.concatenate([self.attn.positions, new.positions]),
                                 np.concatenate([self.attn.shares, new.shares], axis=1), new.chunk_tokens)
        self.attn, self._attn_run = new, run
        n = self.attn.n_chunks
        mean_layers = self.attn.shares.mean(axis=0) if self.attn.positions.size else np.zeros((0, n))  # [G, C]
        if mean_layers.shape[0]:
            vocab_text = [run.tokens[int(p)].text for p in self.attn.positions]
            self.tokens.set_data(mean_layers.astype(np.float32), (0.0, max(1e-6, float(mean_layers.max()))),
                                 row_labels=[repr(t)[1:-1][:12] for t in vocab_text],
                                 col_labels=[str(i + 1) for i in range(n)])

    def _selected_token(self) -> int | None:
        """Index into the generated positions of the selected token (None: a prompt token is selected)."""
        if self.attn is None or not self.attn.positions.size:
            return None
        hits = np.flatnonzero(self.attn.positions == self.selection.position)
        return int(hits[0]) if hits.size else None

    def _draw_layers(self) -> None:
        attn = self.attn
        which = self._selected_token()
        data = attn.mean_over_tokens() if which is None else attn.shares[:, which, :]  # [L, C]
        self.layers.set_data(data.astype(np.float32), (0.0, max(1e-6, float(data.max()) if data.size else 1.0)),
                             row_labels=[str(i) for i in range(data.shape[0])],
                             col_labels=[str(i + 1) for i in range(attn.n_chunks)])
        if not attn.positions.size:
            what = "no token generated yet"
        elif which is None:
            what = f"mean over the {attn.positions.size} generated tokens"
        else:
            what = f"generated token {self.run.tokens[int(attn.positions[which])].text!r}"
        best = data[self.selection.layer] if self.selection.layer < data.shape[0] else np.zeros(attn.n_chunks)
        lead = int(np.argmax(best)) if best.size else 0
        self.caption.setText(f"Share of attention (heads summed, sink left out) per layer: {what}. Layer "
                             f"{self.selection.layer}: chunk {lead + 1} gets {best[lead] if best.size else 0:.1%}.")

    def _fill_shares(self) -> None:
        which = self._selected_token()
        shares = self.attn.mean_over_tokens() if which is None else self.attn.shares[:, which, :]  # [L, C]
        layer = min(self.selection.layer, shares.shape[0] - 1)
        self.table.setHorizontalHeaderItem(3, QTableWidgetItem(f"attention at layer {layer}"))
        for row in range(min(self.table.rowCount(), shares.shape[1])):
            self.table.setItem(row, 3, QTableWidgetItem(f"{shares[layer, row]:.1%}"))

    def _fill_table(self, run: Run) -> None:
        self.table.setRowCount(len(run.retrieved))
        for row, chunk in enumerate(run.retrieved):
            cells = (str(row + 1), f"{chunk.source}:{chunk.line}", f"{chunk.score:.3f}", "")
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 0:  # the chunk's colour on the map
                    item.setBackground(QColor(plot_style.series(row)))
                    item.setForeground(QColor("#000000"))
                if col == 1:
                    item.setToolTip(f"<p style='white-space:pre-wrap'>{html.escape(chunk.text[:1500])}</p>")
                self.table.setItem(row, col, item)
        self.table.resizeColumnsToContents()

    def select_chunk(self, row: int) -> None:
        """Select the first token of a retrieved chunk (every panel follows)."""
        if self.attn is not None and 0 <= row < len(self.attn.chunk_tokens) and self.attn.chunk_tokens[row].size:
            self.selection.set("position", int(self.attn.chunk_tokens[row][0]))

    def _layer_clicked(self, row: int, col: int) -> None:
        if self.run is not None and 0 <= row < self.run.info.n_layers:
            self.selection.set("layer", row)
        self.select_chunk(col) if self._selected_token() is None else None

    def _token_clicked(self, row: int, _col: int) -> None:
        if self.attn is not None and 0 <= row < self.attn.positions.size:
            self.selection.set("position", int(self.attn.positions[row]))

    # --- the embedding map ----------------------------------------------------------------------------------
    def _request_map(self, run: Run) -> None:
        spec = run.request.retrieval
        key = (run.request.prompt, spec.chunks, spec.index)
        if key == self._map_for:
            return
        self._map_for = key
        self.map_caption.setText("Embedding the question and the chunks with MiniLM…")
        self.services.submit_job(EmbeddingMap(run.request.prompt, spec.chunks, spec.index), self._map_done,
                                 self._map_failed, key=f"retrieval-map-{id(self)}")

    def _map_failed(self, message: str) -> None:
        self._map_for = None
        self.map_caption.setText(f"The embedding map could not be made: {message}")

    def _map_done(self, result: MapResult) -> None:
        self.map = result
        self._draw_map(result)

    def _clear_map(self) -> None:
        self.map, self._map_for = None, None
        for item in (self.neighbours, self.chunks, self.query):
            item.setData([], [])
        for label in self.labels:
            self.plot.removeItem(label)
        self.labels = []
        self.map_caption.setText(" ")

    def _draw_map(self, m: MapResult) -> None:
        for label in self.labels:
            self.plot.removeItem(label)
        self.labels = []
        pts, c = m.points, m.n_chunks
        faint = plot_style.faint()
        self.neighbours.setData(pts[1 + c:, 0], pts[1 + c:, 1], brush=pg.mkBrush(faint),
                                data=list(range(1 + c, len(pts))))
        self.chunks.setData(pts[1:1 + c, 0], pts[1:1 + c, 1],
                            brush=[pg.mkBrush(plot_style.series(i)) for i in range(c)],
                            pen=pg.mkPen(plot_style.ink(), width=1))
        self.query.setData(pts[:1, 0], pts[:1, 1], brush=pg.mkBrush(plot_style.series(3)),
                           pen=pg.mkPen(plot_style.ink(), width=1))
        for i in range(c):
            label = pg.TextItem(f"[{i + 1}] {m.scores[1 + i]:.2f}", color=plot_style.ink(), anchor=(0, 1))
            label.setPos(float(pts[1 + i, 0]), float(pts[1 + i, 1]))
            self.plot.addItem(label)
            self.labels.append(label)
        q = pg.TextItem("question", color=plot_style.ink(), anchor=(0.5, -0.4))
        q.setPos(float(pts[0, 0]), float(pts[0, 1]))
        self.plot.addItem(q)
        self.labels.append(q)
        plot_style.style(self.plot)
        near = (f"; grey: the {m.n_neighbours} next-closest chunks of the index (scores "
                f"{m.scores[1 + c:].min():.2f}–{m.scores[1 + c:].max():.2f})") if m.n_neighbours else ""
        self.map_caption.setText(
            f"MiniLM space, PCA ({m.explained[0]:.0%} + {m.explained[1]:.0%} of the variance): the question "
            f"(star) and the {c} retrieved chunks, labelled [rank] cosine score{near}. {m.note}".strip())

    # --- building an index -----------------------------------------------------------------------------------
    def _choose_folder(self) -> None:
        from ..export import documents_dir

        folder = QFileDialog.getExistingDirectory(self, "Folder of .txt/.md/.rst/.py files to index", documents_dir())
        if folder:
            self.build(folder)

    def build(self, folder: str, out: str | None = None) -> None:
        """Build or update the index of `folder` (STDLIB: the standard library) in the user cache."""
        name = "the standard library" if folder == STDLIB else Path(folder).name
        self.index_stdlib.setEnabled(False)
        self.index_folder.setEnabled(False)
        self.stop.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(f"Indexing {name}…")
        self._skipped = 0
        # minutes of MiniLM work: a process of its own, so runs never wait behind it
        self.build_job = self.services.submit_side_job(BuildIndex(folder, out), self._built, self._build_failed,
                                                       self._build_progress)

    def _build_progress(self, fraction: float, message: str = "") -> None:
        self.progress.setValue(int(round(fraction * 1000)))
        if message:
            self.status.setText(message)

    def _build_ended(self) -> None:
        self.index_stdlib.setEnabled(True)
        self.index_folder.setEnabled(True)
        self.stop.setEnabled(False)
        self.build_job = None

    def _built(self, report) -> None:
        self._build_ended()
        self.progress.setValue(1000)
        skipped = "; skipped: " + ", ".join(f"{s} ({r})" for s, r in report.skipped[:4]) if report.skipped else ""
        self.status.setText(report.summary() + skipped + ". Tick Retrieve in the prompt bar to use it.")

    def _build_failed(self, message: str) -> None:
        self._build_ended()
        self.status.setText(f"Indexing stopped: {message} (files finished before are kept)")
