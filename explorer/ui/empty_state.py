"""What an empty panel shows before a run: a sentence saying what will appear, over every plot, instead
of made-up axes (pyqtgraph draws -0.5..0.5 or 0..1 ranges for an empty plot)."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QLabel, QWidget

# panel title -> what appears there after a run (the title is the registry's stable, user-facing name)
EMPTY_TEXT = {
    "Tokens": "After a run: the text cut into tokens, one box per token, coloured by kind or by how surprised "
              "the model was.",
    "Next token": "After a run: the model's top guesses for the next token at the selected position, as "
                  "probability bars, with temperature, top-k and top-p applied live.",
    "Attention": "After a run: who attends to whom, a heatmap per head (query rows, key columns), every "
                 "head as a thumbnail and each head's statistics.",
    "Layer depth": "After a run: the logit lens (what each layer would predict), logit attribution and how "
                   "the residual stream changes through the layers.",
    "KV cache": "After a run: the KV cache's size at every step, per layer, checked against the formula.",
    "Pipeline": "After a run: where the time went, stage by stage, for the prompt and each generated token.",
    "Embeddings": "After a run: the hidden states of this run's tokens in 2-D at each layer, and the "
                  "vocabulary's nearest neighbours.",
    "Interventions": "After a run: the baseline's prediction next to the prediction with heads or layers "
                     "knocked out (right-click a head in Attention or Layer depth).",
    "Head sweep and search": "After a run: every head knocked out in turn and how much the prediction moves, "
                             "or the heads that best match a behaviour.",
    "Depth lab": "No Depth lab model trained yet: choose a variant and press Train (minutes on a CPU). Loss "
                 "curves of every variant and each model's learned depth routing appear here.",
    "Runtime": "Run a batch (one prompt per line) or measure throughput: the padded batch with its attention "
               "mask, tokens/s per batch size and the batch's KV cache in blocks of 16 appear here.",
    "Retrieval": "After a run with Retrieve ticked (prompt bar): the question and its retrieved chunks in MiniLM's "
                 "embedding space with their scores, and how much attention each generated token pays to each "
                 "chunk, layer by layer. Build an index with the buttons above first.",
    "Prompt A/B": "After a run and a second prompt B: the two runs aligned token by token, their logit-lens "
                  "and attention differences.",
}
KEEP = "lmx_keep_without_run"  # a dynamic property: a plot that means something without a run (a calculator)


def empty_text(title: str) -> str:
    return EMPTY_TEXT.get(title, f"{title}: appears after a run (press Run).")


class _Cover(QLabel):
    """An opaque label covering one plot while there is no run."""

    def __init__(self, view: QWidget, text: str):
        super().__init__(text, view)
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignCenter)
        self.setAutoFillBackground(True)
        self.setMargin(16)
        self.setObjectName("lmx_empty_cover")
        view.installEventFilter(self)
        self.setGeometry(view.rect())

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Resize:
            self.setGeometry(obj.rect())
        return False


def show_empty(panel: QWidget, title: str, empty: bool) -> None:
    """Cover every plot of `panel` with the sentence (empty) or uncover them (a run is shown)."""
    for view in panel.findChildren(pg.GraphicsView):
        if view.property(KEEP):
            continue
        cover = getattr(view, "_lmx_cover", None)
        if empty and cover is None:
            cover = view._lmx_cover = _Cover(view, empty_text(title))
        if cover is not None:
            cover.setVisible(empty)
            if empty:
                cover.raise_()
