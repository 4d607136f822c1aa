"""The main window's menus and keyboard shortcuts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QActionGroup, QKeySequence
from PySide6.QtWidgets import QFileDialog

from . import theme
from .export import documents_dir
from .tours import build_tours_menu

if TYPE_CHECKING:
    from .main_window import MainWindow


def build_menus(w: MainWindow) -> None:
    bar = w.menuBar()
    file = bar.addMenu("&File")
    w.shortcut("Open model folder or GGUF...", QKeySequence.Open, w.open_model_dialog, file)
    file.addAction("Load prompt from text file...", w.safety.open_prompt_dialog)
    file.addSeparator()
    w.shortcut("Open run...", "Ctrl+Shift+O", lambda: _open_run(w), file)
    w.shortcut("Save run...", QKeySequence.Save, lambda: _save_run(w), file)
    w.shortcut("Export panel...", "Ctrl+E", w.files.export_panel_dialog, file)
    file.addSeparator()
    w.shortcut("Quit", QKeySequence.Quit, w.close, file)

    run = bar.addMenu("&Run")
    w.run_action = w.shortcut("Run", "Ctrl+Return", w.run_prompt, run)
    w.shortcut("Run", "Ctrl+Enter", w.run_prompt)  # the keypad Enter
    w.stop_action = w.shortcut("Stop", "Esc", w.stop, run)
    w.shortcut("Step one token", "Ctrl+Right", w.step_one_token, run)
    run.addSeparator()
    run.addAction("Capture memory budget...", w.safety.capture_budget_dialog)

    nav = bar.addMenu("&Navigate")
    for text, key, name in (("Previous step / token", "Left", "left"), ("Next step / token", "Right", "right"),
                            ("Previous token", "Shift+Left", "shift-left"),
                            ("Next token", "Shift+Right", "shift-right"),
                            ("Next layer", "Up", "up"), ("Previous layer", "Down", "down"),
                            ("Previous head", "PgUp", "pageup"), ("Next head", "PgDown", "pagedown")):
        w.shortcut(text, key, lambda _=False, n=name: w.navigate(n), nav)
    nav.addSeparator()
    w.shortcut("Play / pause replay", "Space", lambda: w.timeline.set_playing(not w.timeline.timer.isActive()), nav)

    view = bar.addMenu("&View")
    w.presenter_action = w.shortcut("Presenter mode", "F11", w.set_presenter, view, checkable=True)
    themes = view.addMenu("Theme")
    group = QActionGroup(w)
    current = str(w.settings.value("theme", "light"))
    for name in theme.THEMES:
        action = themes.addAction(name.title())
        action.setCheckable(True)
        action.setChecked(name == current)
        action.triggered.connect(lambda _=False, n=name: w.set_theme(n))
        group.addAction(action)
    w.shortcut("Zoom in", QKeySequence.ZoomIn, lambda: w.zoom(1.15), view)
    w.shortcut("Zoom in", "Ctrl+=", lambda: w.zoom(1.15))  # Ctrl++ without Shift on most keyboards
    w.shortcut("Zoom out", QKeySequence.ZoomOut, lambda: w.zoom(1 / 1.15), view)
    w.shortcut("Actual size", "Ctrl+0", lambda: w.zoom(None), view)
    view.addSeparator()
    panels = view.addMenu("Panels")
    for dock in w.docks.values():
        panels.addAction(dock.toggleViewAction())
    w.shortcut("Show all help", "F1", lambda on: [d.set_help_visible(on) for d in w.docks.values()], view,
               checkable=True)
    view.addSeparator()
    w.shortcut("Reset layout", "Ctrl+Shift+R", w.reset_layout, view)

    build_tours_menu(w)

    help_menu = bar.addMenu("&Help")
    help_menu.addAction("About LM Explorer", w.files.about)
    help_menu.addAction("Copy diagnostics", w.copy_diagnostics)
    for action in w.actions():
        action.setShortcutVisibleInContextMenu(True)
    w.setContextMenuPolicy(Qt.NoContextMenu)


def _open_run(w: MainWindow) -> None:
    path, _ = QFileDialog.getOpenFileName(w, "Open run", documents_dir(), "LM Explorer runs (*.npz);;All files (*)")
    if path:
        w.open_run(path)


def _save_run(w: MainWindow) -> None:
    if w.run is None:
        w.show_banner("There is no run to save yet.")
        return
    path, _ = QFileDialog.getSaveFileName(w, "Save run", str(Path(documents_dir()) / "run.npz"),
                                          "LM Explorer runs (*.npz)")
    if path:
        w.save_run(path if path.endswith(".npz") else path + ".npz")
