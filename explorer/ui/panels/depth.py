"""Layer-depth panel: depth as addressable memory.

Top: the logit lens (depth x position; the visible window first, the rest progressively off the GUI
thread, top-k only, cached per run; a streamed token adds one column synchronously). Below, in tabs:
direct logit attribution, residual share, similarity and update ratios, counterfactual depth attention.

Once per model, an engine job (core.analysis.jobs.ReadDepthWeights, through `services.submit_job`)
extracts the few layer weights (key and output projections, input norms, RoPE frequencies) the
depth-attention view and the per-head attribution need; until they arrive (or outside the app) those
two views say so and everything else works from the Run alone.
"""

from __future__ import annotations

import logging

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QFontMetricsF
from PySide6.QtWidgets import QComboBox, QSplitter, QTabWidget

from ...core.analysis.depth import LENS_TOP_K, LensTable, compute_lens, lens_copy, lens_slices
from ...core.analysis.depth_attention import DepthWeights
from ...core.analysis.jobs import ReadDepthWeights
from ...core.naming import depth_label
from ...core.run import Run
from ..widgets.background import Background
from ..widgets.flow import FlowLayout, labelled
from ..widgets.heatmap import Heatmap, readable_label
from ..widgets.status_line import StatusLine
from . import intervention_menu as im
from .base import Panel
from .depth_lens import LensSelector
from .depth_views import AttributionView, DepthAttentionView, ShareView, SimilarityView, _esc, readable
from .lab_routing import LearnedVsPostHoc
from .token_colors import piece_name

log = logging.getLogger(__name__)
WINDOW = 64  # positions computed first / per background block
MAX_LABEL_CELLS = 1000  # text labels in the lens only when at most this many cells are visible
MIN_LABEL_CELL = (40, 14)  # ... and only when a cell is at least this many screen pixels wide and tall
MODES = ("top token: probability", "actual next token: probability (rank in labels)",
         "clicked cell's token: probability")


class DepthPanel(Panel):
    title = "Layer depth"
    help_text = (
        "How the prediction forms through the layers. The grid (logit lens) decodes the residual stream after "
        "every layer as if it were the last: each cell is the token the model would predict there and its "
        "probability. The tabs below: 'Logit attribution' splits the real logit of the target token into what "
        "the embedding and each attention and MLP block add directly. It is a linearisation with the final "
        "norm's scale frozen at its real value: exact as a sum, but a bar is not the effect of removing that "
        "block (removing it changes the later layers and the norm; use Interventions for that). This is the "
        "view for 'which layers the prediction is built from'. 'Residual share' is geometry: how much of each "
        "layer's state points along each earlier output (a projection, negative when it points against the "
        "state), not how much the prediction depends on it. Then how similar the layers' states are and how "
        "large each update is, and, as a counterfactual, what a head would attend to if it could also read "
        "this token's earlier-layer states (as in Mixture-of-Depths Attention). Encoders have no lens or "
        "attribution; share, similarity and updates still apply. Click a cell to select its position and layer."
    )

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self._weights: DepthWeights | None = None
        self._weights_for = None  # the ModelInfo of the model the weights were read from
        self._weights_asked = None  # the ModelInfo a ReadDepthWeights job was submitted for
        self.bg = Background(self)
        self.table: LensTable | None = None
        self._generation = 0
        self.target_token: int | None = None  # the clicked token in "clicked" mode
        self._texts: list[pg.TextItem] = []

        self.mode = QComboBox()
        self.mode.addItems(MODES)
        self.status = StatusLine(" ", chars=60)  # the lens's progress, step by step
        row = FlowLayout()  # wraps in a narrow dock instead of clipping
        row.addWidget(labelled("Lens colour:", self.mode))
        row.addWidget(self.status, 1)
        self.body.addLayout(row)

        self.lens = Heatmap("viridis")
        self.lens.plot.setLabel("left", "depth")
        self.marker = pg.InfiniteLine(angle=90, pen=pg.mkPen((255, 80, 80), width=1.5))
        self.lens.plot.addItem(self.marker)
        self.lens_choice = LensSelector()  # logit / tuned / Jacobian readout and its KL-per-depth curves
        self.lens_choice.changed.connect(lambda: self.draw_run(self.run))
        self.tabs = QTabWidget()
        self.attribution, self.share = AttributionView(), ShareView()
        self.similarity, self.depth_attention = SimilarityView(), DepthAttentionView()
        self.tabs.addTab(self.attribution, "Logit attribution")
        self.tabs.addTab(self.share, "Residual share")
        self.tabs.addTab(self.similarity, "Similarity && updates")
        self.tabs.addTab(self.depth_attention, "Depth attention (counterfactual)")
        self.learned = LearnedVsPostHoc()  # a Depth lab model's real routing beside the post-hoc share
        self.tabs.addTab(self.learned, "Learned routing (lab model)")
        split = QSplitter(Qt.Vertical)
        top = QSplitter(Qt.Horizontal)
        top.addWidget(self.lens)
        top.addWidget(self.lens_choice)
        top.setSizes([720, 260])
        split.addWidget(top)
        split.addWidget(self.tabs)
        split.setSizes([480, 320])
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        self.body.addWidget(split, 1)

        self.mode.currentIndexChanged.connect(lambda _i: self._refresh_lens())
        self.lens.hovered.connect(self._on_hover)
        self.lens.clicked.connect(self._on_click)
        im.attach_layer_menu(self.lens.view, im.plot_locator(  # right-click a depth row: ablate / patch that layer
            self.lens.view, self.lens.plot,
            lambda _x, y: int(y) - 1 if self.run is not None and 1 <= int(y) <= self.run.info.n_layers else None))
        self.lens.plot.vb.sigRangeChanged.connect(lambda *_: self._update_texts())
        self.lens.plot.vb.sigResized.connect(lambda *_: self._update_texts())
        self.tabs.currentChanged.connect(lambda _i: self._refresh_view())
        self.attribution.by_head.toggled.connect(lambda _c: self._refresh_view())
        self.share.split.toggled.connect(lambda _c: self._refresh_view())
        self.similarity.skip_first.toggled.connect(lambda _c: self._refresh_view())
        self.similarity.skip_massive.toggled.connect(lambda _c: self._refresh_view())

    # --- Panel contract ----------------------------------------------------------------------------
    def draw_run(self, run: Run | None) -> None:
        self._generation += 1
        self.table = None
        self.lens_choice.set_model(None if run is None else run.info)
        if run is None or run.n_tokens == 0:
            self.lens.image.clear()
            self.attribution.clear(" ")
            self.status.setText(" ")
            return
        if run.unembed is None or run.norm is None:
            self.status.setText("This model has no language-model head (an encoder): no logit lens or logit "
                                "attribution here; residual share, similarity and update ratios below still apply.")
            self.lens.image.clear()
            self.lens.set_data(np.full((1, 1), np.nan, np.float32), levels=(0.0, 1.0), row_labels=[""],
                               col_labels=[""], auto_range=True)
            for item in self._texts:
                item.hide()
            # the previous run's bars and caption must not stay on screen
            self.attribution.clear("Logit attribution needs a language-model head; this model is an encoder.")
            self._refresh_view()
            return
        self.table = LensTable(run.info.n_layers + 1)
        self.table.grow(run.n_tokens)
        hi = run.n_tokens
        self._window = (max(0, hi - WINDOW), hi)
        self._refresh_lens(auto_range=True)
        self._submit_next()
        self._refresh_view()

    def draw_step(self, run: Run, event) -> None:
        self.draw_steps(run, [event])

    def draw_steps(self, run: Run, events) -> None:
        lo, hi = events[0].start, run.n_tokens
        if events[0].step == 0 or self.table is None or lo > self.table.n:
            self.draw_run(run)
            return
        self.table.grow(hi)  # the new positions are known now (missing until their column lands)
        slices = lens_slices(run, lo, hi)  # views: copied off the GUI thread (held positions never change)
        norm, unembed, table, gen = run.norm, run.unembed, self.table, self._generation
        readout = self.lens_choice.readout()

        def on_done(cols) -> None:  # one column (31 lm_head products) off the GUI thread, ahead of fill-in
            if gen != self._generation or self.table is not table:
                return
            table.merge(cols)
            follow = self.lens.plot.vb.viewRange()[0][1] >= lo - 0.5  # the view showed the end: keep following
            self._window = (max(0, hi - WINDOW), hi) if follow else self._window
            self._refresh_lens(auto_range=follow)
            if table.done.all():  # the streamed column completed the table: keep the count current
                self.status.setText(f"{self._lens_name()}: all {table.n} positions x {table.rows} depths.")

        def column():
            return compute_lens(*lens_copy(slices), norm, unembed, start=lo, readout=readout)

        self.bg.submit(f"column-{lo}", column, on_done,
                       lambda msg: self.status.setText(f"Logit lens failed: {msg}"), priority=1)
        # views of one position follow the selection (the window moves it to the new token when following);
        # only the whole-run similarity view changes as the run grows
        self._refresh_view({"run"})

    def draw_selection(self, field: str) -> None:
        if field == "position":
            self.marker.setValue(self.selection.position + 0.5)
        self._refresh_view({field})

    # --- logit lens ------------------------------------------------------------------------------
    def _submit_next(self) -> None:
        run, table, gen = self.run, self.table, self._generation
        if run is None or table is None:
            return
        around = int(np.mean(self.lens.plot.vb.viewRange()[0]))
        nxt = table.next_missing(around=min(max(around, 0), table.n - 1), block=WINDOW)
        if nxt is None:
            self.status.setText(f"{self._lens_name()}: all {table.n} positions x {table.rows} depths.")
            return
        lo, hi = nxt
        slices = lens_slices(run, lo, hi)  # views: copied off the GUI thread (held positions never change)
        norm, unembed, readout = run.norm, run.unembed, self.lens_choice.readout()
        done = int(table.done.sum())
        self.status.setText(f"{self._lens_name()}: computing positions {lo}-{hi - 1} ({done}/{table.n} done)...")

        def on_done(cols) -> None:
            if gen != self._generation or self.table is not table:
                return
            table.merge(cols)
            self._refresh_lens()
            self._submit_next()

        def block():
            return compute_lens(*lens_copy(slices), norm, unembed, start=lo, readout=readout)

        self.bg.submit("lens", block, on_done, lambda msg: self.status.setText(f"Logit lens failed: {msg}"))

    def _lens_name(self) -> str:
        label = self.lens_choice.label()
        return label[0].upper() + label[1:]

    def lens_values(self) -> tuple[np.ndarray, tuple[float, float]]:
        """[depths, N] what the grid colours in the current mode, and its levels."""
        t = self.table
        mode = self.mode.currentIndex()
        if mode == 0:
            return t.top_probs[:, :, 0], (0.0, 1.0)
        if mode == 1:
            return np.exp(t.target_logprob), (0.0, 1.0)
        if self.target_token is None:
            return np.full((t.rows, t.n), np.nan, np.float32), (0.0, 1.0)
        probs, _rank = t.token_prob(self.target_token)
        return probs, (0.0, 1.0)

    def _refresh_lens(self, auto_range: bool = False) -> None:
        run, t = self.run, self.table
        if run is None or t is None:
            return
        values, levels = self.lens_values()
        rows = [depth_label(d, short=True).replace(" ", "\u00a0") for d in range(run.info.n_layers + 1)]  # the axis
        # shows a token's spaces as "·", these are not tokens
        cols = [tok.text for tok in run.tokens[: t.n]]
        self.lens.set_data(values, levels=levels, row_labels=rows, col_labels=cols, auto_range=False)
        if auto_range:
            lo, hi = self._window
            self.lens.plot.setRange(xRange=(lo, hi), yRange=(0, t.rows), padding=0)
        self.marker.setValue(self.selection.position + 0.5)
        finished = self.run is not None and bool(self.run.finish_reason)  # streaming: coalesced redraws
        self.lens_choice.update_run_curve(t.mean_kl(), final=finished and bool(t.done.all()))
        self._update_texts()

    def cell_pixels(self) -> tuple[float, float]:
        """(width, height) of one lens cell on screen, in pixels, at the current view range and size."""
        vb = self.lens.plot.vb
        (x0, x1), (y0, y1) = vb.viewRange()
        return vb.width() / max(x1 - x0, 1e-9), vb.height() / max(y1 - y0, 1e-9)

    def _update_texts(self) -> None:
        """One text item per visible cell, only when cells are big enough on screen to hold a readable label
        and few are visible (else colour only)."""
        t, run = self.table, self.run
        for item in self._texts:
            item.hide()
        if t is None or run is None:
            return
        (x0, x1), (y0, y1) = self.lens.plot.vb.viewRange()
        c0, c1 = max(0, int(np.floor(x0))), min(t.n, int(np.ceil(x1)))
        r0, r1 = max(0, int(np.floor(y0))), min(t.rows, int(np.ceil(y1)))
        cell_w, cell_h = self.cell_pixels()
        if (c1 - c0) * (r1 - r0) > MAX_LABEL_CELLS or c1 <= c0 or cell_w < MIN_LABEL_CELL[0] \
                or cell_h < MIN_LABEL_CELL[1]:
            return
        font = QFont(self.font())
        font.setPixelSize(int(min(cell_h - 3, QFontMetricsF(self.font()).height())))
        metrics = QFontMetricsF(font)
        width = max(1, min(8, int((cell_w - 4) / max(1.0, metrics.averageCharWidth()))))
        mode = self.mode.currentIndex()
        values, _ = self.lens_values()
        k = 0
        for r in range(r0, r1):
            for c in range(c0, c1):
                if not t.done[c]:
                    continue
                if mode == 1:
                    rank = t.target_rank[r, c]
                    text = "" if rank < 0 else f"#{rank}" if rank < 1000 else f"#{rank // 1000}k"
                else:
                    text = piece_name(run, int(t.top_ids[r, c, 0]))
                if k == len(self._texts):
                    item = pg.TextItem(anchor=(0.5, 0.5))
                    item.textItem.document().setDocumentMargin(0)
                    self.lens.plot.addItem(item)
                    self._texts.append(item)
                item = self._texts[k]
                k += 1
                v = values[r, c]
                item.setFont(font)
                item.setColor((0, 0, 0) if np.isfinite(v) and v > 0.6 else (255, 255, 255))
                item.setText(readable_label(text, width))
                item.setPos(c + 0.5, r + 0.5)
                item.show()

    def _on_hover(self, row: int, col: int) -> None:
        t, run = self.table, self.run
        if t is None or run is None or col >= t.n:
            return
        where = depth_label(row)
        tok = _esc(readable(run.tokens[col].text))
        if not t.done[col]:
            self.lens.readout.setText(f"position {col} '{tok}', {where}: not computed yet")
            return
        top = ", ".join(f"<b>{_esc(readable(piece_name(run, int(i))))}</b> {p:.1%}"
                        for i, p in zip(t.top_ids[row, col, :5], t.top_probs[row, col, :5], strict=True))
        extra = ""
        if t.target_ids[col] >= 0:
            extra = (f" · actual next <b>{_esc(readable(piece_name(run, int(t.target_ids[col]))))}</b>: "
                     f"{np.exp(t.target_logprob[row, col]):.1%}, rank {t.target_rank[row, col]}")
        if self.mode.currentIndex() == 2 and self.target_token is not None:
            p, rank = t.token_prob(self.target_token)
            r = rank[row, col]
            extra += (f" · <b>{_esc(readable(piece_name(run, self.target_token)))}</b>: "
                      + (f"{p[row, col]:.1%}, rank {r}" if r < t.k else f"below the top {t.k}"))
        self.lens.readout.setText(f"position {col} '{tok}', {where}: top-5 {top}{extra}")

    def _on_click(self, row: int, col: int) -> None:
        t = self.table
        if t is not None and col < t.n and t.done[col]:
            self.target_token = int(t.top_ids[row, col, 0])
            if self.mode.currentIndex() == 2:
                self._refresh_lens()
        self.selection.set("layer", max(0, row - 1))
        self.selection.set("position", col)
        self._refresh_view()

    # --- lower views ---------------------------------------------------------------------------
    def attribution_target(self) -> int | None:
        """The token scored by the attribution: the clicked one (in that mode), else the actual next one, else (the
        newest position) the model's top prediction."""
        known = self._known_target()
        if known is not None or self.run is None:
            return known
        return int(np.argmax(self.run.next_token_logprobs(self.selection.position)))

    def _known_target(self) -> int | None:
        """The clicked token (in that mode) or the actual next one; None where only the prediction can say
        (an lm_head product: computed off the GUI thread)."""
        t, pos = self.table, self.selection.position
        if self.mode.currentIndex() == 2 and self.target_token is not None:
            return self.target_token
        if t is not None and pos < t.n and t.target_ids[pos] >= 0:
            return int(t.target_ids[pos])
        return None

    def weights(self) -> DepthWeights | None:
        """The run's model's weights, or None while they are being read (the view redraws when they arrive)."""
        name = self.run.info if self.run is not None else None
        if name is None or self._weights_for == name:
            return self._weights if name is not None else None
        if self._weights_asked != name:
            self._weights_asked = name
            self.services.submit_job(ReadDepthWeights(), self._weights_read, self._weights_failed,
                                     key=f"depth-weights-{id(self)}")
        return None

    def _weights_read(self, result: tuple[str, DepthWeights]) -> None:
        name, weights = result
        self._weights, self._weights_for = weights, name
        if self.run is not None and self.run.info == name:
            self._guard(self._refresh_view)  # a drawing error shows in the panel, like any other update

    def _weights_failed(self, message: str) -> None:
        log.info("depth weights not read: %s", message)

    def _refresh_view(self, changed: set[str] | None = None) -> None:
        """Redraw the visible lower view; with `changed`, only when it depends on what changed."""
        run = self.run
        if run is None or run.n_tokens == 0:
            return
        has_head = run.norm is not None and run.unembed is not None
        pos = min(self.selection.position, run.n_tokens - 1)
        layer = min(self.selection.layer, run.info.n_layers - 1)
        view = self.tabs.currentWidget()
        depends = {self.attribution: {"position"}, self.share: {"position"}, self.similarity: {"run"},
                   self.depth_attention: {"position", "layer", "head"}, self.learned: {"position"}}.get(view, set())
        if changed is not None and not (changed & depends):
            return
        # the numbers are computed off the GUI thread on a frozen snapshot of the run (the run grows meanwhile);
        # the newest result is drawn at the next frame (older ones, and any for a replaced run, are dropped)
        frozen = run.snapshot()
        if view is self.attribution:
            if not has_head:
                self.attribution.clear("Logit attribution needs a language-model head; this model is an encoder.")
                return
            known, weights, by_head = self._known_target(), self.weights(), self.attribution.by_head.isChecked()

            def attribution():
                target = known if known is not None else int(np.argmax(frozen.next_token_logprobs(pos)))
                return target, AttributionView.compute(frozen, pos, target, weights, by_head)

            self.offthread("view", attribution, lambda result: self.attribution.show(frozen, pos, *result))
        elif view is self.share:
            split = self.share.split.isChecked()
            self.offthread("view", lambda: ShareView.compute(frozen, pos, split),
                           lambda result: self.share.show(frozen, pos, result))
        elif view is self.similarity:
            skip_first, skip_massive = self.similarity.skip_first.isChecked(), self.similarity.skip_massive.isChecked()
            self.offthread("view", lambda: SimilarityView.compute(frozen, skip_first, skip_massive),
                           lambda result: self.similarity.show(frozen, result))
        elif view is self.depth_attention:
            head = min(self.selection.head, run.info.n_heads - 1)
            weights = self.weights()
            if weights is None:
                self.depth_attention.draw(frozen, None, layer, head, pos)  # says what it waits for
                return

            def depth_attention():
                try:
                    return DepthAttentionView.compute(frozen, weights, layer, head, pos)
                except (ValueError, KeyError, AttributeError, NotImplementedError) as exc:  # e.g. no projections
                    return f"Depth attention is not available for this model: {exc}"

            def show(result) -> None:
                if isinstance(result, str):
                    self.depth_attention.clear(result)
                else:
                    self.depth_attention.show(frozen, layer, head, pos, result)

            self.offthread("view", depth_attention, show)
        elif view is self.learned:
            self.learned.draw(run, pos)



__all__ = ["LENS_TOP_K", "DepthPanel"]
