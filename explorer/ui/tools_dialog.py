"""Tool use in the prompt bar: the Tools dialog (the built-in calculator + JSON definitions, checked) and the
tool-result reply (the calculator's answer to the model's call, or one typed by the user).

Nothing here loses input: a bad definition keeps the dialog open with the message and the text as typed; a
call that fails puts its message in the reply dialog, where the user can type the result instead.
"""

from __future__ import annotations

import json

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from ..core import tools
from ..core.errors import ToolError
from ..core.events import RunRequest
from ..core.run import Run

EXAMPLE = ('[{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",\n'
           '  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]')


def combine(calculator: bool, definitions: str) -> str | None:
    """The checked JSON text of the calculator (if ticked) plus the typed definitions (ToolError if bad)."""
    typed = tools.tools_json(definitions)
    items = ([tools.CALCULATOR] if calculator else []) + (json.loads(typed) if typed else [])
    return tools.tools_json(items)


def split(text: str | None) -> tuple[bool, str]:
    """(calculator ticked, the other definitions as JSON text) of a request's tools."""
    items = tools.tool_list(text) or []
    calculator = tools.CALCULATOR in items
    rest = [t for t in items if t != tools.CALCULATOR]
    return calculator, json.dumps(rest, indent=1) if rest else ""


def _message_and_buttons(dialog: QDialog, layout: QVBoxLayout, ok_text: str | None = None) -> QLabel:
    """A dialog's error line (hidden until a mistake is shown; nothing typed is lost) and its OK / Cancel."""
    message = QLabel()
    message.setWordWrap(True)
    message.setStyleSheet("color: #b00020;")
    message.hide()
    layout.addWidget(message)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
    if ok_text:
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText(ok_text)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    layout.addWidget(buttons)
    return message


class ToolsDialog(QDialog):
    """Which tools the model is told about. OK checks the JSON; a mistake is shown and nothing is lost."""

    def __init__(self, current: str | None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Tools for chat mode")
        self.result_json: str | None = current
        calculator, rest = split(current)
        layout = QVBoxLayout(self)
        self.calculator = QCheckBox("Calculator (built in: arithmetic, answered here when the model calls it)")
        self.calculator.setChecked(calculator)
        layout.addWidget(self.calculator)
        layout.addWidget(QLabel("More tool definitions (JSON schema, as transformers' chat templates take them); "
                                "results for these are typed by you:"))
        self.definitions = QPlainTextEdit(rest)
        self.definitions.setPlaceholderText(EXAMPLE)
        self.definitions.setMinimumSize(520, 160)
        layout.addWidget(self.definitions, 1)
        self.message = _message_and_buttons(self, layout)

    def accept(self) -> None:
        try:
            self.result_json = combine(self.calculator.isChecked(), self.definitions.toPlainText())
        except ToolError as exc:
            self.message.setText(str(exc))
            self.message.show()
            return  # stays open with the text as typed
        super().accept()


def suggested_result(run: Run) -> tuple[str, str]:
    """(result, note) for the reply dialog: the built-in tool's answer to the model's call, or "" and why not."""
    try:
        calls = tools.parse_tool_calls(tools.reply_text(run))
        if not calls:
            return "", "The reply holds no <tool_call>: type the tool's result if you want to give one."
        return "\n".join(tools.call_tool(c) for c in calls), "The built-in calculator answered the call:"
    except ToolError as exc:
        return "", f"{exc}"


class ToolResultDialog(QDialog):
    """The tool message to append after the model's reply (prefilled with the calculator's answer)."""

    def __init__(self, run: Run, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Reply with a tool result")
        self.run = run
        self.request: RunRequest | None = None
        result, note = suggested_result(run)
        layout = QVBoxLayout(self)
        self.note = QLabel(note)
        self.note.setWordWrap(True)
        layout.addWidget(self.note)
        self.text = QPlainTextEdit(result)
        self.text.setMinimumSize(420, 80)
        layout.addWidget(self.text, 1)
        self.message = _message_and_buttons(self, layout, ok_text="Send as tool message and continue")

    def accept(self) -> None:
        try:
            self.request = tools.follow_up(self.run, self.text.toPlainText())
        except ToolError as exc:
            self.message.setText(str(exc))
            self.message.show()
            return
        super().accept()
