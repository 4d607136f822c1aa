"""The main window: prompt, panels (one dock each, from the registry), timeline, status bar.

The worker streams StepEvents; this window grows the Run with `run.apply(event)` on the GUI
thread and hands it to every panel (`set_run` on the first event, `on_step` after).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from ..core import catalogue
from ..core.events import RunRequest
from ..core.run import Run
from . import theme
from .docks import PanelDock
from .export import documents_dir
from .file_actions import FileActions
from .layout_state import WindowState
from .menus import build_menus
from .panels import REGISTRY
from .prompt_bar import PromptBar
from .run_control import RunControl
from .safeguards import Safeguards
from .selection import Selection
from .settings import Settings, disarm_qt_unpickling, open_settings, push_recent, recent
from .timeline import Timeline
from .widgets.background import Background
from .worker import WorkerHost

log = logging.getLogger(__name__)
OPEN_MODEL = "__open__"
# default dock placement by panel name (a panel class may also set `dock_area = "left" | "right" | "bottom"`)
_LEFT_HINTS = ("token",)
_RIGHT_TOP_HINTS = ("attention",)
_RAISE_HINTS = ("depth",)  # the tab shown first in the tabbed group


class MainWindow(RunControl, FileActions, Safeguards, WindowState, QMainWindow):
    colormap_changed = Signal(str)  # panels may also use theme.colormap() / theme.events()
    run_done = Signal(str)  # finish reason ("max_tokens", "eos", "prompt_only", "cancelled", "error")
    model_ready = Signal(object)  # ModelInfo
    model_failed = Signal(str)
    run_opened = Signal(bool)  # a run file was read and shown (True) or refused with a banner (False)

    def __init__(self, settings: Settings | None = None, *, model: str | None = None, autoload: bool = True,
                 autorun: bool | None = None, panels: list[str] | None = None):
        disarm_qt_unpickling()  # Qt's own settings (file dialogs) must never unpickle either
        super().__init__()
        self.setWindowTitle("LM Explorer")
        self.setAcceptDrops(True)
        self.settings = settings if settings is not None else open_settings()
        self.selection = Selection(self)
        self.host = WorkerHost(self)
        self.info = None  # ModelInfo of the loaded model
        self.run: Run | None = None  # the run on screen
        self.running = False
        self._incoming: tuple[int, Run] | None = None
        self._stream_run: Run | None = None  # the run the worker's stream grows (steps for any other are stale)
        self._last_request: RunRequest | None = None
        self._loading_spec: str | None = None
        self._closed = False
        self.last_error = ""  # the last error shown, for Help > Copy diagnostics
        first_launch = not self.settings.contains("model")
        self._autorun = first_launch if autorun is None else autorun

        self._build_prompt_dock()
        self.docks: dict[str, PanelDock] = {}
        for name in (panels if panels is not None else list(REGISTRY)):
            dock = PanelDock(name, self.selection, self)
            self.docks[name] = dock
        self.setDockNestingEnabled(True)
        self.apply_default_layout()
        self._build_toolbar()
        self._build_status()
        build_menus(self)
        self._connect_worker()
        self._connect_panels()
        self.selection.changed.connect(self._selection_changed)
        theme.events().colormap_changed.connect(self.colormap_changed)
        self._restore_settings()
        if autoload:
            self.load_model(model or str(self.settings.value("model", catalogue.default_model_name())))

    # --- construction ---------------------------------------------------------------------------
    def _build_prompt_dock(self) -> None:
        holder = QWidget()
        layout = QVBoxLayout(holder)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.banner = QWidget()
        row = QHBoxLayout(self.banner)
        row.setContentsMargins(8, 4, 8, 4)
        self.banner_label = QLabel()
        self.banner_label.setWordWrap(True)
        self.banner_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.banner_action = QPushButton()
        self.banner_action.hide()
        self.banner_action.clicked.connect(self._banner_clicked)
        close = QPushButton("Dismiss")
        close.clicked.connect(self.hide_banner)
        row.addWidget(self.banner_label, 1)
        row.addWidget(self.banner_action)
        row.addWidget(close)
        self.banner.hide()
        self._banner_callback = None
        self.prompt_bar = PromptBar()
        self.timeline = Timeline(self.selection)
        self.timeline.set_describer(self._describe_step)
        layout.addWidget(self.banner)
        layout.addWidget(self.prompt_bar)
        layout.addWidget(self.timeline)
        self.prompt_dock = QToolBar("Prompt", self)  # a toolbar keeps its natural height; docks fill the rest
        self.prompt_dock.setObjectName("toolbar-prompt")
        self.prompt_dock.setMovable(False)
        self.prompt_dock.setFloatable(False)
        self.prompt_dock.toggleViewAction().setEnabled(False)
        self.prompt_dock.addWidget(holder)
        central = QWidget()
        central.setMaximumSize(0, 0)
        self.setCentralWidget(central)
        central.hide()
        self.addToolBar(Qt.TopToolBarArea, self.prompt_dock)
        self.prompt_bar.run_clicked.connect(self.run_prompt)
        self.prompt_bar.stop_clicked.connect(self.stop)
        self.prompt_bar.step_clicked.connect(self.step_one_token)

    def _build_toolbar(self) -> None:
        bar = QToolBar("Model", self)
        bar.setObjectName("toolbar-model")
        bar.setMovable(False)
        self.insertToolBar(self.prompt_dock, bar)
        self.insertToolBarBreak(self.prompt_dock)
        bar.addWidget(QLabel(" Model "))
        self.model_combo = QComboBox()
        self.model_combo.setMinimumContentsLength(24)
        self.model_combo.setToolTip("Pick a built-in model, or open a model folder or .gguf file "
                                    "(you can also drop one on the window)")
        self._fill_model_combo()
        self.model_combo.activated.connect(self._model_combo_activated)
        bar.addWidget(self.model_combo)

    def _fill_model_combo(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for name in catalogue.builtin_names():
            entry = catalogue.get(name)
            self.model_combo.addItem(name, name)
            self.model_combo.setItemData(self.model_combo.count() - 1, entry.description, Qt.ToolTipRole)
        for path in recent(self.settings, "recent_models"):
            if catalogue.get(path) is None:
                self.model_combo.addItem(Path(path).name, path)
                self.model_combo.setItemData(self.model_combo.count() - 1, path, Qt.ToolTipRole)
        self.model_combo.insertSeparator(self.model_combo.count())
        self.model_combo.addItem("Open model folder or GGUF...", OPEN_MODEL)
        self.model_combo.blockSignals(False)
        self._show_model_in_combo()

    def _show_model_in_combo(self) -> None:
        current = self.info.name if self.info is not None else None
        spec = str(self.settings.value("model", "")) or current
        for i in range(self.model_combo.count()):
            if self.model_combo.itemData(i) in (spec, current):
                self.model_combo.setCurrentIndex(i)
                return

    def _build_status(self) -> None:
        status = self.statusBar()
        self.status_model = QLabel("no model")
        self.status_tokens = QLabel("")
        self.status_speed = QLabel("")
        self.status_memory = QLabel("")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(260)
        self.progress.setFormat("loading %p%")
        self.progress.hide()
        for w in (self.status_model, self.status_tokens, self.status_speed, self.status_memory):
            w.setContentsMargins(8, 0, 8, 0)
            status.addPermanentWidget(w)
        status.addPermanentWidget(self.progress)

    def apply_default_layout(self) -> None:
        """Tokens on the left, attention on the right, the rest tabbed below it (View > Reset layout)."""
        left, right_top, rest = [], [], []
        for name, dock in self.docks.items():
            area = getattr(dock.panel, "dock_area", None)
            if area == "left" or (area is None and any(h in name for h in _LEFT_HINTS)):
                left.append(dock)
            elif area == "right" or (area is None and any(h in name for h in _RIGHT_TOP_HINTS)):
                right_top.append(dock)
            else:
                rest.append(dock)
        if not right_top and rest:
            right_top.append(rest.pop(0))
        for dock in self.docks.values():
            dock.setFloating(False)
            self.removeDockWidget(dock)
        for dock in left:
            self.addDockWidget(Qt.LeftDockWidgetArea, dock, Qt.Vertical)
        for dock in right_top:
            self.addDockWidget(Qt.RightDockWidgetArea, dock, Qt.Vertical)
        if rest:
            shown = next((d for d in rest if any(h in d.name for h in _RAISE_HINTS)), rest[0])
            rest.remove(shown)
            rest.insert(0, shown)  # the first dock of a tab group stays the visible tab
            self.addDockWidget(Qt.RightDockWidgetArea, rest[0], Qt.Vertical)
            for dock in rest[1:]:
                self.tabifyDockWidget(rest[0], dock)
            shown.raise_()
        for dock in self.docks.values():
            dock.show()
        if left and (right_top or rest):
            self.resizeDocks([left[0], (right_top or rest)[0]], [600, 1000], Qt.Horizontal)
        if right_top and rest:  # the tabbed group (layer depth first) gets a little more than attention
            self.resizeDocks([right_top[0], rest[0]], [330, 430], Qt.Vertical)

    def _connect_worker(self) -> None:
        w = self.host.worker
        w.load_progress.connect(self._load_progress)
        w.model_loaded.connect(self._model_loaded)
        w.load_failed.connect(self._load_failed)
        w.run_started.connect(self._run_started)
        w.step.connect(self._step)
        w.run_finished.connect(self._run_finished)
        w.run_failed.connect(self._run_failed)
        w.truncated.connect(self._truncated)
        w.capture_reduced.connect(self._capture_reduced)
        w.capture_budget = self.capture_budget()

    def _connect_panels(self) -> None:
        """Optional panel hooks: a model provider for panels that re-compute (eviction, depth attention)
        and prompt requests (the attention panel's induction test)."""
        for dock in self.docks.values():
            panel = dock.panel
            if panel is None:
                continue
            if hasattr(panel, "model_provider"):
                panel.model_provider = self.loaded_model
            if hasattr(panel, "request_prompt"):
                panel.request_prompt.connect(self.run_text)
            if hasattr(panel, "rerun"):
                panel.rerun.connect(self.submit)

    def loaded_model(self):
        """The LoadedModel the worker holds (None before a model is loaded); read-only use off the worker."""
        session = self.host.worker.session
        return None if session is None else session.loaded

    def run_text(self, text: str) -> None:
        """Put `text` in the prompt editor (plain mode) and run it."""
        self.prompt_bar.show_request(replace(self.prompt_bar.request(), prompt=text, chat=False))
        self.run_prompt()

    # --- banner -----------------------------------------------------------------------------------
    def show_banner(self, text: str, *, error: bool = True, action: str | None = None, callback=None) -> None:
        colour = "#fde2e4" if error else "#e3f0ff"
        self.banner.setStyleSheet(f"background: {colour}; color: #1a1a1a;")
        self.banner_label.setText(text)
        self.banner_action.setVisible(action is not None)
        self.banner_action.setText(action or "")
        self._banner_callback = callback
        if error:
            self.last_error = text
            log.warning("shown to the user: %s", text)
        self.banner.show()
        self.statusBar().showMessage(text.split("\n")[0][:160], 10000)

    def hide_banner(self) -> None:
        self.banner.hide()
        self._banner_callback = None

    def banner_text(self) -> str:
        return self.banner_label.text() if self.banner.isVisible() or not self.banner.isHidden() else ""

    def _banner_clicked(self) -> None:
        callback = self._banner_callback
        self.hide_banner()
        if callback is not None:
            callback()

    # --- model ------------------------------------------------------------------------------------
    def load_model(self, spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> None:
        """Load a model on the worker (a run in progress is stopped first, so the switch is prompt)."""
        self.stop()
        self._loading_spec = spec
        self.progress.setValue(0)
        self.progress.show()
        self.status_model.setText(f"loading {Path(spec).name or spec}...")
        self.host.load(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)

    def _load_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(fraction * 1000))
        self.progress.setToolTip(message)
        self.statusBar().showMessage(message, 3000)

    def _model_loaded(self, info) -> None:
        if self.run is not None and self.run.info.name != info.name:  # issue 18: no panel keeps the old model's data
            self.show_run(None)
        self.info = info
        spec = self._loading_spec or info.name
        self.progress.hide()
        self.store_setting("model", spec)
        if catalogue.get(spec) is None:
            push_recent(self.settings, "recent_models", spec)
            self._fill_model_combo()
        self._show_model_in_combo()
        self.status_model.setText(f"{info.name} · {info.n_layers} layers · {info.n_heads} heads "
                                  f"({info.n_kv_heads} KV)")
        self.prompt_bar.set_context_limit(info.context_length if info.is_causal else None)
        self.model_ready.emit(info)
        if self._autorun:
            self._autorun = False
            self.run_prompt()

    def _load_failed(self, spec: str, message: str, needs: str = "") -> None:
        self.progress.hide()
        still = f"The previous model ({self.info.name}) stays loaded." if self.info else "No model is loaded."
        self.status_model.setText(self.info.name if self.info else "no model")
        self._show_model_in_combo()
        if needs:  # refused for safety: offer the opt-in, behind a dialog that says what it means
            self.show_banner(f"Refused to load the model {spec}:\n{message}\n{still}", action="Review options...",
                             callback=lambda: self.review_unsafe_model(spec, needs))
        else:
            self.show_banner(f"Could not load the model {spec}:\n{message}\n{still}")
        self.model_failed.emit(message)

    def _model_combo_activated(self, index: int) -> None:
        data = self.model_combo.itemData(index)
        if data == OPEN_MODEL:
            self._show_model_in_combo()
            self.open_model_dialog()
        elif data:
            self.load_model(str(data))

    def open_model_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open model: a .gguf file, or any file inside a Hugging Face model folder", documents_dir(),
            "Models (*.gguf config.json *.safetensors);;All files (*)")
        if path:
            p = Path(path)
            self.load_model(str(p if p.suffix.lower() == ".gguf" else p.parent))

    # --- selection & keyboard ---------------------------------------------------------------------
    def _selection_changed(self, field: str) -> None:
        if field == "step" and self.run is not None:
            self.statusBar().showMessage(f"step {self.selection.step}: {self._describe_step(self.selection.step)}",
                                         3000)

    def navigate(self, key: str) -> None:
        """Keyboard navigation: left/right (step, or token if the run has one step), up/down (layer),
        pageup/pagedown (head), shift-left/shift-right (token)."""
        sel = self.selection
        by_step = self.run is not None and len(self.run.steps) > 1
        moves = {"left": ("step" if by_step else "position", -1), "right": ("step" if by_step else "position", 1),
                 "shift-left": ("position", -1), "shift-right": ("position", 1),
                 "up": ("layer", 1), "down": ("layer", -1), "pageup": ("head", -1), "pagedown": ("head", 1)}
        field, delta = moves[key]
        sel.move(field, delta)

    # --- presenter & theme ------------------------------------------------------------------------
    def set_presenter(self, on: bool) -> None:
        self.presenter_action.setChecked(on)
        theme.apply(presenter=on)
        if on:
            self.showFullScreen()
        else:
            self.showNormal()

    def set_theme(self, name: str) -> None:
        theme.apply(name=name)
        self.store_setting("theme", name)

    # --- shortcuts & shutdown -------------------------------------------------------------------
    def shortcut(self, text: str, keys: str | QKeySequence, slot, menu=None, checkable: bool = False) -> QAction:
        action = QAction(text, self)
        action.setShortcut(QKeySequence(keys))
        action.setShortcutContext(Qt.WindowShortcut)
        action.setCheckable(checkable)
        (action.toggled if checkable else action.triggered).connect(slot)
        self.addAction(action)
        if menu is not None:
            menu.addAction(action)
        return action

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if not self._closed:
            self._closed = True
            self.timeline.set_playing(False)
            self.save_settings()
            self.host.shutdown()
            Background.wait_idle(5000)  # one pool for every panel's analyses
        super().closeEvent(event)
