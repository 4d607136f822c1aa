"""RunController: owns the engine (through its Qt adapter) and the runs: submitting prompts, growing
the Run on screen from step events, stopping, stepping one token, and the errors runs report.

The window owns the widgets (prompt bar, timeline, docks, banner, status bar); this object owns what
is running and what is on screen (`run`, `running`), and the window delegates to it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import replace

from PySide6.QtCore import QElapsedTimer, QObject, QTimer, Signal

from ..core.errors import PromptTooLongError
from ..core.events import RunRequest
from ..core.run import Run
from ..core.textin import clean_text
from .settings import push_recent
from .widgets.collector import collect_on_gui_thread
from .widgets.frame_work import BUDGET_MS, GAP_MS, PieceCosts, paint_now, turn  # (one budget per turn: see frame_work)
from .worker import EngineHost

MAX_RECENT_CHARS = 20_000  # longer prompts are not kept in the recent list
FRAME_MS = 16  # streamed steps reach the panels at most once per frame (60 Hz)
LAGS_KEPT = 4096  # lag figures a window keeps (for the benchmark)
REDRAW = "redraw"  # a panel's backlog entry: draw the whole run (a new run), not individual steps


class RunController(QObject):
    steps_shown = Signal(int, float)  # (step events now shown by every panel, milliseconds their panel updates took)
    frame_drawn = Signal(float)  # milliseconds of GUI-thread work for streamed steps in this slice (one per frame)

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        collect_on_gui_thread()  # the engine's reader thread allocates too: garbage is collected on this thread
        self.host = EngineHost(self, kind=window.settings.value("engine"),
                               threads=window.settings.value("engine_threads") or None)
        self._queued: list[tuple[int, object]] = []  # (run id, StepEvent) waiting for the next frame
        # panels still to show steps (or a whole new run) that are applied to the run on screen: served oldest
        # first, a few per frame within BUDGET_MS (see _serve)
        self._backlog: dict[object, list | str] = {}
        self._cost = PieceCosts()  # what each panel's last piece took: its steps, or a whole new run
        self._backlog_steps = 0  # step events in the backlog (told by steps_shown once every panel shows them)
        self._backlog_ms = 0.0  # GUI-thread time the backlog has taken so far
        self._backlog_since = 0.0  # perf_counter when its oldest step arrived
        self._follow = False  # the selection was on the newest step when the backlog began: move it to the newest
        self._done_reason: str | None = None  # the run finished; run_done waits until its backlog is drawn
        # per backlog: from its first step's arrival to every panel showing it (the latest ones: a long session
        # streams many)
        self.lag_ms: deque[float] = deque(maxlen=LAGS_KEPT)
        self._frame = QTimer(self, singleShot=True)
        self._frame.timeout.connect(self._next_frame)
        self._since_flush = QElapsedTimer()
        self.run: Run | None = None  # the run on screen
        self.running = False
        self._incoming: tuple[int, Run] | None = None
        self._stream_run: Run | None = None  # the run the engine's stream grows (steps for any other are stale)
        self._last_request: RunRequest | None = None
        h = self.host
        h.run_started.connect(self._run_started)
        h.step.connect(self._step)
        h.run_finished.connect(self._run_finished)
        h.run_failed.connect(self._run_failed)
        h.truncated.connect(self._truncated)
        h.engine_lost.connect(self.w.show_banner)

    # --- running ----------------------------------------------------------------------------------
    def run_prompt(self) -> None:
        request = self.w.prompt_bar.request()
        if not request.prompt:
            self.w.show_banner("The prompt is empty: type some text, then press Run (Ctrl+Enter).")
            return
        prompt, warnings = clean_text(request.prompt)
        system, more = clean_text(request.system) if request.system else (request.system, [])
        if warnings or more:  # a broken paste: fix it in the editor too, and say so
            request = replace(request, prompt=prompt, system=system)
            self.w.prompt_bar.show_request(request)
        if len(request.prompt) <= MAX_RECENT_CHARS:  # a 1 MB prompt stays out of the settings file
            self.w.prompt_bar.set_recent(push_recent(self.w.settings, "recent_prompts", request.prompt))
        self.submit(request)
        if warnings or more:
            self.w.show_banner(" ".join(warnings + more), error=False)

    def submit(self, request: RunRequest) -> None:
        if self.w._closed:  # a closed window's panels may still hear a global signal: nothing runs
            return
        if self.w.info is None and self.w._loading_spec is None:
            self.w.show_banner("No model is loaded: pick one in the Model box.")
            return
        self.w.hide_banner()
        self._last_request = request
        self.running = True
        self.w.prompt_bar.set_running(True)
        self.w.timeline.set_playing(False)
        self.w.statusBar().showMessage("running...")
        # prefix reuse only from a run this window streamed (never from one opened from a file: its arrays are
        # the file's, not this model's cache)
        run = self.run
        live = run is not None and run is self._stream_run
        previous = run if live and self.w.info is not None and run.info == self.w.info else None
        self.host.submit(request, previous)

    def stop(self) -> None:
        self.w.timeline.set_playing(False)
        if self.running:
            self.host.stop()
            self.w.statusBar().showMessage("stopping...")

    def detach_stream(self) -> None:
        """Stop the run in progress and drop every event it still sends (another run takes the screen)."""
        if not self.running:
            return
        self.host.detach()
        self._queued.clear()
        self.running = False
        self.w.prompt_bar.set_running(False)
        self._incoming = None
        self._stream_run = None
        self.w.run_done.emit("cancelled")

    def step_one_token(self) -> None:
        """Generate exactly one more token than the run on screen (the prompt's cache is reused)."""
        if self.running:
            return
        run = self.run
        if run is None or run.info != self.w.info or run.finish_reason == "eos":
            request = replace(self.w.prompt_bar.request(), settings=self.w.prompt_bar.settings(max_new_tokens=1))
            if not request.prompt:
                self.w.show_banner("The prompt is empty: type some text first.")
                return
        else:
            base = run.request
            request = replace(base, settings=replace(base.settings, max_new_tokens=run.n_generated + 1))
        if not 0 <= request.settings.max_new_tokens <= self.w.prompt_bar.max_new.maximum():
            self.w.show_banner(f"Cannot generate another token: the run already has {run.n_generated} "
                             f"(at most {self.w.prompt_bar.max_new.maximum()} here).")
            return
        self.w.prompt_bar.max_new.setValue(request.settings.max_new_tokens)
        self.submit(request)

    def _run_started(self, run_id: int, run: Run) -> None:
        if run_id == self.host.active_id:
            self._incoming = (run_id, run)

    def _step(self, run_id: int, event) -> None:
        if run_id != self.host.active_id or self.w._closed:
            return
        if self._incoming is not None and self._incoming[0] == run_id:
            run = self._incoming[1]
            self._incoming = None
            self._queued.clear()
            run.apply(event)
            self._stream_run = run  # the identity of the run this stream grows
            self._arrived = time.perf_counter()
            self.show_run(run, follow=True, streaming=True)
            return
        if self.run is None or self.run is not self._stream_run:  # another run is on screen: stale step
            return
        if not self._queued:
            self._arrived = time.perf_counter()
        self._queued.append((run_id, event))  # shown at the next frame: steps arriving faster than the frame
        if not self._frame.isActive():  # rate cost one selection change, status update and paint per frame
            wait = FRAME_MS - self._since_flush.elapsed() if self._since_flush.isValid() else 0
            self._frame.start(max(0, int(wait)))

    def _next_frame(self) -> None:
        self.flush_steps(budget_ms=BUDGET_MS)

    def flush_steps(self, budget_ms: float | None = None) -> None:
        """Apply the queued step events to the run on screen and let the panels show them. With `budget_ms` (the
        frame timer), panels are served oldest first until that much GUI-thread time is spent and the rest at the
        next frame, so one frame never blocks input and paint for long; without it (a run ends, a test), all now.
        Once every panel shows the steps, the selection moves to the newest step (when it was following) and
        `steps_shown` tells how many steps that was."""
        self._frame.stop()
        queued, self._queued = self._queued, []
        run = self.run
        queued = [e for rid, e in queued if rid == self.host.active_id]  # (a detached stream's steps are stale)
        if run is None or run is not self._stream_run or self.w._closed:
            self._backlog.clear()
            self._announce_done()
            return
        t0 = time.perf_counter()
        if queued:
            self._since_flush.start()
            if not self._backlog_steps:  # (a new run's first draws may still be pending: the selection is on it)
                self._follow = self.w.selection.step >= len(run.steps) - 1
                self._backlog_since, self._backlog_ms = self._arrived, 0.0
            for event in queued:
                run.apply(event)
            for dock in self.w.docks.values():
                if dock.panel is not None and self._backlog.get(dock.panel) != REDRAW:
                    self._backlog.setdefault(dock.panel, []).extend(queued)
            self._backlog_steps += len(queued)
            self._set_limits(run)
        self._serve(run, t0, budget_ms)

    def _serve(self, run: Run, t0: float, budget_ms: float | None) -> None:
        served = False
        if budget_ms is not None:  # (the GUI queue's work in this same turn of the event loop counts too)
            budget_ms = turn.left(budget_ms)
            if budget_ms is None and self._backlog:
                self._frame.start(GAP_MS)
                return
        for panel in list(self._backlog):
            kind = "redraw" if self._backlog[panel] == REDRAW else "steps"
            if budget_ms is not None and served and not self._cost.fits((panel, kind), t0, budget_ms):
                break  # (expected not to fit in what is left: first in the next slice)
            t_piece = time.perf_counter()
            work = self._backlog.pop(panel)
            if work == REDRAW:
                drew = panel.catch_up(on_screen_only=True)  # (one off screen draws when shown)
            elif work:
                if self._follow:  # (the selection will follow these steps too: what it noted before is stale)
                    panel.drop_held()
                panel.on_steps(run, work)
                drew = not panel.waiting  # (one off screen or postponed only noted that it has to redraw)
            else:
                drew = False
            if panel.apply_held():  # the selection that followed the steps (see _follow_newest)
                drew = drew or not panel.waiting
            if drew:
                paint_now(panel)  # its cost counts in this slice's budget (widgets/frame_work.py)
                served = True
            self._cost.record((panel, kind), t_piece)
        ms = (time.perf_counter() - t0) * 1e3
        turn.charge(ms)
        self._backlog_ms += ms
        self.frame_drawn.emit(ms)
        if not self._backlog and self._follow:
            self._follow_newest(run)
        if self._backlog:  # the rest at the next frame: what was drawn paints first
            self._frame.start(GAP_MS)
            return
        self._update_status()
        n, self._backlog_steps = self._backlog_steps, 0
        if n:
            self.lag_ms.append((time.perf_counter() - self._backlog_since) * 1e3)
            self.steps_shown.emit(n, self._backlog_ms)
        self._announce_done()

    def _follow_newest(self, run: Run) -> None:
        """Move the selection to the newest step and token. Every panel shows a selection change at once, and ten
        panels redrawing (and painting) together blocked input for 30-50 ms each frame: here the panels only note
        it, and the backlog lets each show it within the frame budget; the rest of the window sees it now."""
        panels = [dock.panel for dock in self.w.docks.values() if dock.panel is not None]
        for panel in panels:
            panel.hold_selection()
        try:
            self.w.selection.set("step", len(run.steps) - 1)
            self.w.selection.set("position", run.n_tokens - 1)
        finally:
            for panel in panels:
                if panel.stop_holding():
                    self._backlog.setdefault(panel, [])

    def _announce_done(self) -> None:
        """`run_done` for a run that finished while its last steps were still being drawn (see _run_finished)."""
        reason, self._done_reason = self._done_reason, None
        if reason is not None:
            self.w.run_done.emit(reason)

    _arrived = 0.0  # perf_counter when the oldest queued step arrived

    def show_run(self, run: Run | None, follow: bool = False, streaming: bool = False) -> None:
        """Put a run on screen (a new one, or one opened from a file). `streaming`: the first step of a run the
        engine streams; the panels then draw it a few per frame (see flush_steps), from the next turn of the event
        loop on."""
        self._announce_done()  # a finished run still being drawn: it is done as far as it will be shown
        self._backlog.clear()
        self._backlog_steps = 0
        if run is not self._stream_run or run is not self.run:
            self._queued.clear()  # steps of the run that was on screen are stale now
        self.run = run
        for dock in self.w.docks.values():  # a full redraw follows: no selection callback may see the old run
            if dock.panel is not None:
                dock.panel.run = None
        if run is not None:
            self._set_limits(run)
            if follow or self.w.selection.step >= len(run.steps):
                self.w.selection.set("step", len(run.steps) - 1)
                self.w.selection.set("position", run.n_tokens - 1)
        for dock in self.w.docks.values():
            if dock.panel is not None:
                dock.panel.set_run(run, postpone=streaming)
                if streaming and run is not None:
                    self._backlog[dock.panel] = REDRAW
        if streaming and run is not None:  # the first draws at the next turn of the event loop, a few per frame
            self._follow, self._backlog_since, self._backlog_ms = True, self._arrived, 0.0
            self._frame.start(0)
            return
        self._update_status()

    def _set_limits(self, run: Run) -> None:
        info = run.info
        self.w.selection.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=info.n_layers,
                                  heads=info.n_heads)
        self.w.timeline.set_steps(len(run.steps))

    def _run_finished(self, run_id: int, reason: str) -> None:
        if run_id != self.host.active_id:
            return
        # the last steps go on screen within the frame budget too (the rest over the next frames); `run_done` once
        # every panel shows them, so what reacts to the end of the run sees it whole
        self.flush_steps(budget_ms=BUDGET_MS)
        self.running = False
        self.w.prompt_bar.set_running(False)
        self._incoming = None
        self.w.statusBar().showMessage("stopped" if reason == "cancelled" else f"finished ({reason})", 5000)
        self._update_status()
        self._done_reason = reason
        if not self._backlog:
            self._announce_done()

    def _run_failed(self, run_id: int, exc: Exception, message: str) -> None:
        if run_id not in (self.host.active_id, -1):
            return
        self.flush_steps()  # the steps it streamed before failing stay on screen
        self.running = False
        self.w.prompt_bar.set_running(False)
        self._incoming = None
        last = self._last_request
        if isinstance(exc, PromptTooLongError) and run_id != -1 and last is not None and last.chat:
            message += ("\nThe count includes the chat template" +  # so a long system prompt is not a mystery
                        (" and the system prompt: a long system prompt takes room from the prompt."
                         if last.system else ".") +
                        (" The tool definitions are shown to the model too (Tools…): fewer or shorter tools "
                         "leave more room." if last.tools else ""))
        if isinstance(exc, PromptTooLongError) and run_id != -1 and last is not None and exc.max_new < exc.limit:
            self.w.show_banner(f"{message}\nNothing was cut. Truncate keeps the last tokens that fit and shows you "
                             "the shortened prompt first.", action="Truncate to fit",
                             callback=lambda: self.host.truncate(last))
        else:
            self.w.show_banner(message)
        self.w.run_done.emit("error")

    def _truncated(self, request: RunRequest, dropped: int) -> None:
        self.w.prompt_bar.show_request(request)
        self.submit(request)
        self.w.show_banner(f"The prompt was truncated: its first {dropped} tokens were dropped so that it fits "
                         "the model's context. The shortened prompt is in the editor.", error=False)

    def describe_step(self, step: int) -> str:
        run = self.run
        if run is None or step >= len(run.steps):
            return ""
        event = run.steps[step]
        if event.is_prefill:
            return f"prefill: {event.n_new} prompt tokens"
        return f"generated {event.tokens[0].text!r}" if event.tokens else ""

    def _update_status(self) -> None:
        run = self.run
        if run is None or not run.steps:
            for w in (self.w.status_tokens, self.w.status_speed, self.w.status_memory):
                w.setText("")
            return
        self.w.status_tokens.setText(f"{run.n_tokens} tokens ({run.n_prompt} prompt + {run.n_generated} generated)")
        speed = f"prefill {run.prefill_tokens_per_s():,.0f} tok/s"
        if len(run.steps) > 1:
            speed += f" · decode {run.decode_tokens_per_s():,.1f} tok/s"
        self.w.status_speed.setText(speed)
        self.w.status_memory.setText(f"capture {run.capture_bytes() / 2**20:,.1f} MiB")

