"""Tokens panel: the run's text as token boxes, coloured by kind / logprob / entropy / id, with a
second tokenizer's tokenization of the same text for comparison."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QCheckBox, QComboBox, QFileDialog, QLabel, QScrollArea, QSplitter, QVBoxLayout, QWidget

from ...core import catalogue
from ...core.analysis.tokenizer_compare import Comparison, boundaries, compare, load_tokenizer, tokenize_text
from ...core.events import StepEvent
from ...core.run import Run
from ..export import documents_dir
from ..widgets.background import Background
from ..widgets.flow import FlowLayout
from ..widgets.status_line import StatusLine
from ..widgets.token_view import TokenView, scrolling
from . import token_colors as tc
from . import token_drafts
from .base import Panel

AGREE, DISAGREE = QColor("#cfe8c1"), QColor("#f9d6a5")
OTHER_FOLDER = "Tokenizer folder…"


class TokensPanel(Panel):
    title = "Tokens"
    help_text = (
        "The model never sees letters: the text is cut into tokens, and each box is one token (hover for its id, "
        "bytes and how likely the model found it; click to select it in every panel). Faint dots are spaces, ↵ "
        "is a line break. Colour by kind shows which tokens came from the chat template, your message or the "
        "model; a red outline means text you typed was turned into a control token. Other colourings show how "
        "surprised the model was (logprob), how unsure (entropy) or how rare the token is (id). Pick a second "
        "tokenizer to see how differently another model would cut the same text. With speculative decoding "
        "(prompt bar), each model pass checks a cheap draft of the next tokens: accepted drafts are shaded "
        "darker, rejected ones are listed struck through, with the acceptance rate and the speed-up."
    )

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.mode = "kind"
        self.background = Background(self)
        self._tokenizers: dict[str, object] = {}
        self.comparison: Comparison | None = None

        bar = FlowLayout()  # wraps in a narrow dock instead of clipping
        self.mode_box = QComboBox()
        for m in tc.MODES:
            self.mode_box.addItem(f"colour: {tc.MODE_TITLES[m]}", m)
        self.mode_box.currentIndexChanged.connect(lambda _i: self.set_mode(self.mode_box.currentData()))
        self.ids_box = QCheckBox("show ids")
        self.ids_box.toggled.connect(self._toggle_ids)
        self.compare_box = QComboBox()
        self.compare_box.addItem("compare with: none", None)
        for name in catalogue.builtin_names():
            self.compare_box.addItem(f"compare with: {name}", name)
        self.compare_box.addItem(f"compare with: {OTHER_FOLDER}", OTHER_FOLDER)
        self.compare_box.activated.connect(self._compare_chosen)
        for box in (self.mode_box, self.compare_box):  # let the panel shrink in a narrow dock
            box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            box.setMinimumContentsLength(24)
        for w in (self.mode_box, self.ids_box):
            bar.addWidget(w)
        bar.addStretch(1)
        bar.addWidget(self.compare_box)
        self.body.addLayout(bar)

        self.counts = StatusLine(fit=True)  # wraps in a narrow dock; a new count relays out nothing
        self.legend = StatusLine(fit=True)  # (its counts change at every step too)
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.body.addWidget(self.counts)
        self.body.addWidget(self.legend)
        self._plain_ms: dict[tuple, float] = {}  # decode ms/token of the plain runs seen, by prompt and settings
        self.drafts_summary = QLabel()
        self.drafts_summary.setWordWrap(True)
        self.drafts_summary.setTextFormat(Qt.TextFormat.RichText)
        self.drafts_list = QLabel()
        self.drafts_list.setTextFormat(Qt.TextFormat.RichText)
        self.drafts_list.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.drafts_area = QScrollArea()
        self.drafts_area.setWidget(self.drafts_list)
        self.drafts_area.setWidgetResizable(True)
        self.drafts_area.setMaximumHeight(150)
        self.body.addWidget(self.drafts_summary)
        self.body.addWidget(self.drafts_area)
        self.drafts_summary.hide()
        self.drafts_area.hide()

        self.view = TokenView()
        self.view.tooltip_for = self.tooltip_text
        self.view.clicked.connect(lambda i: self.selection.set("position", i))
        self.other = TokenView()
        self.other.tooltip_for = self._other_tooltip
        self.compare_label = QLabel()
        self.compare_label.setWordWrap(True)
        other_box = QWidget()
        lay = QVBoxLayout(other_box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.compare_label)
        lay.addWidget(scrolling(self.other))
        self.split = QSplitter(Qt.Orientation.Vertical)
        self.split.addWidget(scrolling(self.view))
        self.split.addWidget(other_box)
        self.split.setStretchFactor(0, 3)
        self.split.setStretchFactor(1, 2)
        other_box.hide()
        self.other_box = other_box
        self._build_batch_box()
        self.body.addWidget(self.split, 1)

    def _build_batch_box(self) -> None:
        """The latest batch (Runtime panel): one row per prompt, padding hatched, the attention mask under it."""
        from ..batch_hub import hub
        from .runtime_views import BatchGrid

        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        self.batch_label = QLabel()  # one line (its full text in the tooltip): the panel stays as small as before
        self.batch_grid = BatchGrid()
        area = QScrollArea()
        area.setWidget(self.batch_grid)
        area.setMinimumHeight(24)
        box.setMinimumHeight(0)
        lay.addWidget(self.batch_label)
        lay.addWidget(area, 1)
        self.batch_area = area
        self.split.addWidget(box)
        box.hide()
        self.batch_box = box
        hub().changed.connect(self.show_batch)
        if hub().latest is not None:
            self.show_batch(hub().latest)

    def show_batch(self, result) -> None:
        self.batch_grid.available = self.batch_area.viewport().width()
        self.batch_grid.set_result(result)
        self.batch_label.setText(f"<b>Batch</b>: {result.batch_size} prompts, {result.padded_slots} of "
                                 f"{result.attention_mask.size} slots padding (hatched)")
        self.batch_label.setToolTip(
            f"The last batch run in the Runtime panel: {result.batch_size} prompts padded on the left to "
            f"{result.n_prompt} tokens; hatched cells are padding, the strip under each row is its attention mask "
            "(filled = attended).")
        if self.batch_box.isHidden():  # first batch: give it room to show its rows (the splitter can move)
            self.batch_box.show()
            sizes = self.split.sizes()
            total = sum(sizes)
            rows = min(self.batch_grid.sizeHint().height() + self.batch_label.sizeHint().height() + 24, total // 2)
            self.split.setSizes([max(0, sizes[0] - rows), sizes[1], rows])

    # --- Panel contract -----------------------------------------------------------------------
    def apply_theme(self) -> None:
        self.draw_run(self.run)  # tile colours come from the theme's colour map

    def draw_run(self, run: Run | None) -> None:
        if run is None:
            self.view.set_tokens([], [], [], [])
            self.counts.setText("")
            self.legend.setText("")
            self._draw_drafts(None)
            return
        fill, outline = tc.token_colors(run, self.mode)
        self.view.set_tokens(run.tokens, fill, outline, [tc.label_for(run, t) for t in run.tokens])
        self.view.set_selected(self.selection.position)
        self._draw_labels(run)
        self._draw_drafts(run)
        self._refresh_comparison()

    def draw_step(self, run: Run, event: StepEvent) -> None:
        self.draw_steps(run, [event])

    def draw_steps(self, run: Run, events: list[StepEvent]) -> None:
        start = len(self.view.tokens)
        if any(e.is_prefill for e in events) or start != events[0].start:
            self.draw_run(run)
            return
        fill, outline = tc.token_colors(run, self.mode, start)
        new = run.tokens[start:]
        self.view.append_tokens(new, fill, outline, [tc.label_for(run, t) for t in new])
        self._draw_labels(run)
        finished = bool(events[-1].finish_reason)
        if finished or any(e.draft is not None for e in events):
            self._draw_drafts(run)
        if finished:
            self._refresh_comparison()

    def draw_selection(self, field: str) -> None:
        if field == "position":
            self.view.set_selected(self.selection.position)
            rects = self.view.token_rects(self.selection.position)
            area = self.view.parentWidget().parentWidget() if self.view.parentWidget() else None
            if rects and hasattr(area, "ensureVisible"):
                area.ensureVisible(rects[0].center().x(), rects[0].center().y(), 10, 30)

    # --- controls -----------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if self.mode_box.currentData() != mode:
            self.mode_box.setCurrentIndex(tc.MODES.index(mode))
        if self.run is not None:
            self.view.set_colors(*tc.token_colors(self.run, mode))
            self._draw_labels(self.run)

    def _toggle_ids(self, on: bool) -> None:
        self.view.set_show_ids(on)
        self.other.set_show_ids(on)

    def _draw_labels(self, run: Run) -> None:
        self.counts.setText(tc.counts_text(run))
        self.legend.setText(tc.legend_html(run, self.mode))

    def _draw_drafts(self, run: Run | None) -> None:
        """The speculative-decoding summary and draft list (hidden for plain runs, whose speed is remembered)."""
        if run is not None and not run.request.speculative and run.finish_reason:
            ms = token_drafts.decode_ms_per_token(run)
            if ms:
                self._plain_ms[token_drafts.plain_key(run)] = ms
        shown = run is not None and bool(run.drafts)
        self.drafts_summary.setVisible(shown)
        self.drafts_area.setVisible(shown)
        if shown:
            self.drafts_summary.setText(token_drafts.summary_html(run, self._plain_ms.get(token_drafts.plain_key(run))))
            self.drafts_list.setText(token_drafts.drafts_html(run))

    def tooltip_text(self, i: int) -> str:
        return tc.tooltip_text(self.run, i) if self.run is not None and i < self.run.n_tokens else ""

    # --- tokenizer comparison -----------------------------------------------------------------
    def _compare_chosen(self, _index: int) -> None:
        name = self.compare_box.currentData()
        if name == OTHER_FOLDER:
            name = QFileDialog.getExistingDirectory(self, "Choose a folder with tokenizer files", documents_dir())
            if not name:
                self.compare_box.setCurrentIndex(0)
                return
        self.compare_with(name)

    def compare_with(self, name: str | None) -> None:
        """Tokenize the run's text with another tokenizer (built-in name or folder); None hides it."""
        self.compare_name = name
        index = self.compare_box.findData(name)
        if index >= 0:
            self.compare_box.setCurrentIndex(index)
        if name is None:
            self.comparison = None
            self.other_box.hide()
            return
        self.other_box.show()
        self._refresh_comparison()

    def _refresh_comparison(self) -> None:
        name = getattr(self, "compare_name", None)
        if name is None or self.run is None:
            return
        run, text, tokens = self.run, self.run.text, list(self.run.tokens)
        self.compare_label.setText(f"Tokenizing with {name}…")

        def job():
            tok = self._tokenizers.get(name)
            if tok is None:
                tok = self._tokenizers[name] = load_tokenizer(name)
            theirs = tokenize_text(tok, text)
            labels = [None if t.end > t.start or t.partial else str(tok.convert_ids_to_tokens(t.id)) for t in theirs]
            return compare(text, tokens, theirs, run.info.name, str(name)), labels

        self.background.submit("compare", job, self._show_comparison,
                               lambda msg: self.compare_label.setText(f"Could not compare: {msg}"))

    def _show_comparison(self, done: tuple[Comparison, list[str | None]]) -> None:
        result, labels = done
        self.comparison = result
        a, b = result.a, result.b
        self.compare_label.setText(
            f"<b>{a.name}</b>: {a.n_tokens} tokens, {a.chars_per_token:.2f} chars/token &nbsp;·&nbsp; "
            f"<b>{b.name}</b>: {b.n_tokens} tokens, {b.chars_per_token:.2f} chars/token &nbsp;·&nbsp; "
            f"boundary agreement <b>{result.agreement:.0%}</b> ({result.shared_boundaries} shared) &nbsp; "
            f"<span style='background:{AGREE.name()}; color:#1a1a1a'>&nbsp;same cut as {a.name}&nbsp;</span> "
            f"<span style='background:{DISAGREE.name()}; color:#1a1a1a'>&nbsp;different&nbsp;</span>")
        ours = boundaries(list(a.tokens)) | {0, a.n_chars}
        fill = [AGREE if (t.start in ours and t.end in ours and t.end > t.start) else DISAGREE for t in b.tokens]
        self.other.set_tokens(b.tokens, fill, [None] * len(b.tokens), labels)

    def _other_tooltip(self, i: int) -> str:
        if self.comparison is None or i >= len(self.comparison.b.tokens):
            return ""
        t = self.comparison.b.tokens[i]
        return (f"<b>{self.comparison.b.name}</b> token {i} · id {t.id}<br>piece <code>{t.text!r}</code><br>"
                f"characters {t.start}–{t.end} · bytes <code>{t.raw_bytes.hex(' ').upper()}</code>")
