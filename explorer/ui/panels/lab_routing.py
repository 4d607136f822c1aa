"""The learned depth routing of a Depth lab model (explorer.lab.routing arrays), for one token or the mean
over tokens, with the measured loss change when each source is switched off beside each weight
(routing weight is not causal importance). Used by the Depth lab panel and, next to the post-hoc
residual share, by the Layer depth panel for lab models."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSplitter, QVBoxLayout, QWidget

from ...core.run import Run
from ..widgets.heatmap import Heatmap
from .depth_views import ShareView


def source_labels(n_layers: int, routing: dict) -> list[str]:
    names = ["emb"] + [f"{k}{i}" for i in range(n_layers) for k in ("a", "m")]
    if str(routing.get("arch")) == "attnres-block":  # sources are [emb, completed blocks..., partial sum]
        names = ["emb"] + [f"blk{i + 1}" for i in range(2 * n_layers)]
    return names


def reader_labels(n_layers: int) -> list[str]:
    return [f"{k}{i}" for i in range(n_layers) for k in ("a", "m")] + ["out"]


def read_matrix(routing: dict, position: int | None) -> tuple[str, np.ndarray] | None:
    """[readers, sources] weights at `position` (None: mean over tokens) and the matrix's name."""
    for key, name in (("attnres", "AttnRes weight"), ("mhc_read", "mHC read H_pre·ΠH_res·H_post")):
        if key in routing:
            a = routing[key]  # [readers, T, sources]
            if position is not None:
                return name, a[:, min(position, a.shape[1] - 1)]
            with np.errstate(all="ignore"):
                finite = np.isfinite(a).any(axis=1)
                return name, np.where(finite, np.nanmean(np.where(np.isfinite(a), a, 0), axis=1), np.nan)
    return None


def _levels(a: np.ndarray, symmetric: bool) -> tuple[float, float]:
    finite = a[np.isfinite(a)]
    m = float(np.abs(finite).max()) if finite.size else 1.0
    m = max(m, 1e-6)
    return (-m, m) if symmetric else (0.0, max(1.0, m) if m > 1 else 1.0)


class LearnedRoutingView(QWidget):
    """Weights (left) and loss change when switched off (right) on the same axes, plus MoDA/Engram/mHC extras."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.mean = QCheckBox("mean over tokens")
        self.caption = QLabel(" ")
        self.caption.setWordWrap(True)
        self.caption.setTextFormat(Qt.RichText)
        self.weights = Heatmap("viridis")
        self.importance = Heatmap("CET-D1")
        self.extra = Heatmap("viridis")
        self.slots = Heatmap("viridis")  # MoDA: which depth each layer reads
        row = QHBoxLayout()
        for widget in (self.weights, self.importance, self.extra, self.slots):
            row.addWidget(widget, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.caption)
        layout.addLayout(row, 1)
        layout.addWidget(self.mean)
        self.routing: dict | None = None
        self.ablation: dict | None = None
        self.n_layers = 0
        self.tokens: list[str] | None = None
        self.weights.hovered.connect(self._hover)
        self.importance.hovered.connect(self._hover)

    ablation_note = True  # say where the importance is measured (off in the Depth lab panel itself)

    def draw(self, routing: dict | None, n_layers: int, position: int, ablation: dict | None = None,
             token: str = "", where: str | None = None, tokens: list[str] | None = None) -> None:
        self.routing, self.ablation, self.n_layers, self.tokens = routing, ablation, n_layers, tokens
        for h in (self.weights, self.importance, self.extra, self.slots):
            h.image.clear()
        self.slots.setVisible(bool(routing) and "moda_slots" in routing)
        self.importance.setVisible(bool(ablation))
        self.extra.setVisible(bool(routing) and any(k in routing for k in ("moda_depth", "engram_gate", "mhc_h_res")))
        self.weights.setVisible(bool(routing) and read_matrix(routing, None) is not None)
        if not routing:
            self.caption.setText("No learned routing: this is not a Depth lab model (its residual is a fixed sum).")
            return
        arch = str(routing.get("arch"))
        pos = None if self.mean.isChecked() else position
        where = where or ("mean over tokens" if pos is None else f"token {position} '{token}'")
        readers, sources = reader_labels(n_layers), source_labels(n_layers, routing)
        parts = [f"<b>{arch}</b> · {where}."]
        if not ablation and self.ablation_note:
            parts.append("(The Depth lab panel measures each source's loss change when switched off.)")
        matrix = read_matrix(routing, pos)
        if matrix is not None:
            name, w = matrix
            self.weights.set_data(w, levels=_levels(w, symmetric=bool(np.nanmin(w) < 0) if np.isfinite(w).any()
                                                    else False), row_labels=readers, col_labels=sources)
            self.weights.plot.setTitle(name, size="9pt")
            parts.append("Rows: the sublayer reading (a = attention, m = MLP, out = the output); columns: the "
                         "source it reads (emb = embedding).")
        self._draw_importance(readers, sources)
        parts += self._draw_extra(routing, pos, n_layers)
        self.caption.setText(" ".join(parts))

    def draw_run(self, run: Run, position: int) -> None:
        token = run.tokens[position].text if 0 <= position < len(run.tokens) else ""
        self.draw(run.routing, run.info.n_layers, position, None, token)

    def _draw_importance(self, readers, sources) -> None:
        abl = self.ablation
        if not abl:
            return
        if "ablation_pairs" in abl:
            d = abl["ablation_pairs"]  # [readers, sources]
            self.importance.set_data(d, levels=_levels(d, True), row_labels=readers, col_labels=sources)
            self.importance.plot.setTitle("Δ bits/byte, source switched off", size="9pt")
        else:
            d = abl["ablation_sources"][None, :]  # [1, sources]
            self.importance.set_data(d, levels=_levels(d, True), row_labels=["all readers"],
                                     col_labels=source_labels(self.n_layers, {}))
            self.importance.plot.setTitle("Δ bits/byte, output zeroed", size="9pt")

    def _draw_extra(self, routing, pos, n_layers) -> list[str]:
        abl = self.ablation or {}
        if "moda_depth" in routing:
            d = routing["moda_depth"]  # [layers, heads, T]
            m = d.mean(-1) if pos is None else d[:, :, min(pos, d.shape[-1] - 1)]
            heads = [f"h{i}" for i in range(m.shape[1])]
            self.extra.set_data(m, levels=(0.0, 1.0), row_labels=[f"layer {i}" for i in range(n_layers)],
                                col_labels=heads)
            self.extra.plot.setTitle("MoDA: mass on depth keys", size="9pt")
            if "moda_slots" in routing:
                sl = routing["moda_slots"]  # [layers, heads, T, S]
                with np.errstate(all="ignore"):
                    per = np.nanmean(sl, axis=2) if pos is None else sl[:, :, min(pos, sl.shape[2] - 1)]
                    per = per.mean(1)  # [layers, S] mean over heads
                self.slots.set_data(per, levels=(0.0, max(1e-6, float(np.nanmax(per))) if np.isfinite(per).any()
                                                 else 1.0), row_labels=[f"layer {i}" for i in range(n_layers)],
                                    col_labels=[f"{k}{i}" for i in range(n_layers - 1) for k in ("a", "m")])
                self.slots.plot.setTitle("which depth it reads", size="9pt")
            text = [f"MoDA: layer {i} heads put {m[i].mean():.0%} of their attention on depth keys"
                    + (f" (masking them: {abl['ablation_moda'][i]:+.3f} bits/byte)" if "ablation_moda" in abl else "")
                    for i in range(1, n_layers)]
            return ["; ".join(text) + "."]
        if "engram_gate" in routing:
            g = routing["engram_gate"]  # [E, T]
            self.extra.set_data(g, levels=(0.0, 1.0), row_labels=[f"layer {i}" for i in routing["engram_layers"]])
            self.extra.plot.setTitle("Engram gate per token", size="9pt")
            rows = routing["engram_rows"]  # [E, T, tables]
            p = min(pos or 0, g.shape[1] - 1)
            hit = ", ".join(str(int(r)) for r in rows[0, p])
            if self.tokens:
                grams = ["'" + "".join(self.tokens[max(0, p - n + 1): p + 1]) + "'" for n in (2, 3)]
                hit = f"{' and '.join(grams)} -> rows {hit}"
            off = ("; gate set to 0: " + ", ".join(f"{v:+.3f}" for v in abl["ablation_engram"]) + " bits/byte"
                   if "ablation_engram" in abl else "")
            return [f"Engram gate mean {g.mean():.2f}, at this token {g[0, p]:.2f}; table rows hit by its 2- and "
                    f"3-grams: {hit}{off}."]
        if "mhc_h_res" in routing:
            res = routing["mhc_h_res"]  # [K, n, n]
            k, n, _ = res.shape
            self.extra.set_data(res.transpose(1, 0, 2).reshape(n, k * n), levels=(0.0, 1.0))
            self.extra.plot.setTitle("mHC H_res per sublayer", size="9pt")
            err = float(np.max(routing["mhc_ds_error"]))
            return [f"mHC: {n} streams; H_res doubly-stochastic error at most {err:.1e}; "
                    f"H_pre (mean) {np.array2string(routing['mhc_h_pre'].mean(0), precision=2)}; "
                    f"readout over streams {np.array2string(routing['mhc_readout'], precision=2)}."]
        return []

    def _hover(self, row: int, col: int) -> None:
        if not self.routing:
            return
        readers, sources = reader_labels(self.n_layers), source_labels(self.n_layers, self.routing)
        if not (0 <= row < len(readers) and 0 <= col < len(sources)):
            return
        matrix = read_matrix(self.routing, None if self.mean.isChecked() else 0)
        text = f"{readers[row]} reads {sources[col]}"
        if self.weights.data is not None and row < self.weights.data.shape[0]:
            text += f": weight {self.weights.data[row, col]:.3f}"
        if self.ablation and "ablation_pairs" in self.ablation:
            text += f"; switched off: {self.ablation['ablation_pairs'][row, col]:+.3f} bits/byte"
        elif matrix is not None and self.ablation:
            text += f"; zeroing {sources[col]} everywhere: {self.ablation['ablation_sources'][col]:+.3f} bits/byte"
        self.weights.readout.setText(text)


class LearnedVsPostHoc(QSplitter):
    """Layer depth panel tab: a lab model's learned routing next to the post-hoc residual share."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(Qt.Horizontal, parent)
        self.learned = LearnedRoutingView()
        self.share = ShareView()
        self.addWidget(self.learned)
        self.addWidget(self.share)
        self.setStretchFactor(0, 1)
        self.setStretchFactor(1, 1)
        self.setSizes([600, 600])  # equal halves: what it learned | what a post-hoc analysis would say
        self.learned.mean.toggled.connect(lambda _c: self.redraw())
        self.share.split.setChecked(True)  # sublayer columns, on the learned matrix's axes
        self.share.split.toggled.connect(lambda _c: self.redraw())
        self._last: tuple[Run, int] | None = None

    def draw(self, run: Run, position: int) -> None:
        self._last = (run, position)
        self.learned.draw_run(run, position)
        self.share.draw(run, position)

    def redraw(self) -> None:
        if self._last is not None:
            self.draw(*self._last)


def moda_depth_kv_text(run: Run, bytes_per_elem: float) -> str:
    """The KV cache panel's extra line for a MoDA model: its depth keys/values (MoDA eq. 4: every query
    also reads K_i, V_i of the earlier sublayers at its own position)."""
    if not run.routing or "moda_depth" not in run.routing:
        return ""
    info = run.info
    slots = 2 * (info.n_layers - 1)  # earlier attention + MLP sublayers read by the last layer
    n = run.n_prompt
    total = 2 * slots * info.n_kv_heads * info.head_dim * n * bytes_per_elem
    return (f"<br><b>MoDA depth keys/values</b>: 2 \u00d7 {slots} earlier sublayers \u00d7 {info.n_kv_heads} KV heads "
            f"\u00d7 {info.head_dim} \u00d7 {n} prompt tokens \u00d7 {bytes_per_elem:g} B = {total:,.0f} B during "
            "the prompt's forward pass. They are not kept in the cache: a token's depth keys are read only by its "
            "own queries, so generating adds no cached bytes for them.")
