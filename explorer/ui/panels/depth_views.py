"""The lower views of the Layer-depth panel: direct logit attribution, residual share, similarity and
update ratios, and the counterfactual depth attention. Each draws numpy results from
explorer.core.analysis.depth*; one plot item per picture."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QFontMetricsF
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QVBoxLayout, QWidget

from ...core.analysis.depth import (
    direct_logit_attribution,
    is_additive,
    layer_similarity,
    position_mask,
    residual_share,
    update_ratios,
)
from ...core.analysis.depth_attention import DepthWeights, depth_attention, head_attribution
from ...core.labels import readable_label
from ...core.labels import token_text as piece_name
from ...core.naming import depth_label
from ...core.run import Run
from .. import plot_style
from ..theme import OKABE_ITO
from ..widgets.flow import FlowLayout
from ..widgets.heatmap import Heatmap, tick_step
from ..widgets.status_line import StatusLine

POS_COLOUR = OKABE_ITO["vermillion"]  # as the red / blue of the diverging maps (colour-blind safe)
NEG_COLOUR = OKABE_ITO["blue"]
DEPTH_COLOUR = OKABE_ITO["purple"]
BLOCK_COLOUR = OKABE_ITO["green"]


def _label(text: str = " ") -> StatusLine:
    """A wrapped caption as high as its text needs at its width (a caption set later, e.g. when an off-thread
    result lands, is never cut), whose new text relays out nothing unless its number of lines changes."""
    return StatusLine(text, fit=True)


def _sym_levels(a: np.ndarray) -> tuple[float, float]:
    m = float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else 1.0
    return -max(m, 1e-6), max(m, 1e-6)


class AttributionView(QWidget):
    """Bars along depth: embedding, attn 0, mlp 0, ...; optional heads x layers map."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.plot = _plot()
        plot_style.grid(self.plot, y=True, alpha=0.3)
        self.plot.setLabel("left", "Δ logit")
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.8)
        self.plot.addItem(self.bars)
        self.by_head = QCheckBox("split attention by head")
        self.heads = Heatmap("CET-D1")
        self.heads.hide()
        self.caption = _label()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        layout.addWidget(self.plot, 2)
        layout.addWidget(self.by_head)
        layout.addWidget(self.heads, 2)
        self.last = None
        self._ticks: list[str] = []
        self.plot.getViewBox().sigResized.connect(self._thin_ticks)

    def _thin_ticks(self, *_args) -> None:
        """"emb" under the first bar, then each layer's number under its pair of bars (attention, MLP);
        every Nth layer (1, 2, 5, ...) so the numbers never overlap at the plot's width."""
        if not self._ticks:
            return
        n_layers = (len(self._ticks) - 1) // 2
        metrics = QFontMetricsF(self.plot.getAxis("bottom").font())
        need = metrics.horizontalAdvance(str(max(0, n_layers - 1))) + 8
        step = tick_step(2 * self.plot.getViewBox().width() / (len(self._ticks) + 1), need)
        self.plot.getAxis("bottom").setTicks([[(0, "emb")] + [(2 * layer + 1.5, str(layer))
                                                             for layer in range(0, n_layers, step)]])

    def clear(self, message: str) -> None:
        """No attribution for this run (an encoder): empty bars, no head map, a sentence."""
        self.last = None
        self._ticks = []
        self.bars.setOpts(x=[], height=[], width=0.8, brushes=[])
        self.plot.getAxis("bottom").setTicks(None)
        self.heads.hide()
        self.caption.setText(message)

    def draw(self, run: Run, position: int, token_id: int, weights: DepthWeights | None) -> None:
        self.show(run, position, token_id, self.compute(run, position, token_id, weights, self.by_head.isChecked()))

    @staticmethod
    def compute(run: Run, position: int, token_id: int, weights: DepthWeights | None, by_head: bool) -> tuple:
        """The numbers (numpy only: safe off the GUI thread on a `Run.snapshot()`)."""
        att = direct_logit_attribution(run, position, token_id)
        per_head = head_attribution(run, weights, position, token_id, att.scale) if by_head and weights is not None \
            else None  # [L, H+1]
        return att, per_head

    def show(self, run: Run, position: int, token_id: int, result: tuple) -> None:
        att, per_head = result
        self.last = att
        values = att.contributions
        x = np.arange(values.size)
        brushes = [pg.mkBrush(POS_COLOUR if v >= 0 else NEG_COLOUR) for v in values]
        self.bars.setOpts(x=x, height=values, width=0.8, brushes=brushes)
        self._ticks = list(att.labels)  # embed, attn 0, mlp 0, attn 1, ...
        self.plot.setXRange(-1, values.size, padding=0)
        self._thin_ticks()
        self.plot.enableAutoRange(axis="y")
        offset = f" + LayerNorm bias term {att.offset:+.3f}" if att.offset else ""
        self.caption.setText(
            f"Target <b>{_esc(readable(piece_name(run, token_id)))}</b> at position {position}: real logit "
            f"<b>{att.logit:.3f}</b> = sum of the bars {att.contributions.sum():.3f}{offset} "
            f"(final norm scale frozen at {att.scale:.4f}; error {att.error:+.1e}). Red bars push the token up, "
            "blue bars push it down; each layer has two bars: attention, then MLP. A linearisation: a bar is a "
            "block's direct push with the norm frozen, not what removing the block would change.")
        if self.by_head.isChecked() and per_head is not None:
            data = per_head[:, :-1].T  # [H, L]
            self.heads.set_data(data, levels=_sym_levels(data), row_labels=[f"h{h}" for h in range(data.shape[0])],
                                col_labels=[str(i) for i in range(data.shape[1])])
            self.heads.readout.setText("Heads (rows) x layers (columns): each head's direct contribution "
                                       "(o_proj bias shown separately: "
                                       f"{per_head[:, -1].sum():+.3f} in all).")
            self.heads.show()
        else:
            self.heads.setVisible(self.by_head.isChecked())
            if self.by_head.isChecked():
                self.heads.readout.setText("The per-head split needs the model's output projections; "
                                           "no model is attached to this panel.")


class ShareView(QWidget):
    """Depth x depth: share of state l (rows) supplied by each earlier component (columns)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.split = QCheckBox("split attention / MLP")
        self.map = Heatmap("CET-D1")
        self.caption = _label()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        layout.addWidget(self.map, 1)
        layout.addWidget(self.split)

    def draw(self, run: Run, position: int) -> None:
        self.show(run, position, self.compute(run, position, self.split.isChecked()))

    @staticmethod
    def compute(run: Run, position: int, split: bool) -> tuple[np.ndarray, bool, bool]:
        return residual_share(run, position, split=split), split, is_additive(run, position)

    def show(self, run: Run, position: int, result: tuple[np.ndarray, bool, bool]) -> None:
        share, split, additive = result
        n_layers = run.info.n_layers
        rows = [depth_label(d, short=True) for d in range(n_layers + 1)]
        cols = ["embed"] + ([f"{k}{i}" for i in range(n_layers) for k in ("a", "m")] if split
                            else [str(i) for i in range(n_layers)])
        self.map.set_data(share, levels=_sym_levels(share), row_labels=rows, col_labels=cols)
        text = (f"Position {position}: row = the residual state after a layer; column = an earlier output. "
                "Cell = component · state / |state|²: the share of the state's length along that output (a "
                "geometric share; negative = points against the state). It is not which layers the prediction "
                "is built from: see Logit attribution for that. ")
        if additive:
            text += ("Rows sum to 1: each state is the plain sum of its components (a standard model sums with "
                     "weight 1; Attention Residuals would learn these weights).")
        else:
            text += ("<b>This model normalises after each block (post-norm, like BERT)</b>: a state is not the "
                     "sum of these outputs, so rows do not sum to 1 and the cells are only projections.")
        self.caption.setText(text)


class SimilarityView(QWidget):
    """Cosine similarity between depths (heatmap) and per-layer update ratios (lines)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.skip_first = QCheckBox("skip the first token")
        self.skip_first.setChecked(True)
        self.skip_massive = QCheckBox("skip positions with massive activations")
        self.skip_massive.setChecked(True)
        self.map = Heatmap("viridis")
        self.plot = _plot()
        self.plot.setLogMode(y=True)
        self.plot.addLegend(offset=(5, 5))
        plot_style.grid(self.plot, y=True, alpha=0.3)
        self.plot.setLabel("bottom", "layer")
        self.plot.setLabel("left", "|update| / |input|")
        self.curves = {name: self.plot.plot([], [], pen=pg.mkPen(c, width=2), name=name, symbol="o", symbolSize=4,
                                            **plot_style.symbol_style(c))
                       for name, c in (("attention", POS_COLOUR), ("MLP", NEG_COLOUR), ("whole layer", BLOCK_COLOUR))}
        plot_style.style(self.plot)  # again: the legend is new
        self.caption = _label()
        row = FlowLayout()  # wraps in a narrow dock instead of clipping
        row.addWidget(self.skip_first)
        row.addWidget(self.skip_massive)
        row.addStretch(1)
        pictures = QHBoxLayout()
        pictures.addWidget(self.map, 1)
        pictures.addWidget(self.plot, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        layout.addLayout(pictures, 1)
        layout.addLayout(row)

    def draw(self, run: Run) -> None:
        self.show(run, self.compute(run, self.skip_first.isChecked(), self.skip_massive.isChecked()))

    @staticmethod
    def compute(run: Run, skip_first: bool, skip_massive: bool) -> tuple:
        mask = position_mask(run, skip_first, skip_massive)
        return mask, layer_similarity(run, mask), update_ratios(run, mask)

    def show(self, run: Run, result: tuple) -> None:
        mask, sim, ratios = result
        labels = ["emb"] + [str(i) for i in range(run.info.n_layers)]
        lo = float(min(0.0, np.nanmin(sim)))
        self.map.set_data(sim, levels=(lo, 1.0), row_labels=labels, col_labels=labels)
        x = np.arange(run.info.n_layers)
        for name, values in (("attention", ratios.attn), ("MLP", ratios.mlp), ("whole layer", ratios.block)):
            self.curves[name].setData(x, values)
        self.caption.setText(
            f"Left: cosine similarity of the residual stream between two depths, averaged over "
            f"{int(mask.sum())} of {mask.size} positions. Right: how big each layer's update is relative to "
            "the residual it reads — the ratio hyper-connection designs try to keep stable.")


class DepthAttentionView(QWidget):
    """[sequence | depth] bars of one softmax for (layer, head, position)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.plot = _plot()
        self.plot.setLabel("left", "attention weight")
        self.seq = pg.BarGraphItem(x=[], height=[], width=0.8, brush=pg.mkBrush(NEG_COLOUR))
        self.depth = pg.BarGraphItem(x=[], height=[], width=0.8, brush=pg.mkBrush(DEPTH_COLOUR))
        self.real = pg.PlotDataItem([], [], pen=None, symbol="_", symbolSize=14,
                                    symbolPen=pg.mkPen(plot_style.ink(), width=2), symbolBrush=plot_style.brush(None),
                                    name="real attention (sequence only)")
        plot_style.follow(self, self._restyle)
        self.divider = pg.InfiniteLine(angle=90, pen=pg.mkPen((120, 120, 120), width=2, style=pg.QtCore.Qt.DashLine))
        for item in (self.seq, self.depth, self.real, self.divider):
            self.plot.addItem(item)
        self.banner = _label("<b>Counterfactual</b>: what this head would retrieve from depth if it could. "
                             "The model does not compute the depth part.")
        self.banner.setStyleSheet("background: #fff3cd; color: #5c4400; padding: 4px;")
        self.caption = _label()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.banner)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.caption)
        self.last = None

    def _restyle(self) -> None:
        self.real.setSymbolPen(pg.mkPen(plot_style.ink(), width=2))

    def clear(self, message: str) -> None:
        self.last = None
        for item in (self.seq, self.depth):
            item.setOpts(x=[], height=[])
        self.real.setData([], [])
        self.caption.setText(message)

    def draw(self, run: Run, weights: DepthWeights | None, layer: int, head: int, position: int) -> None:
        if weights is None:
            self.clear("Depth attention needs this model's key projections: no model is attached to the panel.")
            return
        self.show(run, layer, head, position, self.compute(run, weights, layer, head, position))

    @staticmethod
    def compute(run: Run, weights: DepthWeights, layer: int, head: int, position: int):
        return depth_attention(run, weights, layer, head, position)

    def show(self, run: Run, layer: int, head: int, position: int, att) -> None:
        self.last = att
        n_seq = att.seq_scores.size
        n_depth = att.depth_scores.size
        self.seq.setOpts(x=np.arange(n_seq), height=att.weights[:n_seq], width=0.8)
        self.depth.setOpts(x=n_seq + 1 + np.arange(n_depth), height=att.weights[n_seq:], width=0.8)
        self.real.setData(np.arange(n_seq), att.real)
        self.divider.setValue(n_seq)
        ticks = [(i, readable_label(run.tokens[i].text, 6)) for i in range(n_seq)] if n_seq <= 32 else \
            [(i, str(i)) for i in range(0, n_seq, max(1, n_seq // 12))]
        ticks += [(n_seq + 1 + j, "emb" if j == 0 else f"d{j - 1}") for j in range(n_depth)
                  if n_depth <= 16 or j % max(1, n_depth // 8) == 0 or j == n_depth - 1]
        self.plot.getAxis("bottom").setTicks([ticks])
        self.plot.setXRange(-1, n_seq + n_depth + 1, padding=0)
        self.plot.enableAutoRange(axis="y")
        top = int(np.argmax(att.weights[n_seq:]))
        self.caption.setText(
            f"Layer {layer}, head {head}, position {position}: blue = sequence keys 0..{position} (black marks: the "
            f"head's real attention), pink = keys from this position's states after layers "
            f"embed..{depth_label(layer)} (the last is the state block {layer} reads), "
            f"with layer {layer}'s own key projection, in one softmax. Depth would take "
            f"<b>{att.depth_mass:.0%}</b> of the attention, most from "
            f"{depth_label(top)}.")


def _plot() -> pg.PlotWidget:
    plot = pg.PlotWidget()
    plot.setMenuEnabled(False)
    return plot_style.style(plot)


def readable(text: str) -> str:
    """Kept for depth.py's import (edited on other branches): the same core.labels.readable_label."""
    return readable_label(text, width=None)


def _esc(s: str) -> str:
    return html.escape(s, quote=False)
