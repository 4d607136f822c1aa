"""FileActions (owned by MainWindow): open/save runs, export panels, diagnostics, drag and drop."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PySide6.QtCore import QEventLoop, QObject, Signal
from PySide6.QtGui import QDropEvent, QGuiApplication
from PySide6.QtWidgets import QFileDialog, QInputDialog

from ..core.engine import AttachHead
from ..core.errors import RunFileError
from .dialogs import diagnostics, show_about
from .export import documents_dir, export_widget

log = logging.getLogger(__name__)


class _OpenRelay(QObject):
    """Carries a run file's load result from its thread to the GUI thread (a queued signal)."""

    done = Signal(int, object, str)  # (ticket, Run or None, error message)


def _load_off_thread(path: Path, ticket: int, relay: _OpenRelay) -> None:
    """Runs on a plain thread: every failure (crafted numbers, deep nesting, memory) becomes a message."""
    from ..core.runfile import load_run

    run, message = None, ""
    try:
        run = load_run(path)
    except RunFileError as exc:
        message = str(exc)
    except (OverflowError, RecursionError, MemoryError) as exc:
        log.warning("run file %s: %s", path, type(exc).__name__)
        message = (f"The file holds values this app cannot represent ({type(exc).__name__}: "
                   f"{str(exc)[:200] or 'too large or too deeply nested'}). It is damaged or was made to break "
                   "readers.")
    except OSError as exc:
        message = exc.strerror or str(exc)
    except Exception as exc:  # noqa: BLE001 - a crafted file must never take the window down
        log.exception("run file %s could not be read", path)
        message = f"{type(exc).__name__}: {str(exc)[:300]}"
    try:
        relay.done.emit(ticket, run, message)
    except RuntimeError:  # the window closed while the file was read
        log.info("run file %s read after the window closed", path)


class FileActions(QObject):
    """Owns the window's files: opening and saving runs (read off the GUI thread), exporting panels,
    diagnostics and About, and what a drop on the window opens."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self._open_relay = _OpenRelay(self)
        self._open_relay.done.connect(self._run_file_read)
        self._open_ticket = 0  # a newer Open supersedes an older one
        self._open_paths: dict[int, Path] = {}

    # --- files ------------------------------------------------------------------------------------
    def open_run(self, path: str | Path) -> bool:
        """Read a run file on a background thread; the GUI stays live. `run_opened(ok)` says how it went.

        A run streaming now is stopped only once the file's run is ready to replace it on screen; an error
        is a banner and the shown run stays. Returns True when the read was started.
        """
        path = Path(path)
        self._open_ticket += 1
        self._open_paths[self._open_ticket] = path
        self.w.statusBar().showMessage(f"opening {path.name}...")
        threading.Thread(target=_load_off_thread, args=(path, self._open_ticket, self._open_relay),
                         name="lm-explorer-open-run", daemon=True).start()
        return True

    def _run_file_read(self, ticket: int, run, message: str) -> None:
        path = self._open_paths.pop(ticket, Path("?"))
        if ticket != self._open_ticket or self.w._closed:
            return
        if run is None:
            self.w.show_banner(f"Could not open the run file {path.name}:\n{message}")
            self.w.run_opened.emit(False)
            return
        self.w.detach_stream()  # a streaming run's later steps must never reach the opened run
        self.w.hide_banner()
        # issue 18 item 6: the file's prompt and settings back in the prompt bar
        self.w.prompt_bar.show_request(run.request)
        self.w.show_run(run, follow=True)
        self.w.statusBar().showMessage(f"opened {path.name} ({run.info.name}; no model needed)", 8000)
        if run.unembed is None and self.w.info is not None and self.w.info.name == run.info.name:
            # saved without its vocabulary matrix: the loaded model gives its own (read on the engine thread)
            def attached(ok) -> None:
                if ok and self.w.run is run:
                    self.w.show_run(run, follow=False)
                self.w.run_opened.emit(True)

            self.w.host.submit_job(AttachHead(run), on_done=attached,
                                   on_error=lambda _m: self.w.run_opened.emit(True), key="attach-head")
            return
        self.w.run_opened.emit(True)

    def save_run(self, path: str | Path) -> bool:
        """Save the run on screen (True when saved). The encoding and compression (seconds for a long run) run on
        a worker thread while the event loop keeps turning, so the window never freezes; scripts still get
        the result when this returns."""
        run = self.w.run
        if run is None:
            self.w.show_banner("There is no run to save yet.")
            return False
        if self.w.running:
            self.w.show_banner("A run is still streaming: stop it (Esc) or let it finish, then save.")
            return False
        if self._saving:
            self.w.statusBar().showMessage("a save is already in progress", 3000)
            return False
        self._saving = True
        outcome: dict = {}
        done = threading.Event()

        def work() -> None:
            try:
                run.save(path, include_head=False)  # the vocabulary matrix comes from the model when opened
            except Exception as exc:  # noqa: BLE001 - disk full, permissions... (reported below)
                outcome["error"] = exc
            finally:
                done.set()

        self.w.statusBar().showMessage(f"saving {Path(path).name}...")
        threading.Thread(target=work, name="save-run", daemon=True).start()
        loop = QEventLoop()
        while not done.wait(0.005):
            loop.processEvents(QEventLoop.AllEvents, 20)
        self._saving = False
        if "error" in outcome:
            self.w.show_banner(f"Could not save the run: {outcome['error']}")
            return False
        self.w.statusBar().showMessage(f"saved {path}", 5000)
        return True

    _saving = False

    def export_panel(self, name: str, path: str | Path, scale: float = 1.0, dpi: float | None = None) -> bool:
        dock = self.w.docks[name]
        widget = dock.panel.export_widget() if dock.panel is not None else dock.widget()
        try:
            export_widget(widget, path, scale=scale, dpi=dpi)
        except (OSError, ValueError) as exc:
            self.w.show_banner(f"Could not export the {dock.windowTitle()} panel: {exc}")
            return False
        self.w.statusBar().showMessage(f"exported {dock.windowTitle()} to {path}", 5000)
        return True

    def export_panel_dialog(self) -> None:
        names = [n for n, d in self.w.docks.items() if d.isVisible()] or list(self.w.docks)
        titles = [self.w.docks[n].windowTitle() for n in names]
        title, ok = QInputDialog.getItem(self.w, "Export panel", "Panel:", titles, 0, False)
        if not ok:
            return
        name = names[titles.index(title)]
        start = str(Path(documents_dir()) / f"{name}.png")
        path, _ = QFileDialog.getSaveFileName(self.w, "Export panel", start, "PNG image (*.png);;SVG (*.svg)")
        if not path:
            return
        if not Path(path).suffix:
            path += ".png"
        scale, dpi = 1.0, None
        if path.lower().endswith(".png"):  # the size and resolution of the image, not only the on-screen one
            widget = self.w.docks[name]
            scale, ok = QInputDialog.getDouble(
                self.w, "Export panel", f"Image size ({widget.width()} x {widget.height()} on screen; 2 = twice "
                "as many pixels each way):", 2.0, 0.5, 8.0, 2)
            if not ok:
                return
            dpi, ok = QInputDialog.getInt(self.w, "Export panel", "Resolution written into the PNG (DPI):",
                                          round(96 * scale), 36, 2400)
            if not ok:
                return
        self.export_panel(name, path, scale=scale, dpi=dpi)

    def copy_diagnostics(self) -> str:
        from ..logfile import log_path

        session = self.w.host.session
        loaded = session.loaded if session is not None else None
        extra = {"run": f"{self.w.run.n_tokens} tokens" if self.w.run else "none",
                 "capture budget": f"{self.w.capture_budget() / 2**30:.2f} GiB",
                 "log file": str(log_path()),
                 "last error": " / ".join(self.w.last_error.splitlines()) or "none"}
        text = diagnostics(self.w.info, source=loaded.source if loaded is not None else None, extra=extra)
        QGuiApplication.clipboard().setText(text)
        self.w.statusBar().showMessage("diagnostics copied to the clipboard", 4000)
        return text

    def about(self) -> None:
        show_about(self.w, self.w.info)

    # --- drag and drop ----------------------------------------------------------------------------
    @staticmethod
    def dropped_path(event) -> Path | None:
        """The one local model folder, .gguf or .npz file a drag carries (None: not something to open)."""
        urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
        if len(urls) != 1 or not urls[0].isLocalFile():
            return None
        path = Path(urls[0].toLocalFile())
        return path if path.is_dir() or path.suffix.lower() in (".gguf", ".npz") else None

    def drop(self, event: QDropEvent) -> None:
        path = self.dropped_path(event)
        if path is None:
            return
        event.acceptProposedAction()
        if path.suffix.lower() == ".npz":
            self.open_run(path)
        else:
            self.w.load_model(str(path))

