"""SafetyPrompts (owned by MainWindow): opt-in for unsafe model folders, the capture memory budget,
prompts loaded from files with their decoding warnings.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QInputDialog,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import InputError
from ..core.textin import decode_prompt_bytes, read_user_file
from .export import documents_dir

log = logging.getLogger(__name__)
MAX_PROMPT_FILE = 16 * 2**20  # bytes; a prompt file above this is refused (the editor would crawl)

OPT_INS = {
    "trust_remote_code": (
        "Allow code from this model folder (trust_remote_code)",
        "This model folder ships Python code that runs when the model loads. That code can do anything your "
        "user account can: read or delete files, send data away. Tick the box only if you trust the people "
        "who made this folder and where you got it from.",
    ),
    "allow_pickle": (
        "Allow pickle weights from this model folder (*.bin / *.pt)",
        "This model folder has only pickle checkpoints. Loading them uses torch.load with weights_only=True, "
        "which refuses code, but pickle files are still a common way to smuggle code. Tick the box only if "
        "you trust where the folder came from; prefer a safetensors copy.",
    ),
}


class UnsafeModelDialog(QDialog):
    """Explains why a model was refused; Load stays disabled until the opt-in box is ticked."""

    def __init__(self, spec: str, needs: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Load a model that was refused?")
        self.needs = needs
        label, explanation = OPT_INS.get(needs, (f"Allow {needs}", "This model needs an unsafe option."))
        layout = QVBoxLayout(self)
        text = QLabel(f"<b>{Path(spec).name or spec}</b> was refused.<br><br>{explanation}")
        text.setWordWrap(True)
        layout.addWidget(text)
        self.checkbox = QCheckBox(label)
        layout.addWidget(self.checkbox)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Cancel)
        self.load_button = self.buttons.addButton("Load", QDialogButtonBox.AcceptRole)
        self.load_button.setEnabled(False)
        self.checkbox.toggled.connect(self.load_button.setEnabled)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.setMinimumWidth(480)

    def options(self) -> dict[str, bool]:
        """Keyword arguments for load_model: only the option this dialog is about, only when ticked."""
        ticked = self.checkbox.isChecked()
        return {"trust_remote_code": ticked and self.needs == "trust_remote_code",
                "allow_pickle": ticked and self.needs == "allow_pickle"}


class SafetyPrompts(QObject):
    """Owns the opt-in dialogs and the user's safety limits: the unsafe-model opt-in, the capture memory
    budget, prompts read from files (size-checked, decoding warnings shown)."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self.unsafe_dialog: UnsafeModelDialog | None = None  # the last opt-in dialog (tests reach it here)
        window.host.capture_budget = self.capture_budget()
        window.host.capture_reduced.connect(self._capture_reduced)

    def review_unsafe_model(self, spec: str, needs: str) -> None:
        """The opt-in dialog for a refused model (remote code or pickle weights); loads only if ticked."""
        dialog = UnsafeModelDialog(spec, needs, self.w)
        self.unsafe_dialog = dialog  # tests reach it here
        dialog.accepted.connect(lambda: self.w.load_model(spec, **dialog.options()))
        dialog.open()

    # --- capture memory budget --------------------------------------------------------------------
    def capture_budget(self) -> int:
        """Bytes a run may use for its captured arrays before it stores less (settings, default 4 GiB).

        The store has already refused a stored value that is not a finite number in range."""
        from ..core.budget import DEFAULT_BUDGET, GIB

        gib = self.w.settings.value("capture_budget_gib", DEFAULT_BUDGET / GIB)
        if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not math.isfinite(gib) or gib <= 0:
            gib = DEFAULT_BUDGET / GIB
        return max(1, min(int(gib * GIB), 2**62))

    def set_capture_budget(self, gib: float) -> None:
        """Store a new budget; a value that is not a positive finite number is refused with a banner."""
        try:
            self.w.settings.setValue("capture_budget_gib", float(gib))
        except (TypeError, ValueError, OverflowError) as exc:
            self.w.show_banner(f"Capture memory budget not changed: {exc}.")
            return
        self.w.host.capture_budget = self.capture_budget()

    def _capture_reduced(self, run_id: int, message: str) -> None:
        if run_id == self.w.host.active_id:
            log.info("capture reduced: %s", message)
            self.w.show_banner(message, error=False)

    def capture_budget_dialog(self) -> None:
        from ..core.budget import GIB

        gib, ok = QInputDialog.getDouble(
            self.w, "Capture memory budget",
            "Most memory a run may use for its captured arrays (GiB).\nAbove it, a run stores less "
            "(no values or block outputs, then no per-layer residuals) and says so.",
            self.capture_budget() / GIB, 0.01, 1024.0, 2)
        if ok:
            self.set_capture_budget(gib)

    # --- prompts from files -----------------------------------------------------------------------
    def open_prompt_file(self, path: str | Path) -> bool:
        """Put a text file's content in the prompt editor; undecodable bytes are replaced, with a warning.

        Only a regular file of at most MAX_PROMPT_FILE bytes is read (a FIFO or device could block forever)."""
        path = Path(path)
        try:  # a FIFO, device or folder is refused before any read; so is a file over the limit
            data = read_user_file(path, MAX_PROMPT_FILE, "prompt file")
        except InputError as exc:
            self.w.show_banner(str(exc))
            return False
        text, warnings = decode_prompt_bytes(data)
        self.w.prompt_bar.prompt.setPlainText(text)
        if warnings:
            self.w.show_banner(f"Loaded {path.name} into the prompt. " + " ".join(warnings), error=False)
        else:
            self.w.hide_banner()
            self.w.statusBar().showMessage(f"loaded {path.name} ({len(text):,} characters)", 5000)
        return True

    def open_prompt_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.w, "Load prompt from a text file", documents_dir(),
                                              "Text (*.txt *.md *.py *.json);;All files (*)")
        if path:
            self.open_prompt_file(path)
