""""Tokens at layer": the run's hidden states at one layer in 2-D, animated through the layers.

One ScatterPlotItem for the points, one PlotDataItem for the trajectories, text labels only when
there are few points. The shared PCA basis is fitted off the GUI thread (widgets.Background).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from ...core.analysis import projection as P
from ...core.events import TokenKind
from ...core.labels import readable_label, token_label, vocab_label  # noqa: F401 - vocab_label re-exported
from ...core.naming import depth_label
from .. import plot_style
from ..theme import OKABE_ITO
from ..widgets.flow import FlowLayout, labelled
from ..widgets.status_line import StatusLine

MAX_LABELS = 40  # label points with their token text up to this many points
PLAY_MS = 160  # one layer per tick while playing

# Okabe-Ito (colour-blind safe) per token kind
KIND_COLOURS = {
    TokenKind.SPECIAL: OKABE_ITO["grey"], TokenKind.SYSTEM: OKABE_ITO["purple"], TokenKind.USER: OKABE_ITO["blue"],
    TokenKind.PROMPT: OKABE_ITO["green"], TokenKind.GENERATED: OKABE_ITO["vermillion"],
    TokenKind.CACHED_PREFIX: OKABE_ITO["sky"], TokenKind.TOOL_CALL: OKABE_ITO["orange"],
    TokenKind.TOOL_RESULT: OKABE_ITO["yellow"], TokenKind.REASONING: OKABE_ITO["vermillion"],
    TokenKind.RETRIEVED: "#117733",  # (Okabe-Ito has 8 colours; this is Paul Tol's colour-blind-safe dark green)
    TokenKind.SPECULATIVE: "#882255",  # Paul Tol's wine: a deeper "generated" (an accepted draft)
}
SELECTED = (220, 30, 30)
SELECTED_PEN = pg.mkPen(SELECTED, width=2.5)
POSITION_LEVELS = 64  # "colour by position" in this many steps
METHODS = ("PCA, one basis for all layers", "PCA of this layer", "t-SNE", "UMAP")
COLOUR_BY = ("token kind", "position", "same token as selected")


def layer_name(layer: int, n_layers: int) -> str:
    """The residual depth `layer` in the one naming rule (core.naming), with the number of blocks."""
    return f"{depth_label(layer)} of {n_layers}" if layer else depth_label(layer)


class TokensAtLayerView(QWidget):
    """Hidden states of every position at the slider's layer; click a point to select that token."""

    def __init__(self, selection, background, parent: QWidget | None = None):
        super().__init__(parent)
        self.selection, self.background = selection, background
        self.run = None
        self.coords: np.ndarray | None = None  # [layers + 1, N, 2] for the current method
        self.explained: np.ndarray | None = None
        self.massive = np.zeros(0, bool)  # [N] positions left out of the fit (massive activations)
        self._bounds: np.ndarray | None = None  # [2, 2] min/max of the non-massive points
        self._labels: list[pg.TextItem] = []
        self._brushes: list | None = None
        self._key: tuple | None = None
        self._style: tuple | None = None  # the styles the scatter holds (to move points without a rebuild)

        available = P.available_methods()
        self.method = QComboBox()
        for i, name in enumerate(METHODS):
            self.method.addItem(name)
            key = name.split(",")[0].split(" of")[0]
            if not available.get(key, True):
                item = self.method.model().item(i)
                item.setEnabled(False)
                item.setToolTip(f"needs {P.INSTALL_HINT}")
        self.colour = QComboBox()
        self.colour.addItems(COLOUR_BY)
        self.normalise = QCheckBox("unit length")
        self.normalise.setChecked(True)
        self.normalise.setToolTip("Scale every state to unit RMS first, as the next layer's norm does: the residual "
                                  "stream grows with depth, and unscaled late layers would squeeze early ones "
                                  "into a corner.")
        self.follow = QCheckBox("trajectory of the selected token")
        self.follow.setChecked(True)
        self.hint = QLabel("" if all(available.values()) else
                           f"t-SNE / UMAP: {P.INSTALL_HINT}" if not any(list(available.values())[1:]) else
                           f"UMAP: {P.INSTALL_HINT}")
        self.hint.setStyleSheet("color: palette(placeholder-text);")
        self.hint.setWordWrap(True)
        top = FlowLayout()  # wraps in a narrow dock instead of clipping
        for w in (labelled("Projection", self.method), self.normalise, self.follow):
            top.addWidget(w)
        top.addStretch(1)
        second = QHBoxLayout()
        second.addWidget(labelled("Colour by", self.colour))
        second.addWidget(self.hint, 1)

        self.play = QPushButton("\u25b6 Play")
        self.play.setCheckable(True)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, 0)
        self.layer_label = StatusLine(" ", chars=30, policy=QSizePolicy.Preferred)  # (a new depth relays out nothing)
        self.layer_label.setMinimumWidth(230)
        row = QHBoxLayout()
        row.addWidget(self.play)
        row.addWidget(self.slider, 1)
        row.addWidget(self.layer_label)

        self.plot = pg.PlotWidget()
        self.plot.setMenuEnabled(False)
        plot_style.grid(self.plot, x=True, y=True, alpha=0.15)
        plot_style.style(self.plot)
        self.trajectory = pg.PlotDataItem(pen=pg.mkPen((220, 30, 30, 150), width=2), connect="finite",
                                          symbol="o", symbolSize=4,
                                          **plot_style.symbol_style((220, 30, 30, 150), None))
        self.scatter = pg.ScatterPlotItem(hoverable=True, hoverSize=14, hoverPen=pg.mkPen(SELECTED, width=2), tip=None)
        self.plot.addItem(self.trajectory)
        self.plot.addItem(self.scatter)
        self._ends = [pg.TextItem(color=SELECTED, anchor=(1, 0)) for _ in range(2)]  # "L0" and "L<last>"
        for item in self._ends:
            self.plot.addItem(item)
            item.hide()
        self.readout = StatusLine(" ", lines=3)  # (the fit's progress, then a note: the plot under it stays put)
        self.readout.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.legend = StatusLine(" ", fit=True)  # (its counts and the selected token change while a run streams)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addLayout(second)
        layout.addLayout(row)
        layout.addWidget(self.legend)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.readout)

        self.timer = QTimer(self)
        self.timer.setInterval(PLAY_MS)
        self.timer.timeout.connect(self._tick)
        self.play.toggled.connect(self._toggle_play)
        self.slider.valueChanged.connect(self._slider_moved)
        self.method.currentIndexChanged.connect(lambda _i: self.set_run(self.run))
        self.colour.currentIndexChanged.connect(lambda _i: self._restyle())
        self.follow.toggled.connect(lambda _on: self.draw_layer())
        self.normalise.toggled.connect(lambda _on: self.set_run(self.run, force=True))
        self.scatter.sigClicked.connect(self._on_clicked)
        self.scatter.sigHovered.connect(self._on_hovered)

    # --- data -------------------------------------------------------------------------------------
    def set_run(self, run, force: bool = False) -> None:
        method_index = self.method.currentIndex()
        key = None if run is None else (id(run), run.n_tokens, method_index,
                                        self.slider.value() if method_index >= 2 else -1)
        if not force and run is not None and run is self.run and self.coords is not None and key == self._key:
            self.on_selection("layer")
            self._restyle()  # same data: only the selection may have changed
            return
        self._key = key
        self.run = run
        self.coords = None
        self._brushes = None
        if run is None or run.n_tokens == 0:
            self.scatter.clear()
            self.trajectory.setData([], [])
            return
        n_layers = run.info.n_layers
        self.slider.blockSignals(True)
        self.slider.setRange(0, n_layers)
        if self.slider.value() == 0 and not self.play.isChecked():
            self.slider.setValue(min(n_layers, self.selection.layer + 1))
        self.slider.blockSignals(False)
        method = METHODS[self.method.currentIndex()]
        states = run.array("resid")  # [layers + 1, N, D] float16 (read-only view)
        norm = self.normalise.isChecked()
        self.play.setEnabled(method.startswith("PCA"))

        def done(result) -> None:
            # a projection of a run no longer shown (a new run, a replayed step: perhaps shorter) is dropped, as
            # showing that run submitted its own; a streamed run stays the same object as it grows
            if run is self.run:
                self._got_coords(result)

        if method == METHODS[0]:
            self.readout.setText("fitting one PCA basis across all layers\u2026")
            self.background.submit("emb-tokens", lambda: _shared(states, norm), done, self._failed)
        elif method == METHODS[1]:
            self.background.submit("emb-tokens", lambda: _per_layer(states, norm), done, self._failed)
        else:
            self.play.setChecked(False)
            layer = self.slider.value()
            key = method
            self.readout.setText(f"running {key} on layer {layer}\u2026")
            self.background.submit("emb-tokens", lambda: _one_layer(states, layer, key, norm), done, self._failed)

    def _got_coords(self, result) -> None:
        self.coords, self.explained, self.massive = result
        self._fit_range()
        self._restyle()
        if self.massive.any():
            names = ", ".join(f"{i} {token_label(self.run, int(i))}" for i in np.flatnonzero(self.massive)[:4])
            self.readout.setText("Left out of the fit (◆, pinned to the edge when off the chart): "
                                 f"position {names} — a massive activation (hidden state >10x the median "
                                 "length, typical of the first token, an attention sink) that would otherwise decide "
                                 "both axes alone.")
        else:
            self.readout.setText("hover a point to see its token; click to select it")

    def _failed(self, message: str) -> None:
        self.readout.setText(f"projection failed: {message}")

    def _fit_range(self) -> None:
        if self.coords is None:
            return
        keep = self.coords if not self.massive.any() else self.coords[:, ~self.massive]
        pts = keep.reshape(-1, 2)
        finite = pts[np.isfinite(pts).all(axis=1)]
        if len(finite):
            lo, hi = finite.min(axis=0), finite.max(axis=0)
            pad = 0.04 * np.maximum(hi - lo, 1e-6)
            self._bounds = np.stack([lo - pad, hi + pad])  # [2, 2]
            self.plot.setRange(xRange=(float(lo[0]), float(hi[0])), yRange=(float(lo[1]), float(hi[1])),
                               padding=0.08)

    # --- drawing ----------------------------------------------------------------------------------
    def _restyle(self) -> None:
        """Per-point brushes for the colour mode (cached until the run or mode changes)."""
        run = self.run
        if run is None:
            return
        # the points drawn: a projection computed while the run streams can land after more steps arrived (the
        # panel projects them at its next draw); it colours the tokens it has
        n = run.n_tokens if self.coords is None else min(run.n_tokens, self.coords.shape[1])
        tokens = run.tokens[:n]
        mode = COLOUR_BY[self.colour.currentIndex()]
        if mode == "token kind":
            cache = {k: plot_style.brush(c + "dc") for k, c in KIND_COLOURS.items()}  # alpha 220
            other = plot_style.brush(OKABE_ITO["grey"] + "dc")  # a kind without a colour here
            self._brushes = [cache.get(t.kind, other) for t in tokens]
            kinds = [k for k in KIND_COLOURS if any(t.kind == k for t in tokens)]
            self.legend.setText("  ".join(f"<span style='color: {KIND_COLOURS[k]}'>●</span> {k.value}"
                                          for k in kinds) + "  —  big red ring: the selected token")
        elif mode == "position":
            cmap = plot_style.colormap("sequential")
            palette = [plot_style.brush(*map(int, c[:3]), 230)
                       for c in cmap.map(np.linspace(0, 1, POSITION_LEVELS), mode="byte")]
            level = np.rint(np.arange(n) / max(n - 1, 1) * (POSITION_LEVELS - 1)).astype(int)  # [N]
            self._brushes = [palette[i] for i in level]  # (few distinct brushes: pyqtgraph renders a symbol each)
            first, last = (cmap.map(v, mode="qcolor").name() for v in (0.0, 1.0))
            self.legend.setText(f"colour: position 0 (<span style='color: {first}'>●</span>) → {n - 1} "
                                f"(<span style='color: {last}'>●</span>)")
        else:
            target = tokens[min(self.selection.position, n - 1)].id
            hit, miss = plot_style.brush(230, 120, 0, 240), plot_style.brush(170, 170, 170, 150)
            self._brushes = [hit if t.id == target else miss for t in tokens]
            self.legend.setText(f"orange: every occurrence of {token_label(run, min(self.selection.position, n - 1))}"
                                "; grey: other tokens")
        self.draw_layer()

    def draw_layer(self) -> None:
        run, coords = self.run, self.coords
        if run is None or coords is None or self._brushes is None:
            return
        layer = min(self.slider.value(), coords.shape[0] - 1)
        if METHODS[self.method.currentIndex()] in ("t-SNE", "UMAP"):
            layer = 0  # one layer was projected
        xy = coords[layer]  # [N, 2]
        n = xy.shape[0]
        symbols = None
        if self.massive.any() and self._bounds is not None:  # pin left-out points to the chart's edge
            xy = xy.copy()
            xy[self.massive] = np.clip(xy[self.massive], self._bounds[0], self._bounds[1])
            symbols = np.where(self.massive, "d", "o").tolist()
        sel = min(self.selection.position, n - 1)
        style = (id(self._brushes), sel, n, symbols is None)
        if style == self._style and len(self.scatter.data) == n:
            self._move_points(xy)  # same styles (playing through layers): only the positions change
        else:
            self._style = style
            sizes = np.full(n, 9.0 if n <= 400 else 6.0)
            sizes[sel] = 16.0
            pens = [plot_style.NO_PEN] * n  # shared pens: pyqtgraph caches a rendered symbol per pen and brush object
            pens[sel] = SELECTED_PEN
            self.scatter.setData(x=xy[:, 0], y=xy[:, 1], brush=self._brushes, size=sizes, pen=pens,
                                 symbol=symbols or "o", data=np.arange(n))
        self._draw_labels(xy)
        self._draw_trajectory(sel)
        shown = self.slider.value()
        self.layer_label.setText(layer_name(shown, run.info.n_layers))
        if self.explained is not None and len(self.explained) >= 2:
            ex = self.explained if self.explained.ndim == 1 else self.explained[shown]
            self.plot.setLabel("bottom", f"PC1 ({ex[0]:.0%} of variance)")
            self.plot.setLabel("left", f"PC2 ({ex[1]:.0%})")
        else:
            self.plot.setLabel("bottom", "dimension 1")
            self.plot.setLabel("left", "dimension 2")

    def _move_points(self, xy: np.ndarray) -> None:
        """Update positions in place: ScatterPlotItem.setData rebuilds every point's style (~100x slower)."""
        sc = self.scatter
        sc.data["x"] = xy[:, 0]
        sc.data["y"] = xy[:, 1]
        sc.prepareGeometryChange()
        sc.informViewBoundsChanged()
        sc.bounds = [None, None]
        sc.invalidate()

    def _draw_labels(self, xy: np.ndarray) -> None:
        n = xy.shape[0] if xy.shape[0] <= MAX_LABELS else 0
        while len(self._labels) < n:
            item = pg.TextItem(anchor=(0, 1))
            self.plot.addItem(item)
            self._labels.append(item)
        for i, item in enumerate(self._labels):
            if i < n:
                item.setText(token_label(self.run, i), color=plot_style.ink())
                item.setPos(float(xy[i, 0]), float(xy[i, 1]))
                item.show()
            else:
                item.hide()

    def _draw_trajectory(self, sel: int) -> None:
        coords = self.coords
        if not self.follow.isChecked() or METHODS[self.method.currentIndex()] != METHODS[0]:
            self.trajectory.setData([], [])
            self._ends[0].hide()
            self._ends[1].hide()
            return
        same = [sel]
        if COLOUR_BY[self.colour.currentIndex()] == "same token as selected":  # the token and its repeats
            # only the tokens the projection covers (while the run streams, it may hold more: see _restyle)
            tokens = self.run.tokens[: coords.shape[1]]
            target = tokens[sel].id
            same = [i for i, t in enumerate(tokens) if t.id == target][:8]
        same = [i for i in same if not (len(self.massive) > i and self.massive[i])]  # no off-chart paths
        if not same:
            self.trajectory.setData([], [])
            self._ends[0].hide()
            self._ends[1].hide()
            return
        paths = [np.vstack([coords[:, i, :], [[np.nan, np.nan]]]) for i in same]  # [(layers + 2), 2] each
        path = np.vstack(paths)
        self.trajectory.setData(path[:, 0], path[:, 1])
        for item, layer in zip(self._ends, (0, coords.shape[0] - 1), strict=True):
            item.setText(f"L{layer}")
            item.setPos(float(coords[layer, same[0], 0]), float(coords[layer, same[0], 1]))
            item.show()

    # --- interaction ------------------------------------------------------------------------------
    def select_point(self, index: int) -> None:
        """Select the run's token at `index` for every panel."""
        self.selection.set("position", int(index))

    def _on_clicked(self, _item, points, _event=None) -> None:
        if len(points):
            self.select_point(points[0].index())

    def _on_hovered(self, _item, points, _event=None) -> None:
        if self.run is None or not len(points):
            return
        i = points[0].index()
        t = self.run.tokens[i]
        pos = points[0].pos()
        self.readout.setText(f"position {i}: {token_label(self.run, i, 30)!s}  (id {t.id}, {t.kind.value})  "
                             f"at ({pos.x():.2f}, {pos.y():.2f}) \u2014 click to select")

    def _slider_moved(self, value: int) -> None:
        self.draw_layer() if METHODS[self.method.currentIndex()].startswith("PCA") else self.set_run(self.run)
        if not self.play.isChecked() and self.selection.layer != max(0, value - 1):
            self.selection.set("layer", max(0, value - 1))  # hidden state l is the output of block l - 1

    def _toggle_play(self, on: bool) -> None:
        self.play.setText("\u275a\u275a Pause" if on else "\u25b6 Play")
        if on:
            if self.slider.value() >= self.slider.maximum():
                self.slider.setValue(0)
            self.timer.start()
        else:
            self.timer.stop()
            self.selection.set("layer", max(0, self.slider.value() - 1))

    def _tick(self) -> None:
        if self.slider.value() >= self.slider.maximum():
            self.play.setChecked(False)
        else:
            self.slider.setValue(self.slider.value() + 1)

    def on_selection(self, field: str) -> None:
        if field == "layer" and not self.play.isChecked():
            if max(0, self.slider.value() - 1) != self.selection.layer:
                self.slider.setValue(self.selection.layer + 1)
        elif field == "position":
            if COLOUR_BY[self.colour.currentIndex()] == "same token as selected":
                self._restyle()
            else:
                self.draw_layer()


def _shared(states: np.ndarray, norm: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coords, basis, massive = P.project_trajectories(states, normalise=norm)  # [layers + 1, N, 2]
    return coords, basis.explained, massive


def _per_layer(states: np.ndarray, norm: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    massive = P.massive_positions(states)  # [N]
    states = P.unit_rms(states) if norm else states
    fit = states[:, ~massive] if massive.any() else states
    bases = [P.pca_fit(s) for s in fit]
    coords = np.stack([b.transform(s) for b, s in zip(bases, states, strict=True)])  # [layers + 1, N, 2]
    return coords, np.stack([b.explained for b in bases]), massive  # [layers + 1, 2]


def _one_layer(states: np.ndarray, layer: int, method: str, norm: bool) -> tuple[np.ndarray, None, np.ndarray]:
    x = P.unit_rms(states[layer]) if norm else states[layer]  # [N, D]
    xy = P.project(np.asarray(x, np.float32), method)[None]  # [1, N, 2]
    return xy, None, np.zeros(xy.shape[1], bool)
