"""Runtime: what a serving runtime adds around the model: several prompts as one padded batch, throughput and
latency per batch size measured on this machine, and the batch's KV cache laid out in pages (PagedAttention).

    prompts (one per line) --BatchRun job--> BatchResult --> Batch tab (rows, padding, mask)
                                                        \\-> paged_kv.from_batch --> Paged KV tab (block tables)
    Measure --MeasureThroughput job--> ThroughputTable --> Throughput tab (tokens/s and ms per step vs batch size)

The model work is engine jobs (core.analysis.batch_jobs, through `services.submit_job`); the panel draws plain data.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ...core.analysis import paged_kv as pk
from ...core.analysis.batch_bench import ThroughputTable
from ...core.analysis.batch_jobs import BatchRun, MeasureThroughput
from ...core.analysis.batching import MAX_BATCH, MAX_NEW, BatchResult, check_prompts
from ...core.errors import InputError
from ...core.run import Run
from .. import plot_style
from ..empty_state import show_empty
from ..widgets.status_line import StatusLine
from .base import Panel
from .runtime_views import BATCH_CACHE, RUNS_CACHE, BatchGrid, BlockTable, layout_summary, memory_rows

DEFAULT_PROMPTS = ("What is the capital of France?\nWhat is the capital of Italy?\n"
                   "Name three primary colours.\nWhy is the sky blue? Answer in one sentence.")


def _scrolled(widget: QWidget) -> QScrollArea:
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(False)
    return area


class _FitArea(QScrollArea):
    """A scroll area that fits the batch grid's columns to its width whenever it is resized."""

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self.widget().fit(self.viewport().width())


class RuntimePanel(Panel):
    title = "Runtime"
    help_text = (
        "What a serving runtime adds around the model. Batch: several prompts run as one batch; shorter prompts "
        "are padded on the left (hatched 'pad' cells) so that every row's next token comes from the last column; "
        "the strip under each row is the attention mask (filled = 1, a real token; empty = 0, padding the model "
        "ignores); position ids count from each row's first real token. At temperature 0 every row equals that "
        "prompt run alone. Throughput: tokens per second and milliseconds per step for batch sizes 1-16 on this "
        "machine, prefill and decode apart: a decode step reads all the weights once for the whole batch, so "
        "batching multiplies decode throughput while each step gets only a little slower. Paged KV: the batch's "
        "cache cut into blocks of 16 tokens as vLLM's PagedAttention does (Kwon et al. 2023): each sequence's "
        "block table points at physical blocks; a prefix two prompts share is stored once; only the last block "
        "of a sequence is partly empty; compare with reserving the maximum length for every sequence. Type the "
        "same prompt twice to see a fork: both share even the partly filled last block until the first new token "
        "is written, which copies it (copy-on-write).")

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.batch: BatchResult | None = None
        self.layout_: pk.PagedLayout | None = None
        self.table: ThroughputTable | None = None
        self.max_length = 2048
        self._job = self._measure_job = None

        controls = QHBoxLayout()
        self.prompts = QPlainTextEdit(DEFAULT_PROMPTS)
        self.prompts.setPlaceholderText(f"One prompt per line (at most {MAX_BATCH})")
        self.prompts.setMaximumHeight(90)
        controls.addWidget(self.prompts, 1)
        side = QVBoxLayout()
        self.chat = QCheckBox("Chat template")
        self.chat.setChecked(True)
        self.chat.setToolTip("Wrap every prompt in the model's chat template: the template's tokens are a prefix "
                             "the prompts share (see Paged KV)")
        side.addWidget(self.chat)
        row = QHBoxLayout()
        row.addWidget(QLabel("New tokens"))
        self.new_tokens = QSpinBox()
        self.new_tokens.setRange(0, MAX_NEW)
        self.new_tokens.setValue(12)
        row.addWidget(self.new_tokens)
        side.addLayout(row)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run batch")
        self.run_button.clicked.connect(self.start_batch)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_batch)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        side.addLayout(buttons)
        self.add_current = QPushButton("Add the current prompt")
        self.add_current.setToolTip("Append the main run's prompt as one more line of the batch")
        self.add_current.clicked.connect(self.add_current_prompt)
        side.addWidget(self.add_current)
        controls.addLayout(side)
        self.body.addLayout(controls)
        self.status = QLabel("Greedy (temperature 0) decoding of every line as one padded batch.")
        self.status.setWordWrap(True)
        self.body.addWidget(self.status)

        self.tabs = QTabWidget()
        self.grid = BatchGrid()
        self.grid_area = _FitArea()
        self.grid_area.setWidget(self.grid)
        self.tabs.addTab(self.grid_area, "Batch")
        self.tabs.addTab(self._build_throughput(), "Throughput")
        self.tabs.addTab(self._build_paged(), "Paged KV")
        self.body.addWidget(self.tabs, 1)

    # --- construction -----------------------------------------------------------------------------------
    def _build_throughput(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        row = QHBoxLayout()
        self.repeats = QSpinBox()
        self.repeats.setRange(1, 20)
        self.repeats.setValue(3)
        row.addWidget(QLabel("Repeats (best of)"))
        row.addWidget(self.repeats)
        self.measure_button = QPushButton("Measure batch sizes 1, 2, 4, 8, 16 (1 torch thread)")
        self.measure_button.clicked.connect(self.start_measure)
        row.addWidget(self.measure_button)
        self.measure_stop = QPushButton("Stop")
        self.measure_stop.setEnabled(False)
        self.measure_stop.clicked.connect(lambda: self._measure_job is not None and self._measure_job.cancel())
        row.addWidget(self.measure_stop)
        row.addStretch(1)
        layout.addLayout(row)
        self.bar = QProgressBar()
        self.bar.setRange(0, 100)
        self.bar.hide()
        layout.addWidget(self.bar)
        plots = QHBoxLayout()
        self.tps_plot, self.ms_plot = pg.PlotWidget(), pg.PlotWidget()
        for plot, left in ((self.tps_plot, "tokens / s"), (self.ms_plot, "ms per forward")):
            plot.setMenuEnabled(False)
            plot_style.grid(plot, x=True, y=True, alpha=0.25)
            plot.setLabel("bottom", "batch size")
            plot.setLabel("left", left)
            plot.setLogMode(x=True, y=False)
            plot.addLegend(offset=(10, 10))
            plot_style.style(plot)
            plot.hide()  # until measured: no made-up axes
            plots.addWidget(plot)
        self.curves = {}
        for plot, key, name, colour in ((self.tps_plot, "prefill_tps", "prefill", 0),
                                        (self.tps_plot, "decode_tps", "decode", 1),
                                        (self.ms_plot, "prefill_ms", "prefill (whole prompt)", 0),
                                        (self.ms_plot, "step_ms", "decode step", 1)):
            c = plot_style.series(colour)
            self.curves[key] = plot.plot(pen=pg.mkPen(c, width=2), symbol="o", symbolSize=7, name=name,
                                         **plot_style.symbol_style(c))
        layout.addLayout(plots, 1)
        self.throughput_text = QLabel("Press Measure: each batch size runs a 32-token prompt and 16 decode steps, "
                                      "sizes interleaved, best of the repeats.")
        self.throughput_text.setWordWrap(True)
        layout.addWidget(self.throughput_text)
        return page

    def _build_paged(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        row = QHBoxLayout()
        self.block_size = QSpinBox()
        self.block_size.setRange(1, 256)
        self.block_size.setValue(pk.BLOCK_SIZE)
        self.block_size.valueChanged.connect(lambda _v: self._relayout())
        row.addWidget(QLabel("Block size (tokens)"))
        row.addWidget(self.block_size)
        self.max_len = QSpinBox()
        self.max_len.setRange(1, 1_000_000)
        self.max_len.setValue(self.max_length)
        self.max_len.setToolTip("What a contiguous allocator reserves per sequence (default: the model's context)")
        self.max_len.valueChanged.connect(lambda _v: self._relayout())
        row.addWidget(QLabel("Contiguous reservation (tokens)"))
        row.addWidget(self.max_len)
        row.addStretch(1)
        layout.addLayout(row)
        self.blocks = BlockTable()
        self.blocks_area = _scrolled(self.blocks)
        layout.addWidget(self.blocks_area, 1)
        lower = QHBoxLayout()
        self.paged_text = StatusLine("Run a batch to lay its cache out in pages.", fit=True)
        self.paged_text.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        lower.addWidget(self.paged_text, 1)
        self.mem_plot = pg.PlotWidget()
        self.mem_plot.setMenuEnabled(False)
        self.mem_plot.setLabel("bottom", "KV cache, MiB (log scale)")
        self.mem_plot.setLogMode(x=True, y=False)
        self.mem_plot.getAxis("left").setWidth(10)
        plot_style.style(self.mem_plot)
        self.mem_plot.hide()  # until a batch
        lower.addWidget(self.mem_plot, 1)
        layout.addLayout(lower, 1)
        return page

    # --- the app ------------------------------------------------------------------------------------------
    def is_empty(self) -> bool:
        return self.batch is None and self.table is None and self.layout_ is None

    def draw_run(self, run: Run | None) -> None:
        if run is not None and run.info.is_causal and self.batch is None:
            self.max_length = run.info.context_length
            self.max_len.setValue(min(self.max_len.maximum(), self.max_length))
            self.chat.setChecked(run.info.has_chat_template)
        self._page_runs(run)

    def draw_step(self, run: Run, event) -> None:
        """While the run on screen streams: its pages again when a new block opens, and at the end."""
        if self.batch is None and self._runs and self._runs[-1] is run and \
                (run.n_tokens % self.block_size.value() == 1 or event.finish_reason):
            self._relayout()

    def _page_runs(self, run: Run | None) -> None:
        """Before any batch, the Paged KV tab shows the run on screen's real cache in pages, beside the run before
        it when the two share a prefix (the prefix the KV cache reused is stored once)."""
        previous = self._runs[-1] if self._runs else None
        if run is None or not run.info.is_causal or run.n_tokens == 0:
            self._runs = []
        elif run is not previous:
            shares = previous is not None and previous.info.name == run.info.name and \
                previous.n_tokens > 0 and int(previous.token_ids[0]) == int(run.token_ids[0])
            self._runs = [previous, run] if shares else [run]
        if self.batch is None:
            if not self._runs:
                self.layout_ = None  # nothing to page: the empty cover says what will appear
            self._relayout()
            show_empty(self, self.title, self.is_empty())

    _runs: list = []

    def prompt_list(self) -> list[str]:
        return [line for line in self.prompts.toPlainText().splitlines() if line.strip()]

    def start_batch(self) -> None:
        try:
            prompts = check_prompts(self.prompt_list(), self.new_tokens.value())
        except InputError as exc:
            self.status.setText(str(exc))
            return
        self.status.setText(f"Running {len(prompts)} prompts as one batch\u2026")
        self.run_button.setEnabled(False)
        request = BatchRun(prompts, self.new_tokens.value(), chat=self.chat.isChecked())
        self.stop_button.setEnabled(True)
        self._job = self.services.submit_job(request, self.show_batch, self._batch_failed, self._batch_progress,
                                             key=f"runtime-batch-{id(self)}")
        if self._job is None:  # no engine: the error callback has said why
            self._idle()

    def stop_batch(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def add_current_prompt(self) -> None:
        run = self.full_run
        if run is None:
            self.status.setText("No run yet: run a prompt first, then add it to the batch.")
            return
        text = " ".join(run.request.prompt.split())  # one line: a batch has one prompt per line
        lines = self.prompt_list()
        self.prompts.setPlainText("\n".join([*lines, text]))

    def _idle(self) -> None:
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self._job = None

    def _batch_progress(self, fraction: float, message: str) -> None:
        self.status.setText(f"Running the batch: {message}")

    def _batch_failed(self, message: str) -> None:
        self._idle()
        self.status.setText("The batch was stopped." if message == "cancelled" else f"The batch did not run: {message}")

    def show_batch(self, result: BatchResult) -> None:
        from ..batch_hub import hub

        self._idle()
        self.batch = result
        hub().publish(result)  # the Tokens panel shows its rows too
        self.grid.available = self.grid_area.viewport().width()
        self.grid.set_result(result)
        steps = np.asarray(result.step_ms)
        step = f"{np.median(steps):.1f} ms per decode step (median of {len(steps)})" if len(steps) else "no decode"
        self.status.setText(
            f"{result.batch_size} prompts, padded to {result.n_prompt} tokens; {result.padded_slots} of "
            f"{result.attention_mask.size} cache slots are padding. Prefill {result.prefill_ms:.0f} ms, {step}. "
            "Under each row: the attention mask (filled = 1, empty = 0).")
        self._relayout()
        show_empty(self, self.title, self.is_empty())

    def _relayout(self) -> None:
        runs = [r for r in self._runs if r.n_tokens > 0]
        if self.batch is None and not runs:
            return
        try:
            if self.batch is not None:
                lay = pk.from_batch(self.batch, max_length=max(self.max_len.value(), self.batch.input_ids.shape[1]),
                                    block_size=self.block_size.value())
                padded, label, what = pk.padded_bytes(self.batch), BATCH_CACHE, "The batch's cache"
            else:
                lay = pk.from_runs(runs, max_length=max(self.max_len.value(), *(r.n_tokens for r in runs)),
                                   block_size=self.block_size.value())
                padded, label = pk.own_bytes(runs), RUNS_CACHE
                what = ("The run on screen (row 2) and the run before it (row 1): their common prefix is stored "
                        "once" if len(runs) == 2 else "The run on screen's cache") + " (run a batch to page it)"
        except InputError as exc:
            self.paged_text.setText(str(exc))
            return
        self.layout_ = lay
        self.blocks.set_layout(lay)
        self.blocks_area.setMinimumHeight(min(self.blocks.sizeHint().height() + 24, 420))  # every row when it can
        self.paged_text.setText(f"<i>{what}.</i><br>" + layout_summary(lay, padded, label) +
                                "<br><i>Paging after Kwon et al. 2023, Efficient Memory Management for LLM Serving "
                                "with PagedAttention (vLLM).</i>")
        self._draw_memory(lay, padded, label)

    def _draw_memory(self, lay: pk.PagedLayout, padded: int, label: str = BATCH_CACHE) -> None:
        self.mem_plot.clear()
        self.mem_plot.show()
        rows = memory_rows(lay, padded, label)
        mib = np.array([max(n, 1) / 2**20 for _, n in rows])
        y = np.arange(len(rows))[::-1]
        for i, (value, yy) in enumerate(zip(mib, y, strict=True)):
            bar = pg.BarGraphItem(x0=[np.log10(mib.min() / 4)], x1=[np.log10(value)], y=[yy], height=0.6,
                                  brush=plot_style.series(i), pen=None)
            self.mem_plot.addItem(bar)
            label = pg.TextItem(f"{rows[i][0]}: {value:,.2f} MiB", color=plot_style.ink(), anchor=(0, 0.5))
            label.setPos(np.log10(mib.min() / 4), yy)
            self.mem_plot.addItem(label)
        self.mem_plot.getAxis("left").setTicks([[]])
        lo, hi = int(np.floor(np.log10(mib.min() / 4))), int(np.ceil(np.log10(mib.max())))
        self.mem_plot.getAxis("bottom").setTicks([[(k, f"{10.0 ** k:g}") for k in range(lo, hi + 1)], []])

    def start_measure(self) -> None:
        self.bar.setValue(0)
        self.bar.show()
        self.measure_button.setEnabled(False)
        self.measure_stop.setEnabled(True)
        self._measure_job = self.services.submit_job(MeasureThroughput(repeats=self.repeats.value()),
                                                     self.show_throughput, self._measure_failed, self._progress,
                                                     key=f"runtime-measure-{id(self)}")

    def _progress(self, fraction: float, message: str) -> None:
        self.bar.setValue(int(round(fraction * 100)))
        self.bar.setFormat(f"{message} %p%")

    def _measure_idle(self) -> None:
        self.bar.hide()
        self.measure_button.setEnabled(True)
        self.measure_stop.setEnabled(False)
        self._measure_job = None

    def _measure_failed(self, message: str) -> None:
        self._measure_idle()
        self.throughput_text.setText("The measurement was stopped." if message == "cancelled"
                                     else f"The measurement did not run: {message}")

    def show_throughput(self, table: ThroughputTable) -> None:
        self._measure_idle()
        self.table = table
        sizes = np.array([r.batch for r in table.rows], float)
        for key, values in (("prefill_tps", [r.prefill_tok_s for r in table.rows]),
                            ("decode_tps", [r.decode_tok_s for r in table.rows]),
                            ("prefill_ms", [r.prefill_ms for r in table.rows]),
                            ("step_ms", [r.step_ms for r in table.rows])):
            self.curves[key].setData(sizes, np.array(values, float))
        for plot in (self.tps_plot, self.ms_plot):
            plot.show()
            plot.getAxis("bottom").setTicks([[(np.log10(s), str(int(s))) for s in sizes]])
        first, last = table.rows[0], table.rows[-1]
        self.throughput_text.setText(
            f"{table.model}, {table.prompt_tokens}-token prompts, {table.new_tokens} new tokens, "
            f"{table.threads} torch thread, best of {table.repeats}. Decode: {first.decode_tok_s:.1f} tok/s at "
            f"batch {first.batch}, {last.decode_tok_s:.1f} tok/s at batch {last.batch} "
            f"({last.decode_tok_s / max(first.decode_tok_s, 1e-9):.1f}x) while a step takes "
            f"{last.step_ms / max(first.step_ms, 1e-9):.1f}x as long. Measured on a machine other work may share.")
        show_empty(self, self.title, self.is_empty())
