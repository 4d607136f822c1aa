"""The panel contract: a QWidget that draws a Run and follows the shared Selection.

A panel never sees the model: it gets the Run (numpy arrays and tokens) and step events.
Exceptions inside a panel's drawing are caught here and shown in the panel, so one broken
panel never takes down the window.

With `defer_when_hidden` (the main window sets it), a panel that is not on screen, e.g. a dock
tab in the background, skips streaming and selection updates and redraws once when it is shown:
the per-token cost is paid only by the panels a person can see.

A panel's optional needs from the app are declared here, the same for every panel: the signals
`request_prompt(text)`, `rerun(RunRequest)` and `panel_requested(name)`, and `services.submit_job(...)`
for work that needs the model (an engine job; results come back on the GUI thread). The window gives
every panel one `PanelServices` at creation; outside the app the defaults say that nothing is connected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from ...core.events import StepEvent
from ...core.run import NotCaptured, Run
from .. import plot_style
from ..empty_state import show_empty
from ..selection import Selection
from ..widgets.background import Background
from ..widgets.coalesce import FrameCoalescer

log = logging.getLogger(__name__)
NO_MODEL = "This needs the app's model (the panel is not connected to a window)."


def _nothing(*_args) -> None:
    pass


def _no_engine(_request: Any, _on_done=None, on_error: Callable[[str], None] | None = None, _on_progress=None,
               **_kw) -> None:
    if on_error is not None:
        on_error(NO_MODEL)


@dataclass
class PanelServices:
    """What a panel may ask of the app. The window fills it in once and gives it to every panel.

    run_prompt(text)          put text in the prompt editor and run it
    rerun(request)            run a RunRequest (e.g. the prompt with interventions)
    open_panel(name)          show and raise the panel registered as `name`
    submit_job(request, on_done, on_error, on_progress, key=None) -> JobHandle | None
                              queue an engine job (core.engine / core.analysis.jobs request); callbacks run on
                              the GUI thread; on_progress(fraction, message); the handle has cancel()
    submit_side_job(request, on_done, on_error, on_progress) -> JobHandle | None
                              the same for a long job that must not block the engine's queue (index builds):
                              it runs in a process of its own (core/side_jobs.py)
    """
    run_prompt: Callable[[str], None] = _nothing
    rerun: Callable[[Any], None] = _nothing
    open_panel: Callable[[str], None] = _nothing
    submit_job: Callable[..., Any] = _no_engine
    submit_side_job: Callable[..., Any] = _no_engine


class Panel(QWidget):
    title: ClassVar[str] = "Panel"
    help_text: ClassVar[str] = ""  # one paragraph for a student: "what am I looking at?"
    defer_when_hidden = False  # per instance: skip work while not visible, redraw when shown
    _update_skipped = False  # updates were skipped while hidden
    _held: list[str] | None = None  # selection changes that wait for the window's frame budget (see hold_selection)
    _holding = False
    request_prompt = Signal(str)  # run this text as the prompt
    rerun = Signal(object)  # run this RunRequest
    panel_requested = Signal(str)  # show the panel registered under this name

    def __init__(self, selection: Selection, parent: QWidget | None = None):
        super().__init__(parent)
        self.run_serial = 0  # bumps with every set_run: off-thread results for an older run are stale
        self._frames: FrameCoalescer | None = None
        self._offthread_bg: Background | None = None
        self.services = PanelServices()
        self.request_prompt.connect(lambda text: self.services.run_prompt(text))
        self.rerun.connect(lambda request: self.services.rerun(request))
        self.panel_requested.connect(lambda name: self.services.open_panel(name))
        self.selection = selection
        self.run: Run | None = None
        self._error = QLabel()
        self._error.setWordWrap(True)
        self._error.hide()
        self.body = QVBoxLayout(self)
        self.body.setContentsMargins(4, 4, 4, 4)
        self.body.addWidget(self._error)
        selection.changed.connect(self._selection_changed)
        self._style_error()
        plot_style.follow(self, self._theme_changed)

    @property
    def error(self) -> str | None:
        """The error this panel shows (a failed update, or data the run did not keep); None when it shows none."""
        return self._error.text() if not self._error.isHidden() else None

    # --- what subclasses implement -------------------------------------------------------------
    def draw_run(self, run: Run | None) -> None:
        """A new (or loaded) run: draw everything. `run` is None when cleared."""

    def draw_step(self, run: Run, event: StepEvent) -> None:
        """The run grew by one step while streaming; redraw only what changed (default: everything)."""
        self.draw_run(run)

    def draw_steps(self, run: Run, events: list[StepEvent]) -> None:
        """Several steps arrived since this panel last drew (the window shows a panel's steps in one go when it
        could not draw every frame); the run already holds all of them. Default: draw the whole run again;
        panels that draw steps incrementally override this."""
        self.draw_run(run)

    def draw_selection(self, field: str) -> None:
        """The shared selection changed (`field` is step, position, layer or head)."""

    def apply_theme(self) -> None:
        """The theme changed (light, dark, presenter): redo what the plot style cannot, such as colours baked
        into images or brushes. Plots styled with `plot_style.style` and heatmaps follow by themselves."""

    def export_widget(self) -> QWidget:
        """The widget that File > Export panel grabs."""
        return self

    # --- called by the main window -------------------------------------------------------------
    # Replay: once the step is moved, `self.run` is the run as it was at the selected step (Run.upto) and
    # `self.full_run` the whole run; a new run is drawn whole (the window selects its last step).
    full_run: Run | None = None
    _live_run: Run | None = None  # the run the window streamed into this panel (see `streamed`)

    @property
    def streamed(self) -> bool:
        """The run on screen streamed into this panel (it is streaming, or streamed just now), as opposed to one
        drawn whole (opened from a file, captured by a script): its heavy redraws go off the GUI thread."""
        return self.full_run is not None and self.full_run is self._live_run

    def is_empty(self) -> bool:
        """Nothing to show yet (its plots are covered by a sentence): before a run, for most panels."""
        return self.full_run is None

    # --- work off the GUI thread, results coalesced to the frame rate -------------------------------
    @property
    def frames(self) -> FrameCoalescer:
        """This panel's frame coalescer: `post(key, token, fn)` runs the newest fn per key once per frame
        (guarded like every drawing method), unless its token (default: `run_serial`) is stale by then."""
        if self._frames is None:
            self._frames = FrameCoalescer(self, is_current=lambda token: token == self.run_serial)
        return self._frames

    def offthread(self, key: str, compute: Callable[[], Any], apply: Callable[[Any], None],
                  priority: int = 0) -> None:
        """Run `compute` (numpy only, no Qt, no model) in the background pool; `apply(result)` then runs on the
        GUI thread at the next frame, newest result per `key` only, and never for a run that was replaced."""
        if self._offthread_bg is None:
            self._offthread_bg = Background(self)
        token = self.run_serial

        def done(result) -> None:
            self.frames.post(key, token, lambda: self._guard(apply, result))

        def failed(message: str) -> None:
            if token == self.run_serial:
                self._show_error(getattr(apply, "__name__", key), f"This panel's analysis failed: {message}")

        self._offthread_bg.submit(key, compute, done, failed, priority=priority)

    def set_run(self, run: Run | None, postpone: bool = False) -> None:
        """A new run. `postpone`: draw it at `catch_up()` (the window's frame scheduler spreads the panels' first
        draws of a streamed run over a few frames); until then streamed steps and selection changes wait too."""
        self.run_serial += 1
        self.full_run = self.run = run
        self._live_run = run if postpone else None
        self._held = None  # (selection changes noted for the previous run: the new run is drawn whole)
        show_empty(self, self.title, self.is_empty())  # before a run: what will appear, no made-up axes
        if postpone and run is not None:
            self._update_skipped = True
            return
        if not self._deferred():
            self._guard(self.draw_run, run)

    def on_steps(self, run: Run, events: list[StepEvent]) -> None:
        """The steps applied to `run` since this panel last drew, in order (the window serves panels once a frame,
        within a time budget): one step is `draw_step`, several are `draw_steps`."""
        if len(events) == 1:
            self.on_step(run, events[0])
            return
        replaying = self.full_run is run and self.run is not run
        self.full_run = self._live_run = run
        if replaying or not events:
            return
        self.run = run
        if not self._deferred():
            self._guard(self.draw_steps, run, events)

    def on_step(self, run: Run, event: StepEvent) -> None:
        replaying = self.full_run is run and self.run is not run  # the user stepped back while it streams
        self.full_run = self._live_run = run
        if replaying:
            return
        self.run = run
        if not self._deferred():
            self._guard(self.draw_step, run, event)

    def _at_selected_step(self, run: Run | None) -> Run | None:
        if run is None or not run.steps or self.selection.step >= len(run.steps) - 1:
            return run
        return run.upto(self.selection.step)

    def hold_selection(self) -> None:
        """Until `stop_holding`, selection changes are only noted: the window moves the selection along with a
        streamed run and lets each panel show it within the frame budget (`apply_held`), not all panels at once."""
        self._holding, self._held = True, self._held or []

    def stop_holding(self) -> bool:
        """Selection changes reach this panel at once again; True when some wait for `apply_held`."""
        self._holding = False
        return bool(self._held)

    def apply_held(self) -> bool:
        """Show the selection changes noted while holding (each field once, in order); True when there were any."""
        held, self._held = self._held, None
        for field in dict.fromkeys(held or ()):
            self._selection_changed(field)
        return bool(held)

    def drop_held(self) -> None:
        """Forget the noted selection changes: newer steps came, and the selection follows them again."""
        self._held = None

    def _selection_changed(self, field: str) -> None:
        if self._holding:
            self._held.append(field)
            return
        if field == "step" and self.full_run is not None and self.run is not None:  # None: a new run is coming
            shown = self._at_selected_step(self.full_run)
            if shown is not self.run and (shown.n_tokens, len(shown.steps)) != (self.run.n_tokens, len(self.run.steps)):
                following = self.selection.position >= self.run.n_tokens - 1
                self.run = shown  # replay: redraw what the model had seen at that step
                if following or self.selection.position >= shown.n_tokens:  # the newest token of that step
                    self.selection.set("position", shown.n_tokens - 1)
                if not self._deferred():
                    self._guard(self.draw_run, shown)
                    self._guard(self.draw_selection, field)
                return
        if self.run is not None and not self._deferred():
            self._guard(self.draw_selection, field)

    def _theme_changed(self) -> None:
        self._style_error()
        if self.run is not None:
            self._guard(self.apply_theme)

    def _style_error(self) -> None:
        self._error.setStyleSheet(f"color: {'#ff8080' if plot_style.theme.is_dark() else '#b00020'}; padding: 4px;")

    def _deferred(self) -> bool:
        """True (and remember to redraw) when this update can wait until the panel is shown."""
        if self._update_skipped or (self.defer_when_hidden and self.off_screen()):
            self._update_skipped = True
            return True
        return False

    @property
    def waiting(self) -> bool:
        """True while this panel skips updates and will redraw once shown (or at `catch_up`)."""
        return self._update_skipped

    def off_screen(self) -> bool:
        # a background dock tab is moved off screen rather than hidden: its visible region is empty
        return not self.isVisible() or self.visibleRegion().isEmpty()

    def catch_up(self, on_screen_only: bool = False) -> bool:
        """Redraw once if updates were skipped (while hidden, or postponed by `set_run`); called when the panel
        comes on screen and by the window's frame scheduler (`on_screen_only`: a hidden panel waits until shown).
        True when it drew."""
        if not self._update_skipped or (on_screen_only and self.defer_when_hidden and self.off_screen()):
            return False
        self._update_skipped = False
        self._guard(self.draw_run, self.run)
        return True

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self.is_empty():
            show_empty(self, self.title, True)  # the plots the subclass built: covered until there is data
        self.catch_up()

    _failed_in: str | None = None  # the drawing method whose error is shown

    def _guard(self, fn, *args) -> None:
        name = getattr(fn, "__name__", "")
        try:
            fn(*args)
        except NotCaptured as exc:  # the run stored less (memory budget): say so, not a bug
            log.info("panel %s: %s", self.title, exc)
            self._show_error(name, str(exc))
        except Exception as exc:  # a panel bug must not crash the app: show it, log it, go on
            log.exception("panel %s failed", self.title)
            self._show_error(name, f"This panel hit an error and skipped this update: {type(exc).__name__}: {exc}")
        else:  # the error stays until the method that failed (or a full redraw) succeeds
            if self._failed_in is None or name in (self._failed_in, "draw_run"):
                self._failed_in = None
                self._error.hide()

    def _show_error(self, name: str, text: str) -> None:
        self._failed_in = name
        self._error.setText(text)
        self._error.show()
