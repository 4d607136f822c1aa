"""The main window: prompt, panels (one dock each, from the registry), timeline, status bar.

The window owns its widgets and is composed of objects whose names say what they own:

    runs    RunController   the engine (EngineHost) and the runs: submit, stream, stop, the run on screen
    models  ModelControl    the model box and model loading (progress, refusals)
    files   FileActions     open / save runs, export panels, diagnostics, drops
    safety  SafetyPrompts   opt-in dialogs, the capture memory budget, prompt files
    state   WindowState     layout and settings (restore at start, save at close)

Every panel gets the same `PanelServices` at creation (run a prompt, re-run, open a panel, submit an
engine job). The window's public methods (run_prompt, load_model, open_run, ...) delegate to these.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTabBar,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from ..core import catalogue
from ..core.events import RunRequest
from ..core.run import Run
from . import theme
from .docks import PanelDock
from .file_actions import FileActions
from .layout_state import WindowState
from .menus import build_menus
from .model_control import ModelControl
from .panels import REGISTRY
from .panels.base import PanelServices
from .prompt_bar import PromptBar
from .run_control import RunController
from .safeguards import SafetyPrompts
from .screen_fit import ScreenFit, default_layout
from .selection import Selection
from .settings import Settings, disarm_qt_unpickling, open_settings
from .timeline import Timeline
from .widgets.background import Background
from .widgets.status_line import StatusLine

log = logging.getLogger(__name__)


class MainWindow(QMainWindow):
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
        self.info = None  # ModelInfo of the loaded model
        self._loading_spec: str | None = None
        self._closed = False
        self.last_error = ""  # the last error shown, for Help > Copy diagnostics
        first_launch = not self.settings.contains("model")
        self._autorun = first_launch if autorun is None else autorun

        self.runs = RunController(self)
        self.models = ModelControl(self)
        self.files = FileActions(self)
        self.safety = SafetyPrompts(self)
        self.state = WindowState(self)
        self.fit = ScreenFit(self)  # the dock layout chosen for the screen and text size
        self._build_prompt_dock()
        self.panel_services = PanelServices(run_prompt=self.run_text, rerun=self.submit, open_panel=self.open_panel,
                                            submit_job=self.host.submit_job,
                                            submit_side_job=self.host.submit_side_job)
        self.docks: dict[str, PanelDock] = {}
        for name in (panels if panels is not None else list(REGISTRY)):
            self.docks[name] = PanelDock(name, self.selection, self, services=self.panel_services)
        self.setDockNestingEnabled(True)
        self.fit.set_plan(self.fit.wanted_plan())
        self._build_toolbar()
        self._build_status()
        build_menus(self)
        self.selection.changed.connect(self._selection_changed)
        theme.events().colormap_changed.connect(self.colormap_changed)
        self.state.restore()
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
        self.timeline.set_describer(lambda step: self.runs.describe_step(step))
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
        self.prompt_bar.tool_reply_clicked.connect(self.reply_with_tool_result)

    def _build_toolbar(self) -> None:
        """The model box sits in the menu bar's corner: a row of its own would cost the docks a line of height."""
        self.model_corner = corner = QWidget()  # held: setCornerWidget does not give the menu bar ownership
        corner.setObjectName("model-corner")
        row = QHBoxLayout(corner)
        row.setContentsMargins(8, 0, 4, 0)
        row.addWidget(QLabel("Model"))
        self.model_combo = self.models.combo
        self.models._fill_model_combo()
        row.addWidget(self.model_combo)
        self.menuBar().setCornerWidget(corner, Qt.TopRightCorner)

    def _build_status(self) -> None:
        status = self.statusBar()
        self.status_model = QLabel("no model")
        # figures that change at every step: as wide as their widest text, so a step relays out nothing
        self.status_tokens = StatusLine(chars=0, policy=QSizePolicy.Preferred)
        self.status_speed = StatusLine(chars=0, policy=QSizePolicy.Preferred)
        self.status_memory = StatusLine(chars=0, policy=QSizePolicy.Preferred)
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
        """The default docks for the screen's plan (View > Reset layout; see screen_fit.default_layout)."""
        default_layout(self, self.fit.plan or "wide")

    def open_panel(self, name: str) -> bool:
        """Show the panel registered as `name` and bring it to the front (a panel's link asks for this)."""
        dock = self.docks.get(name)
        if dock is None:
            log.info("no panel named %r to open", name)
            return False
        dock.show()
        dock.raise_()
        return True

    def run_text(self, text: str) -> None:
        """Put `text` in the prompt editor (plain mode) and run it."""
        self.prompt_bar.show_request(replace(self.prompt_bar.request(), prompt=text, chat=False))
        self.run_prompt()

    # --- the public surface, delegated to the objects that own it ------------------------------------
    @property
    def host(self):
        """The engine's Qt adapter (EngineHost): the one road to the model."""
        return self.runs.host

    @property
    def run(self) -> Run | None:
        """The run on screen."""
        return self.runs.run

    @property
    def running(self) -> bool:
        return self.runs.running

    def run_prompt(self) -> None:
        self.runs.run_prompt()

    def submit(self, request: RunRequest) -> None:
        self.runs.submit(request)

    def stop(self) -> None:
        self.runs.stop()

    def step_one_token(self) -> None:
        self.runs.step_one_token()

    def reply_with_tool_result(self) -> None:
        """Answer the model's tool call in the run on screen (ui/tools_dialog.py) and continue the conversation."""
        from .tools_dialog import ToolResultDialog

        run = self.runs.run
        if run is None or not run.request.chat or not run.n_generated or self.runs.running:
            self.show_banner("A tool result answers the reply of a finished chat-mode run: run a chat prompt first.")
            return
        dialog = ToolResultDialog(run, self)
        if dialog.exec() and dialog.request is not None:
            self.prompt_bar.show_request(dialog.request)
            self.submit(dialog.request)

    def show_run(self, run: Run | None, follow: bool = False) -> None:
        self.runs.show_run(run, follow)

    def detach_stream(self) -> None:
        self.runs.detach_stream()

    def open_run(self, path: str | Path) -> bool:
        return self.files.open_run(path)

    def save_run(self, path: str | Path) -> bool:
        return self.files.save_run(path)

    def export_panel(self, name: str, path: str | Path) -> bool:
        return self.files.export_panel(name, path)

    def copy_diagnostics(self) -> str:
        return self.files.copy_diagnostics()

    def open_prompt_file(self, path: str | Path) -> bool:
        return self.safety.open_prompt_file(path)

    def review_unsafe_model(self, spec: str, needs: str) -> None:
        self.safety.review_unsafe_model(spec, needs)

    @property
    def unsafe_dialog(self):
        return self.safety.unsafe_dialog

    def capture_budget(self) -> int:
        return self.safety.capture_budget()

    def set_capture_budget(self, gib: float) -> None:
        self.safety.set_capture_budget(gib)

    def store_setting(self, key: str, value) -> bool:
        return self.state.store_setting(key, value)

    def reset_layout(self) -> None:
        self.state.reset_layout()

    def childEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().childEvent(event)
        if event.type() == QEvent.ChildPolished and isinstance(event.child(), QTabBar):
            theme.keep_tab_names_whole(event.child())  # the tab bars of docks tabbed together

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.state.shown()
        self.fit.refit()  # now on its screen: the plan, presenter text size and size for that screen

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self.files.dropped_path(event) is not None:
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.files.drop(event)

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
        """Load a model on the engine (a run in progress is stopped first, so the switch is prompt)."""
        self.models.load_model(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)

    def open_model_dialog(self) -> None:
        self.models.open_model_dialog()

    # --- selection & keyboard ---------------------------------------------------------------------
    def _selection_changed(self, field: str) -> None:
        if field == "step" and self.run is not None:
            self.statusBar().showMessage(f"step {self.selection.step}: {self.runs.describe_step(self.selection.step)}",
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
    def set_presenter(self, on: bool, full_screen: bool = True) -> None:
        """Presenter mode: big text sized for the screen, high contrast, colour-blind-safe maps, full screen."""
        self.presenter_action.blockSignals(True)  # its toggled signal calls this method
        self.presenter_action.setChecked(on)
        self.presenter_action.blockSignals(False)
        theme.apply(presenter=on)
        if not full_screen:
            return
        if on:
            self.showFullScreen()
        else:
            self.showNormal()

    def set_theme(self, name: str) -> None:
        theme.apply(name=name)
        self.store_setting("theme", name)

    def zoom(self, factor: float | None) -> None:
        """Text size: times `factor` (View > Zoom in / out), or back to 1 with None; plots and layout follow."""
        zoom = 1.0 if factor is None else theme.state().zoom * factor
        theme.apply(zoom=zoom)
        self.store_setting("zoom", theme.state().zoom)

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
            self.state.save_settings()
            self.host.shutdown()
            Background.pool().waitForDone(5000)  # one pool for every panel's analyses (their results are not shown)
        super().closeEvent(event)
