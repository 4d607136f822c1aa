"""What-if calculator of the KV cache panel: pick a catalogue model (models/kv_configs.toml) or type numbers,
choose context length, batch size and number format; see the bytes, the formula, MHA/GQA/MQA, and a curve of
bytes over context length (one PlotDataItem per compared configuration, created once, updated with setData)."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...core.analysis import kv
from ...core.models import ModelInfo
from .. import plot_style
from ..theme import OKABE_ITO, SERIES
from ..widgets.flow import FlowLayout

GIB = float(1 << 30)
PALETTE = SERIES[:1] + SERIES[2:]  # Okabe-Ito without purple: purple is the selected model
CUSTOM = "Custom (type the numbers)"


class WhatIfCalculator(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.entries: list[kv.KVConfig] = kv.catalogue()
        self.loaded: kv.KVConfig | None = None
        layout = QHBoxLayout(self)
        left = QVBoxLayout()
        form = QFormLayout()
        self.model = QComboBox()
        self.model.currentIndexChanged.connect(self._pick)
        form.addRow("Model", self.model)
        self.spins: dict[str, QSpinBox] = {}
        for key, label, lo, hi in (("layers", "Layers", 1, 1000), ("query_heads", "Query heads", 1, 1024),
                                   ("kv_heads", "KV heads", 1, 1024), ("head_dim", "Head dim", 1, 4096),
                                   ("context", "Context (tokens)", 1, 10_000_000),
                                   ("batch", "Batch (sequences)", 1, 4096)):
            spin = QSpinBox()
            spin.setRange(lo, hi)
            spin.setGroupSeparatorShown(True)
            spin.valueChanged.connect(self._edited)
            form.addRow(label, spin)
            self.spins[key] = spin
        self.spins["batch"].setValue(1)
        self.dtype = QComboBox()
        self.dtype.addItems(["fp32", "bf16", "fp8", "int4"])
        self.dtype.setCurrentText("bf16")
        self.dtype.currentIndexChanged.connect(lambda _i: self._update())
        form.addRow("Number format", self.dtype)
        left.addLayout(form)
        big = QFont()
        big.setPointSizeF(big.pointSizeF() * 2.0)
        big.setBold(True)
        self.result = QLabel("\u2014")
        self.result.setFont(big)
        self.result.setAlignment(Qt.AlignCenter)
        left.addWidget(self.result)
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextSelectableByMouse)
        left.addWidget(self.detail)
        compare = QVBoxLayout()  # under the plot, not under the form: the page must fit a 720-line presenter screen
        compare.addWidget(QLabel("Compare over context length:"))
        grid = FlowLayout()  # wraps beside the plot
        self.compare: dict[str, QCheckBox] = {}
        for cfg in self.entries:
            box = QCheckBox(cfg.label or cfg.name)
            box.setToolTip(f"{cfg.layers} layers \u00d7 {cfg.kv_heads} KV heads \u00d7 {cfg.head_dim}; "
                           f"{cfg.query_heads} query heads; context {cfg.context:,}\nsource: {cfg.source}")
            box.setChecked(cfg.name in ("llama-3-8b", "gpt2-small"))
            box.toggled.connect(lambda _on: self._update())
            grid.addWidget(box)
            self.compare[cfg.name] = box
        compare.addLayout(grid)
        left.addStretch(1)
        layout.addLayout(left, 2)

        self.plot = pg.PlotWidget()
        self.plot.setProperty("lmx_keep_without_run", True)  # a calculator: meaningful before any run
        self.plot.setMenuEnabled(False)
        plot_style.grid(self.plot, x=True, y=True, alpha=0.25)
        self.plot.setLogMode(x=True, y=True)
        self.plot.setLabel("bottom", "context length (tokens, log scale)")
        self.plot.setLabel("left", "KV cache (GiB, log scale)")
        self.plot.addLegend(offset=(10, 10), labelTextSize="8pt")
        dashes = {"MHA": Qt.DashLine, "MQA": Qt.DotLine}
        self.variant_items = {name: self.plot.plot(pen=pg.mkPen(plot_style.ink(), width=1.5, style=style),
                                                  name=name)
                              for name, style in dashes.items()}
        self.current_item = self.plot.plot(pen=pg.mkPen(OKABE_ITO["purple"], width=4), name="selected")
        self.compare_items = {cfg.name: self.plot.plot(pen=pg.mkPen(PALETTE[i % len(PALETTE)], width=2),
                                                       name=cfg.label or cfg.name)
                              for i, cfg in enumerate(self.entries)}
        plot_style.style(self.plot)
        plot_style.follow(self, self._restyle)
        right = QVBoxLayout()
        right.addWidget(self.plot, 1)
        right.addLayout(compare)
        layout.addLayout(right, 3)
        self._fill_models()

    def _restyle(self) -> None:
        for name, item in self.variant_items.items():
            item.setPen(pg.mkPen(plot_style.ink(), width=1.5, style=Qt.DashLine if name == "MHA" else Qt.DotLine))

    # --- model choice -------------------------------------------------------------------------------------
    def _fill_models(self) -> None:
        self.model.blockSignals(True)
        self.model.clear()
        if self.loaded is not None:
            self.model.addItem(f"This model: {self.loaded.name}", self.loaded)
        for cfg in self.entries:
            self.model.addItem(cfg.label or cfg.name, cfg)
        self.model.addItem(CUSTOM, None)
        self.model.blockSignals(False)
        self.model.setCurrentIndex(0)
        self._pick(0)

    def set_model(self, info: ModelInfo) -> None:
        """The loaded model becomes the first choice (and the selected one, when it changes)."""
        cfg = kv.config_from_info(info)
        if self.loaded == cfg:
            return
        self.loaded = cfg
        self._fill_models()

    def select(self, name: str) -> None:
        for i in range(self.model.count()):
            cfg = self.model.itemData(i)
            if cfg is not None and cfg.name == name:
                self.model.setCurrentIndex(i)
                return
        raise KeyError(name)

    def _pick(self, index: int) -> None:
        cfg = self.model.itemData(index)
        if cfg is None:  # custom: keep the numbers as they are
            self._update()
            return
        self._setting = True
        for key in ("layers", "query_heads", "kv_heads", "head_dim", "context"):
            self.spins[key].setValue(getattr(cfg, key))
        self._setting = False
        self._update()

    _setting = False

    def _edited(self, _value: int) -> None:
        if self._setting:
            return
        cfg = self.model.currentData()
        if cfg is not None and any(self.spins[k].value() != getattr(cfg, k)
                                   for k in ("layers", "query_heads", "kv_heads", "head_dim")):
            self.model.blockSignals(True)
            self.model.setCurrentIndex(self.model.count() - 1)  # typed numbers: now a custom config
            self.model.blockSignals(False)
        self._update()

    # --- results ------------------------------------------------------------------------------------------
    def config(self) -> kv.KVConfig:
        v = {k: s.value() for k, s in self.spins.items()}
        base = self.model.currentData()
        name = base.name if base is not None else "custom"
        return kv.KVConfig(name=name, layers=v["layers"], query_heads=v["query_heads"],
                           kv_heads=min(v["kv_heads"], v["query_heads"]), head_dim=v["head_dim"],
                           context=v["context"], sliding_window=getattr(base, "sliding_window", None))

    def total_bytes(self) -> float:
        return float(self.config().bytes(self.spins["context"].value(), self.dtype.currentText(),
                                         self.spins["batch"].value()))

    def _update(self) -> None:
        if self._setting or not hasattr(self, "current_item"):
            return
        cfg, dtype, batch = self.config(), self.dtype.currentText(), self.spins["batch"].value()
        f = kv.formula(cfg, cfg.context, kv.DTYPE_BYTES[dtype], batch)
        self.result.setText(kv.format_bytes(f.total))
        batch_text = f" \u00d7 batch {batch}" if batch > 1 else ""
        self.detail.setText(f"{f.text().split(' = ')[0]}{batch_text} = {kv.format_bytes(f.total)}\n"
                            f"per token: {kv.format_bytes(cfg.bytes_per_token(dtype, batch))}\n{f.savings_text()}"
                            + (f"\n{f.window_text()}" if f.window_text() else ""))
        top = max([cfg.context] + [c.context for c in self.entries if self.compare[c.name].isChecked()])
        grid = kv.context_grid(top, 96)
        mine = grid[grid <= cfg.context]
        self.current_item.setData(mine, cfg.bytes(mine, dtype, batch) / GIB)
        self.current_item.opts["name"] = f"selected ({cfg.variant})"
        for name, item in self.variant_items.items():
            variant = kv.variants(cfg)[name]
            item.setData(mine, variant.bytes(mine, dtype, batch) / GIB)
            item.setVisible(variant.kv_heads != cfg.kv_heads)
        for c in self.entries:
            item = self.compare_items[c.name]
            on = self.compare[c.name].isChecked()
            xs = grid[grid <= c.context]
            item.setData(xs, c.bytes(xs, dtype, batch) / GIB)
            item.setVisible(on)
        self.plot.enableAutoRange()

