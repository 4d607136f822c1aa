"""The prompt editor (plain or chat with a system prompt) and the generation settings."""

from __future__ import annotations

import json
import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.events import GenerationSettings, RunRequest

EXAMPLE_PROMPT = "The capital of France is"
CHOOSE_INDEX = "Other index folder…"


def cached_indexes() -> list[str]:
    """Index folders in the user cache (built from the Retrieval panel or `lm-explorer index build`)."""
    from ..core.retrieval.index import MANIFEST, default_index_dir

    root = default_index_dir().parent
    try:
        return sorted(str(p) for p in root.iterdir() if (p / MANIFEST).is_file())
    except OSError:
        return []


class IndexBox(QComboBox):
    """The retrieval index: the cache's indexes (listed afresh each time it opens) or a chosen folder."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumContentsLength(4)  # (its tooltip and popup show the whole path)
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setToolTip("The index to retrieve from (build one in the Retrieval panel)")
        self.activated.connect(self._picked)
        self.set_index(None)

    def index_path(self) -> str:
        return self.currentData() or ""

    def set_index(self, path: str | None) -> None:
        from pathlib import Path

        from ..core.retrieval.index import default_index_dir

        path = path or str(default_index_dir())
        self._chosen = path
        self.clear()
        for p in dict.fromkeys([path, *cached_indexes()]):
            self.addItem(Path(p).name or p, p)
            self.setItemData(self.count() - 1, p, Qt.ToolTipRole)
        self.addItem(CHOOSE_INDEX, "")
        self.setCurrentIndex(0)

    def showPopup(self) -> None:  # noqa: N802 - Qt override
        self.set_index(self.index_path())
        super().showPopup()

    def _picked(self, i: int) -> None:
        if self.itemData(i):
            return
        from pathlib import Path

        from PySide6.QtWidgets import QFileDialog

        from ..core.retrieval.index import default_index_dir
        from .export import documents_dir

        start = str(default_index_dir().parent) if default_index_dir().parent.is_dir() else documents_dir()
        folder = QFileDialog.getExistingDirectory(self, "Retrieval index folder", start)
        if folder and not (Path(folder) / "index.json").is_file():
            folder = ""  # not an index: keep the one chosen before
        self.set_index(folder or self._chosen)


SPECULATIVE_CHOICES = (("off", ""), ("prompt lookup", "prompt-lookup"), ("first-layers draft", "layers"))


class PromptBar(QWidget):
    """Prompt, chat/system, settings and the Run / Stop / Step buttons."""

    run_clicked = Signal()
    stop_clicked = Signal()
    step_clicked = Signal()
    tool_reply_clicked = Signal()  # reply to the run on screen with a tool result (chat mode)
    tools: str | None = None  # tool definitions (checked JSON text) for chat mode: ui/tools_dialog.py
    turns: tuple = ()  # the conversation after the prompt (a reply and a tool result), from show_request

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        outer = QHBoxLayout(self)
        outer.setContentsMargins(6, 4, 6, 4)

        left = QVBoxLayout()
        top = QHBoxLayout()
        self.chat = QCheckBox("Chat mode")
        self.chat.setToolTip("Wrap the prompt in the model's chat template (user message), with a system prompt")
        self.recent = QComboBox()
        self.recent.setToolTip("Recent prompts")
        self.recent.setMinimumContentsLength(12)  # fits 1280 px in presenter mode; the popup shows full prompts
        self.recent.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.recent.setPlaceholderText("Recent prompts")
        self.recent.activated.connect(lambda i: self.prompt.setPlainText(self.recent.itemData(i) or ""))
        top.addWidget(QLabel("<b>Prompt</b>"))
        top.addWidget(self.chat)
        self.special_as_text = QCheckBox("Special tokens as text")
        self.special_as_text.setToolTip(
            "Typed text like <|im_start|> becomes the model's real control token unless this is ticked "
            "(such tokens are flagged in the Tokens panel: it is a prompt-injection path)")
        top.addWidget(self.special_as_text)
        self.tools_button = QPushButton("Tools…")
        self.tools_button.setToolTip("Tools the model may call in chat mode (a built-in calculator, or your own "
                                     "JSON definitions); the chat template shows them to the model")
        self.tools_button.clicked.connect(self.edit_tools)
        self.tool_reply_button = QPushButton("Tool result…")
        self.tool_reply_button.setToolTip("Answer the model's tool call: append the result as a tool message "
                                          "and continue the conversation")
        self.tool_reply_button.clicked.connect(self.tool_reply_clicked)
        self.turns_label = QLabel()
        self.turns_label.linkActivated.connect(lambda _link: self.set_turns(()))
        self.retrieve = QCheckBox("Retrieve")
        self.retrieve.setToolTip("Search the index for the prompt and insert the k closest chunks before it "
                                 "(retrieval tokens; see the Retrieval panel)")
        self.retrieve_k = QSpinBox()
        self.retrieve_k.setRange(1, 20)
        self.retrieve_k.setValue(3)
        self.retrieve_k.setToolTip("k: the number of chunks to insert")
        self.retrieve_index = IndexBox()
        self.retrieve_k.setPrefix("k ")
        self.retrieve.toggled.connect(self._retrieve_toggled)
        self._retrieve_toggled(False)
        top.addStretch(1)
        top.addWidget(self.recent)
        left.addLayout(top)
        tool_row = QHBoxLayout()  # a row of its own: the top row stays narrow enough for presenter mode
        for w in (self.retrieve, self.retrieve_k, self.retrieve_index):
            tool_row.addWidget(w)  # retrieval first (always there), then the chat mode's tool controls
        for w in (self.tools_button, self.tool_reply_button, self.turns_label):
            w.setVisible(False)
            tool_row.addWidget(w)
        tool_row.addStretch(1)
        left.addLayout(tool_row)
        self.system = QPlainTextEdit()
        self.system.setPlaceholderText("System prompt (chat mode)")
        self.system.setFixedHeight(44)
        self.system.setVisible(False)
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("Type a prompt and press Ctrl+Enter")
        self.prompt.setPlainText(EXAMPLE_PROMPT)
        self.prompt.setMinimumHeight(48)
        self.prompt.setMaximumHeight(56)  # (the retrieval row above it: the bar fits 720-line screens)
        left.addWidget(self.system)
        left.addWidget(self.prompt, 1)
        self.chat.toggled.connect(self.system.setVisible)
        self.chat.toggled.connect(self._show_tool_controls)
        outer.addLayout(left, 3)

        grid = QGridLayout()
        grid.setHorizontalSpacing(16)
        self.max_new = QSpinBox()
        self.max_new.setRange(0, 4096)
        self.max_new.setValue(16)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 5.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setToolTip("0 = greedy (always the most likely token)")
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 100000)
        self.top_k.setSpecialValueText("off")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.01, 1.0)  # 0 would keep no token
        self.top_p.setSingleStep(0.05)
        self.top_p.setValue(1.0)
        self.top_p.setToolTip("1.0 = off")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        form1, form2 = QFormLayout(), QFormLayout()
        form1.addRow("Max new tokens", self.max_new)
        form1.addRow("Temperature", self.temperature)
        form1.addRow("Seed", self.seed)
        form2.addRow("Top-k", self.top_k)
        form2.addRow("Top-p", self.top_p)
        self.speculative = QComboBox()
        for label, spec in SPECULATIVE_CHOICES:
            self.speculative.addItem(label, spec)
        self.speculative.setToolTip(
            "Speculative decoding: a cheap draft proposes the next tokens and the model checks them all in one "
            "pass (same tokens at temperature 0). Prompt lookup copies what followed the last words earlier in "
            "the text; the layers draft is the model's own first blocks. The Tokens panel shows each draft.")
        form2.addRow("Drafts", self.speculative)  # speculative decoding (short: the label fits 1280 px)
        grid.addLayout(form1, 0, 0)
        grid.addLayout(form2, 0, 1)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Run the prompt (Ctrl+Enter)")
        self.run_button.setDefault(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop generating (Esc)")
        self.stop_button.setEnabled(False)
        self.step_button = QPushButton("Step +1")
        self.step_button.setToolTip("Generate exactly one more token")
        for b in (self.run_button, self.stop_button, self.step_button):
            buttons.addWidget(b)
        grid.addLayout(buttons, 1, 0, 1, 2)
        outer.addLayout(grid, 0)
        self.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)
        self.run_button.clicked.connect(self.run_clicked)
        self.stop_button.clicked.connect(self.stop_clicked)
        self.step_button.clicked.connect(self.step_clicked)
        self.prompt.setTabChangesFocus(True)

    def _retrieve_toggled(self, on: bool) -> None:
        self.retrieve_k.setEnabled(on)
        self.retrieve_index.setEnabled(on)

    # --- values ---------------------------------------------------------------------------------
    def settings(self, max_new_tokens: int | None = None) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new.value() if max_new_tokens is None else max_new_tokens,
            temperature=float(self.temperature.value()),
            top_k=self.top_k.value() or None,
            top_p=float(self.top_p.value()) if self.top_p.value() < 1.0 else None,
            seed=self.seed.value(),
        )

    def request(self) -> RunRequest:
        system = self.system.toPlainText().strip() or None
        chat = self.chat.isChecked()
        return RunRequest(prompt=self.prompt.toPlainText(), chat=chat,
                          system=system if chat else None, settings=self.settings(),
                          allow_special_in_text=not self.special_as_text.isChecked(),
                          tools=self.tools if chat else None, turns=self.turns if chat else (),
                          retrieval=self.retrieval(), speculative=self.speculative.currentData() or "")

    def retrieval(self):
        """The Retrieve box's request (core.retrieval.Retrieval), or None when it is not ticked."""
        if not self.retrieve.isChecked():
            return None
        from ..core.retrieval import Retrieval

        return Retrieval(index=self.retrieve_index.index_path(), k=self.retrieve_k.value())

    # --- tools (chat mode) ----------------------------------------------------------------------
    def edit_tools(self) -> None:
        from .tools_dialog import ToolsDialog

        dialog = ToolsDialog(self.tools, self)
        if dialog.exec():
            self.set_tools(dialog.result_json)

    def set_tools(self, tools: str | None) -> None:
        self.tools = tools
        n = len(json.loads(tools)) if tools else 0
        self.tools_button.setText(f"Tools ({n})…" if n else "Tools…")

    def set_turns(self, turns: tuple) -> None:
        """The conversation after the prompt that the next run continues (cleared with the label's link)."""
        self.turns = tuple(turns)
        self.turns_label.setText(f"+ {len(self.turns)} turns (<a href='clear'>clear</a>)" if self.turns else "")
        self.turns_label.setToolTip("\n\n".join(f"{role}: {text[:200]}" for role, text in self.turns))
        self._show_tool_controls(self.chat.isChecked())

    def _show_tool_controls(self, chat: bool) -> None:
        self.tools_button.setVisible(chat)
        self.tool_reply_button.setVisible(chat)
        self.turns_label.setVisible(chat and bool(self.turns))

    def set_context_limit(self, context_length: int | None) -> None:
        """Max new tokens cannot reach the model's context window (None: no generation limit known)."""
        self.max_new.setMaximum(4096 if context_length is None else max(1, min(4096, context_length - 1)))
        self.max_new.setToolTip(f"At most {self.max_new.maximum()} (the model's context is "
                                f"{context_length} tokens)" if context_length else "")

    def show_request(self, request: RunRequest) -> None:
        """Put a request's prompt and settings back into the editor (e.g. after truncation)."""
        self.prompt.setPlainText(request.prompt)
        self.chat.setChecked(request.chat)
        self.special_as_text.setChecked(not request.allow_special_in_text)
        self.system.setPlainText(request.system or "")
        self.set_tools(request.tools)
        self.set_turns(request.turns)
        self.retrieve.setChecked(request.retrieval is not None)
        if request.retrieval is not None:
            self.retrieve_k.setValue(request.retrieval.k)
            self.retrieve_index.set_index(request.retrieval.index)
        s = request.settings
        self.max_new.setValue(s.max_new_tokens)
        self.temperature.setValue(s.temperature)
        self.top_k.setValue(s.top_k or 0)
        self.top_p.setValue(1.0 if s.top_p is None else s.top_p)
        self.seed.setValue(s.seed)
        if self.speculative.findData(request.speculative) < 0:
            self.speculative.addItem(request.speculative, request.speculative)
        self.speculative.setCurrentIndex(self.speculative.findData(request.speculative))

    def set_recent(self, prompts: list[str]) -> None:
        self.recent.clear()
        for p in prompts:
            label = " ".join(p.split())
            self.recent.addItem(label[:60] + ("..." if len(label) > 60 else ""), p)
        self.recent.setCurrentIndex(-1)

    def set_running(self, running: bool) -> None:
        self.stop_button.setEnabled(running)
        self.step_button.setEnabled(not running)

    def to_state(self) -> dict:
        return {"prompt": self.prompt.toPlainText(), "chat": self.chat.isChecked(),
                "special_as_text": self.special_as_text.isChecked(),
                "system": self.system.toPlainText(), "max_new": self.max_new.value(),
                "temperature": self.temperature.value(), "top_k": self.top_k.value(),
                "top_p": self.top_p.value(), "seed": self.seed.value(), "retrieve": self.retrieve.isChecked(),
                "retrieve_k": self.retrieve_k.value(), "retrieve_index": self.retrieve_index.index_path()}

    def from_state(self, state: dict) -> None:
        """Restore the editor from stored values; a value of the wrong type, not finite or beyond a widget's
        range is ignored (that widget keeps its default), never raised."""
        def text(key: str, default: str) -> str:
            value = state.get(key, default)
            return value if isinstance(value, str) else default

        def flag(key: str) -> bool:
            value = state.get(key, False)
            return value if isinstance(value, bool) else str(value).lower() in ("true", "1")

        def number(widget, key: str) -> None:
            value = state.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return
            if not math.isfinite(value) or not widget.minimum() <= value <= widget.maximum():
                return
            widget.setValue(int(value) if isinstance(widget, QSpinBox) else float(value))

        self.prompt.setPlainText(text("prompt", EXAMPLE_PROMPT))
        self.chat.setChecked(flag("chat"))
        self.special_as_text.setChecked(flag("special_as_text"))
        self.system.setPlainText(text("system", ""))
        for widget, key in ((self.max_new, "max_new"), (self.temperature, "temperature"), (self.top_k, "top_k"),
                            (self.top_p, "top_p"), (self.seed, "seed"), (self.retrieve_k, "retrieve_k")):
            number(widget, key)
        self.retrieve.setChecked(flag("retrieve"))
        self.retrieve_index.set_index(text("retrieve_index", "") or None)


__all__ = ["EXAMPLE_PROMPT", "PromptBar", "Qt"]
