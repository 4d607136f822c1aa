"""Guided tours: a Tours menu, and a player docked at the bottom of the window that steps through a scene.

Each step (see tour_scripts.py) loads its prompt and runs it when the run on screen differs, raises a
panel, selects the layer / head / token to look at, and shows one paragraph whose numbers come from the
real run. Keyboard for a talk: Alt+Right next step, Alt+Left previous step, Alt+End ends the tour.
The tours run on the default model: the player loads it first when another model is loaded.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontMetricsF
from PySide6.QtWidgets import (
    QApplication,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..core import catalogue
from ..core.events import GenerationSettings, RunRequest
from . import theme
from .tour_scripts import TOURS, Facts, Step, Tour

if TYPE_CHECKING:
    from .main_window import MainWindow

log = logging.getLogger(__name__)
NEXT_KEYS, PREVIOUS_KEYS, END_KEYS = "Alt+Right", "Alt+Left", "Alt+End"


class TourPlayer(QDockWidget):
    """The tour's text, its step counter and Previous / Next buttons."""

    step_shown = Signal(str, int)  # tour key, step index: its facts are in `facts`, its text on screen
    step_failed = Signal(str)

    def __init__(self, window: MainWindow):
        super().__init__("Tour", window)
        self.setObjectName("dock-tour")
        self.w = window
        self.tour: Tour | None = None
        self.index = -1
        self.facts: Facts = {}
        self._pending: int | None = None  # the step waiting for a run or a model
        self._pending_job: int | None = None  # the step waiting for an engine job's result
        self.title = QLabel()
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.RichText)
        self.text.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.counter = QLabel()
        self.previous = QPushButton("◀ Previous")
        self.next = QPushButton("Next ▶")
        self.end = QPushButton("End tour")
        self.previous.clicked.connect(self.go_previous)
        self.next.clicked.connect(self.go_next)
        self.end.clicked.connect(self.stop)
        row = QHBoxLayout()
        row.addWidget(self.title, 1)
        row.addWidget(self.counter)
        row.addWidget(self.previous)
        row.addWidget(self.next)
        row.addWidget(self.end)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addLayout(row)
        layout.addWidget(self.text, 1)
        self.setWidget(body)
        self._fonts()
        theme.events().theme_changed.connect(self._theme_changed)  # presenter mode: bigger text
        window.run_done.connect(self._run_done)
        window.model_ready.connect(self._model_ready)

    def _fonts(self) -> None:
        base = QFont(QApplication.font())  # the app font: presenter mode makes it 1.5x
        text_font = QFont(base)
        text_font.setPointSizeF(max(base.pointSizeF(), 9.0) * 1.25)  # readable from the back of a room
        self.text.setFont(text_font)
        self.text.setMinimumHeight(int(QFontMetricsF(text_font).lineSpacing() * 4.3))  # a paragraph, not a line
        title_font = QFont(text_font)
        title_font.setBold(True)
        self.title.setFont(title_font)

    def _theme_changed(self, _name: str) -> None:
        self._fonts()
        if self.isVisible():
            self.w.resizeDocks([self], [self.minimumSizeHint().height() + 12], Qt.Vertical)

    # --- control ----------------------------------------------------------------------------------------------
    def start(self, key: str) -> None:
        self.tour = TOURS[key]
        self.facts = {}
        self.index = -1
        self.show()
        self.raise_()
        self.go(0)

    def stop(self) -> None:
        self.tour, self.index, self._pending, self._pending_job = None, -1, None, None
        self.hide()

    def go_next(self) -> None:
        if self.tour is not None and not self.busy and self.index + 1 < len(self.tour.steps):
            self.go(self.index + 1)

    def go_previous(self) -> None:
        if self.tour is not None and not self.busy and self.index > 0:
            self.go(self.index - 1)

    @property
    def busy(self) -> bool:
        return self._pending is not None or self._pending_job is not None

    def go(self, index: int) -> None:
        tour = self.tour
        if tour is None:
            return
        step = tour.steps[index]
        self.index = index
        self._update_header(step, waiting=True)
        default = catalogue.default_model_name()
        if self.w.info is None or self.w.info.name != default:
            self._pending = index
            self.text.setText(f"Loading {html.escape(default)}, the model these tours were written for...")
            if self.w._loading_spec != default:
                self.w.load_model(default)
            return
        request = self._request(step)
        run = self.w.run
        if self.w.running or run is None or not _same(run.request, request):
            self._pending = index
            self.text.setText("Running the prompt...")
            if self.w.running:
                self.w.stop()  # its run_done comes first; this step then submits its own
                return
            self._raise(step)  # visible before the run: e.g. the interventions panel keeps the run before as baseline
            self.w.prompt_bar.show_request(request)
            self.w.submit(request)
            return
        self._show(step)

    def _request(self, step: Step) -> RunRequest:
        ivs = step.interventions(self.facts) if step.interventions is not None else ()
        settings = GenerationSettings(max_new_tokens=step.max_new, temperature=0.0, stop_at_eos=False)
        return RunRequest(prompt=step.prompt, chat=step.chat, settings=settings, interventions=tuple(ivs))

    def _model_ready(self, _info) -> None:
        if self._pending is not None and self.tour is not None:
            index, self._pending = self._pending, None
            self.go(index)

    def _run_done(self, reason: str) -> None:
        if self._pending is None or self.tour is None:
            return
        index, self._pending = self._pending, None
        if reason in ("error",):
            self._fail(f"The run failed ({reason}).")
            return
        self.go(index)  # the run on screen now matches, or (after a stop) the step submits its own

    # --- showing a step ---------------------------------------------------------------------------------------
    def _show(self, step: Step) -> None:
        """State the step's facts; a step whose facts need the model asks the engine first (never the GUI thread)."""
        run = self.w.run
        if step.job is None:
            self._show_facts(step, run, None)
            return
        self._pending_job = self.index
        self.text.setText("Measuring on the model...")
        index = self.index

        def done(result) -> None:
            if self._pending_job == index and self.tour is not None and self.w.run is run:
                self._pending_job = None
                self._show_facts(step, run, result)

        def failed(message: str) -> None:
            self._pending_job = None
            self._fail(message)

        self.w.host.submit_job(step.job(run, self.facts), on_done=done, on_error=failed, key="tour")

    def _show_facts(self, step: Step, run, result) -> None:
        w = self.w
        try:
            if step.facts is not None:
                self.facts.update(step.facts(run, result, self.facts))
            text = step.text.format(**self.facts)
        except Exception as exc:  # a step that cannot state its facts says so instead of a wrong number
            log.exception("tour step failed")
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        self._raise(step)
        if step.lens is not None and "depth" in w.docks and w.docks["depth"].panel is not None:
            choice = w.docks["depth"].panel.lens_choice
            choice.set_model(run.info)
            choice.choose(step.lens(self.facts))
        where = step.select(run, self.facts) if step.select is not None else {}
        for name in ("layer", "head", "position"):
            if name in where and where[name] is not None and where[name] >= 0:
                w.selection.set(name, int(where[name]))
        self._update_header(step, waiting=False)
        self.text.setText(html.escape(text))
        self.step_shown.emit(self.tour.key, self.index)

    def _raise(self, step: Step) -> None:
        """Bring the step's panel (and tab) forward; a hidden panel skips runs, so this comes before a run too."""
        dock = self.w.docks.get(step.panel)
        if dock is None:
            return
        dock.show()
        dock.raise_()
        if step.tab is not None and dock.panel is not None:
            for tabs in dock.panel.findChildren(QTabWidget):
                titles = [tabs.tabText(i).replace("&&", "&") for i in range(tabs.count())]
                if step.tab in titles:
                    tabs.setCurrentIndex(titles.index(step.tab))

    def _update_header(self, step: Step, waiting: bool) -> None:
        tour = self.tour
        self.title.setText(f"{tour.title}: {step.title}")
        self.counter.setText(f"step {self.index + 1} of {len(tour.steps)}")
        self.previous.setEnabled(not waiting and self.index > 0)
        self.next.setEnabled(not waiting and self.index + 1 < len(tour.steps))

    def _fail(self, message: str) -> None:
        self.text.setText(f"<b>This step could not be shown:</b> {html.escape(message)}")
        if self.tour is not None:
            self.step_failed.emit(message)


def _same(a: RunRequest, b: RunRequest) -> bool:
    return (a.prompt, a.chat, a.settings.max_new_tokens, tuple(a.interventions)) == \
        (b.prompt, b.chat, b.settings.max_new_tokens, tuple(b.interventions))


def player(w: MainWindow) -> TourPlayer:
    p = getattr(w, "tour_player", None)
    if p is None:
        p = TourPlayer(w)
        w.tour_player = p
        w.addDockWidget(Qt.BottomDockWidgetArea, p)
        w.resizeDocks([p], [p.minimumSizeHint().height() + 12], Qt.Vertical)
    return p


def build_tours_menu(w: MainWindow) -> None:
    """The Tours menu: one entry per tour, then next / previous / end with their keys."""
    menu = w.menuBar().addMenu("T&ours")
    for key, tour in TOURS.items():
        menu.addAction(tour.title, lambda k=key: player(w).start(k))
    menu.addSeparator()
    w.shortcut("Next tour step", NEXT_KEYS, lambda: player(w).go_next(), menu)
    w.shortcut("Previous tour step", PREVIOUS_KEYS, lambda: player(w).go_previous(), menu)
    w.shortcut("End tour", END_KEYS, lambda: player(w).stop(), menu)
    menu.addSeparator()
    from .head_stats_dialog import open_head_stats, open_head_stats_file

    menu.addAction("Head statistics over the tours' prompts...", lambda: open_head_stats(w))
    menu.addAction("Head statistics over prompts from a file...", lambda: open_head_stats_file(w))
