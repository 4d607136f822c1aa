"""Placeholder tokens panel: the raw token list (replaced by the full Tokens panel)."""

from __future__ import annotations

from PySide6.QtWidgets import QListWidget

from .base import Panel


class TokenListPanel(Panel):
    title = "Tokens"
    help_text = "Each line is one token the model reads: its position, id, kind and text."

    def __init__(self, selection, parent=None):
        super().__init__(selection, parent)
        self.list = QListWidget()
        self.body.addWidget(self.list)
        self.list.currentRowChanged.connect(lambda row: row >= 0 and self.selection.set("position", row))

    def draw_run(self, run):
        self.list.clear()
        if run is not None:
            self.list.addItems([f"{i:4d}  {t.id:6d}  {t.kind.value:<13} {t.text!r}" for i, t in enumerate(run.tokens)])

    def draw_step(self, run, event):
        self.list.addItems([f"{event.start + i:4d}  {t.id:6d}  {t.kind.value:<13} {t.text!r}"
                            for i, t in enumerate(event.tokens)])

    def draw_selection(self, field):
        if field == "position":
            self.list.setCurrentRow(self.selection.position)
