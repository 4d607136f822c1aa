"""Interventions panel: the active interventions (on/off), re-running the prompt under them, and the
difference against the baseline run (next-token distribution, logit lens, attention)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from ...core import interventions as iv_mod
from ...core.analysis.align import kl, lens_logprobs, next_token_diff
from ...core.analysis.patching import patch_from_run_b
from ...core.events import RunRequest
from ...core.interventions import Intervention
from ...core.run import Run
from ..table_fill import fill_table
from ..widgets.background import Background
from ..widgets.flow import FlowLayout, labelled
from ..widgets.heatmap import Heatmap
from .base import Panel
from .depth_lens import active_readout
from .intervention_menu import InterventionRequest, bus

SCOPES = (("all", "at every position"), ("selected", "at the selected position"),
          ("last", "at the last prompt position"))
LENS_WINDOW = 8  # positions of the logit-lens difference map (ending at the selected one)


class InterventionsPanel(Panel):
    title = "Interventions"
    help_text = (
        "Knock out, scale or patch parts of the model and watch the prediction move. Right-click a head in the "
        "Attention panel (heatmap, overview grid, head table) or a layer in the Layer depth panel and pick "
        "'Ablate', 'Scale...' or 'Patch from run B...'. Active interventions are listed here; tick or untick them "
        "and the prompt re-runs with them (positions before the first changed one come from the KV cache). Every "
        "panel then shows the new run. Below: the difference against the baseline run (the last run without "
        "interventions): the next-token distribution before and after (KL divergence, top-1 change), the logit "
        "lens KL per layer and position, and the change in the selected head's attention. 'Run B' (for patching) "
        "is a run you pin here first, e.g. the same prompt with one word changed. Patching lines the two runs' "
        "tokens up (the Compare panel's A/B alignment) and copies B's value at the matching B position; positions "
        "with no match in B are left alone and the entry says how many. Mean ablation replaces the head's output "
        "with its mean over this prompt's positions (not over a dataset), so it is only a rough 'typical value'. "
        "Run in the prompt bar starts a fresh baseline without interventions; 'Apply' re-runs it with the ticked "
        "ones."
    )

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.baseline: Run | None = None
        self.run_b: Run | None = None
        self.background = Background(self)
        top = FlowLayout()  # wraps in a narrow dock instead of clipping
        self.scope = QComboBox()
        for key, text in SCOPES:
            self.scope.addItem(text, key)
        self.pin = QPushButton("Pin this run as B")
        self.apply_button = QPushButton("Re-run with these")
        self.remove = QPushButton("Remove")
        self.clear = QPushButton("Clear all")
        top.addWidget(labelled("New interventions act", self.scope))
        for w in (self.pin, self.apply_button, self.remove, self.clear):
            top.addWidget(w)
        top.addStretch(1)
        self.body.addLayout(top)
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.status = QLabel("No interventions: right-click a head or a layer in the Attention or Layer depth panel.")
        self.status.setWordWrap(True)
        self.body.addWidget(self.list)
        self.body.addWidget(self.status)
        self.summary = QLabel(" ")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.RichText)
        self.body.addWidget(self.summary)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["token", "baseline", "now", "change"])
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.lens = Heatmap("inferno")
        self.lens.plot.setTitle("logit-lens KL(baseline ‖ now)")  # short: titles do not wrap
        self.lens.plot.setLabel("left", "depth")
        self.lens.plot.setLabel("bottom", "position")
        self.attn = Heatmap("CET-D1")
        self.attn.plot.setTitle("head attention, now − baseline")
        split = QSplitter()
        for w in (self.table, self.lens, self.attn):
            split.addWidget(w)
        split.setSizes([260, 420, 420])
        holder = QWidget()
        QVBoxLayout(holder).addWidget(split)
        self.body.addWidget(holder, 1)

        bus().requested.connect(self.handle_request)
        self.pin.clicked.connect(self.pin_run_b)
        self.apply_button.clicked.connect(self.apply)
        self.remove.clicked.connect(self._remove_selected)
        self.clear.clicked.connect(self.clear_all)
        self.list.itemChanged.connect(lambda _item: self.apply())
        self.lens.hovered.connect(self._lens_hover)

    # --- the list ---------------------------------------------------------------------------------
    @property
    def interventions(self) -> tuple[Intervention, ...]:
        """The ticked interventions, in list order."""
        out = []
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.checkState() == Qt.Checked:
                out.append(item.data(Qt.UserRole))
        return tuple(out)

    def add(self, iv: Intervention, apply: bool = True) -> None:
        if any(self.list.item(i).data(Qt.UserRole) == iv for i in range(self.list.count())):
            return
        item = QListWidgetItem(iv.describe())
        item.setData(Qt.UserRole, iv)
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        self.list.blockSignals(True)
        item.setCheckState(Qt.Checked)
        self.list.addItem(item)
        self.list.blockSignals(False)
        if apply:
            self.apply()

    def clear_all(self) -> None:
        self.list.clear()
        self.apply()

    def _remove_selected(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self.apply()

    def positions(self) -> tuple[int, ...] | None:
        scope = self.scope.currentData()
        run = self.baseline or self.run
        if scope == "all" or run is None:
            return None
        if scope == "selected":
            return (min(self.selection.position, run.n_tokens - 1),)
        return (run.n_prompt - 1,)

    def pin_run_b(self) -> None:
        if self.run is not None:
            self.run_b = self.run
            self.status.setText(f"Run B pinned: {self.run.n_tokens} tokens of “{self.run.request.prompt[:60]}”.")

    def handle_request(self, req: InterventionRequest) -> None:
        """A menu choice from any panel: build the intervention (asking for a factor where needed)."""
        try:
            iv = self.build(req)
        except Exception as exc:  # a sentence for the user (no run B, bad layer...)
            self.status.setText(str(exc))
            return
        if iv is not None:
            self.add(iv)

    def build(self, req: InterventionRequest, scale: float | None = None) -> Intervention | None:
        positions = self.positions()
        if req.action in ("zero_head", "zero_attn", "zero_mlp"):
            return Intervention(req.action, req.layer, req.head, positions)
        if req.action == "scale_head":
            if scale is None:
                scale, ok = QInputDialog.getDouble(self, "Scale head", f"Multiply head L{req.layer}.H{req.head}'s "
                                                   "output by:", 2.0, -100.0, 100.0, 2)
                if not ok:
                    return None
            return Intervention("scale_head", req.layer, req.head, positions, scale=float(scale))
        source = self.baseline or self.run
        if req.action == "mean_head":
            if source is None:
                raise ValueError("Run a prompt first: mean ablation uses the head's mean output over the run.")
            return iv_mod.mean_ablation(source, req.layer, req.head, positions)
        if self.run_b is None:
            raise ValueError("Pin a run B first: run the other prompt, press 'Pin this run as B', then come back.")
        if source is None:
            raise ValueError("Run a prompt first: patching replaces values of this run with run B's.")
        # B's values at the B positions the token alignment pairs with this run's (a different length is fine)
        return patch_from_run_b(source, self.run_b, req.layer, req.head if req.action == "patch_head" else None,
                                positions)

    def request(self) -> RunRequest | None:
        base = self.baseline or self.run
        if base is None:
            return None
        return replace(base.request, interventions=self.interventions)

    def apply(self) -> None:
        """Re-run the baseline's request under the ticked interventions (through the main window)."""
        request = self.request()
        if request is None:
            return
        if self.run is not None and self.run.request == request:
            return
        self.rerun.emit(request)  # the main window runs it (Panel.rerun -> services.rerun)

    # --- Panel contract -----------------------------------------------------------------------------
    # --- recorded whatever is on screen (a hidden panel skips drawing, never the baseline) -----------------
    def set_run(self, run: Run | None, postpone: bool = False) -> None:
        self._note(run)
        super().set_run(run, postpone)
        if run is not None and run.request.interventions:
            self.come_forward()  # an ablation's difference is what the user asked to see

    def on_step(self, run: Run, event) -> None:
        self._note(run)
        super().on_step(run, event)

    def on_steps(self, run: Run, events) -> None:
        self._note(run)
        super().on_steps(run, events)

    def _note(self, run: Run | None) -> None:
        if run is not None and not run.request.interventions:
            self.baseline = run

    def come_forward(self) -> None:
        """Raise this panel's dock (a background tab comes to the front)."""
        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        if dock is not None:
            dock.show()
            dock.raise_()

    def draw_run(self, run: Run | None) -> None:
        for name in ("baseline", "run_b"):  # runs of another model (or of a cleared screen) are no baseline
            other = getattr(self, name)
            if other is not None and (run is None or other.info.name != run.info.name):
                setattr(self, name, None)
        if run is None:
            self.table.setRowCount(0)
            self.lens.image.clear()
            self.attn.image.clear()
            self.summary.setText(" ")
            return
        ivs = run.request.interventions
        self.status.setText("Baseline run (no interventions)." if not ivs else
                            f"This run: {len(ivs)} intervention(s); {run.steps[0].cached_prefix} positions "
                            "reused from the cache." if run.steps else "")
        self.draw_diff()

    def draw_step(self, run: Run, event) -> None:
        if event.finish_reason:
            self.draw_diff()

    def draw_selection(self, field: str) -> None:
        if field in ("position", "layer", "head"):
            self.draw_diff()

    def comparable(self) -> bool:
        b, r = self.baseline, self.run
        return (b is not None and r is not None and b is not r and r.request.interventions != ()
                and b.info == r.info and b.n_prompt == r.n_prompt
                and np.array_equal(b.token_ids[: b.n_prompt], r.token_ids[: r.n_prompt]))

    def draw_diff(self) -> None:
        if not self.comparable():
            self.summary.setText("<i>Difference vs baseline appears when this run has interventions.</i>")
            self.table.setRowCount(0)
            return
        base, run = self.baseline, self.run
        n = min(base.n_tokens, run.n_tokens)
        pos = min(self.selection.position, n - 1)
        layer, head = self.selection.layer, self.selection.head

        readout, label = active_readout(run.info)  # the depth panel's lens (logit, tuned, Jacobian)
        self.lens.plot.setTitle(f"{label} KL(baseline || now) by layer and position")

        def job():
            d = next_token_diff(base, pos, run, pos)
            lo = max(0, pos - LENS_WINDOW + 1)
            lens = np.stack([[kl(x, y) for x, y in zip(lens_logprobs(base, p, readout), lens_logprobs(run, p, readout),
                                                         strict=True)]
                             for p in range(lo, pos + 1)], axis=1)  # [L+1, W]
            attn = run.attention(layer, head)[:n, :n] - base.attention(layer, head)[:n, :n]  # [n, n]
            return d, lo, lens.astype(np.float32), attn

        def show(result) -> None:
            # only for the runs still on screen (a streamed run stays the same object as it grows): a new run or a
            # replayed step (perhaps shorter than pos) is drawn with a diff of its own, if it has one
            if base is self.baseline and run is self.run:
                self._show_diff(pos, *result)

        self.background.submit("diff", job, show)

    def _show_diff(self, pos: int, d: dict, lo: int, lens: np.ndarray, attn: np.ndarray) -> None:
        vocab = self.run.vocab or self.baseline.vocab or []

        def name(i: int) -> str:
            return repr(vocab[i]) if i < len(vocab) else str(i)
        changed = d["top1_a"] != d["top1_b"]
        self.summary.setText(
            f"Next token after position {pos}: KL(baseline ‖ now) = <b>{d['kl_ab']:.4f}</b> nats · top-1 "
            f"{name(d['top1_a'])} → {name(d['top1_b'])} "
            + ("<b style='color:#c0392b'>(changed)</b>" if changed else "(unchanged)"))
        fill_table(self.table, [[name(tid), f"{pa:.3f}", f"{pb:.3f}", f"{pb - pa:+.3f}"]
                                for tid, pa, pb in zip(d["ids"], d["p_a"], d["p_b"], strict=True)])
        peak = float(max(lens.max(), 1e-6))
        labels = [self.run.tokens[p].text for p in range(lo, lo + lens.shape[1])]
        self.lens.set_data(lens, (0.0, peak), row_labels=["emb"] + [str(i) for i in range(lens.shape[0] - 1)],
                           col_labels=labels)
        self._lens_lo = lo
        span = float(max(np.abs(attn).max(), 1e-6))
        self.attn.set_data(attn, (-span, span))

    def _lens_hover(self, row: int, col: int) -> None:
        data = self.lens.data
        if data is not None and 0 <= row < data.shape[0] and 0 <= col < data.shape[1]:
            self.lens.readout.setText(f"depth {row}, position {self._lens_lo + col}: KL = {data[row, col]:.4f}")

    _lens_lo = 0
