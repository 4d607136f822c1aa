"""`lm-explorer [options]`: start the desktop app (or take a screenshot of it and exit)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def _bounded_int(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi} (got {value})")
        return value
    return parse


def _window_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    side = _bounded_int(100, 20_000)
    if not sep:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 1600x1000 (got {text!r})")
    return side(w), side(h)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lm-explorer", description="Watch a small language model work, live.")
    p.add_argument("--model", help="built-in model name, a model folder or a .gguf file")
    p.add_argument("--prompt", help="prompt to run at start")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--system", help="system prompt (chat mode)")
    p.add_argument("--max-new-tokens", type=_bounded_int(0, 4096), help="tokens to generate (0 to 4096)")
    p.add_argument("--screenshot", metavar="PNG", help="run the prompt, save a picture of the window, exit")
    p.add_argument("--quit-after-load", action="store_true", help="start, load the model, exit (smoke test)")
    p.add_argument("--presenter", action="store_true", help="start in presenter mode")
    p.add_argument("--size", type=_window_size, default="1600x1000", help="window size for --screenshot (WxH)")
    p.add_argument("--settings", help="settings file (plain JSON; default: the per-user one)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from ..logfile import setup_logging

    if args.screenshot:  # an unusable picture path is said before the model loads and runs, not after
        from ..cli import check_writable
        from ..core.errors import InputError

        try:
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            check_writable(args.screenshot, flag="--screenshot")
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error: --screenshot: {exc.strerror or exc}", file=sys.stderr)
            return 2
    log_file = setup_logging()
    logging.getLogger(__name__).info("LM Explorer starting (log file %s)", log_file)
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow
    from .settings import APPLICATION, ORGANISATION, disarm_qt_unpickling, open_settings
    from .widgets.background import Background

    disarm_qt_unpickling()  # before Qt reads any settings file (its own included)
    app = QApplication.instance() or QApplication(["lm-explorer"])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    icon = ASSETS / "icon.png"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))

    headless = bool(args.screenshot or args.quit_after_load)
    settings = open_settings(args.settings)
    if args.screenshot and args.settings is None:  # a screenshot must not depend on (or change) user state
        import tempfile

        tmp = tempfile.TemporaryDirectory()
        settings = open_settings(Path(tmp.name) / "settings.json")
    autorun = True if args.prompt or args.screenshot else None
    window = MainWindow(settings, model=args.model, autorun=autorun)
    bar = window.prompt_bar
    if args.prompt is not None:
        bar.prompt.setPlainText(args.prompt)
    if args.chat:
        bar.chat.setChecked(True)
    if args.system is not None:
        bar.system.setPlainText(args.system)
    if args.max_new_tokens is not None:
        bar.max_new.setValue(args.max_new_tokens)
    if args.screenshot:
        from PySide6.QtCore import QRect

        window.fit.area_override = QRect(0, 0, *args.size)  # the layout chosen for a screen the picture's size
        window.resize(*args.size)
        window.fit.refit()
        window.apply_default_layout()
    window.show()
    if args.presenter:  # a screenshot keeps its --size (full screen would take the screen's)
        window.set_presenter(True, full_screen=not args.screenshot)
    result = {"code": 0}

    def fail(message: str) -> None:
        print(f"error: {message}", file=sys.stderr)
        result["code"] = 1
        window.close()

    if args.quit_after_load:
        window.model_ready.connect(lambda info: (print(f"loaded {info.name}"), window.close()))
        window.model_failed.connect(fail)
    elif args.screenshot:
        def shoot(reason: str) -> None:
            if reason == "error":
                fail(window.banner_label.text())
                return
            Background.wait_idle()
            for _ in range(5):
                app.processEvents()
                Background.wait_idle()
            path = Path(args.screenshot)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                fail(f"could not write {path}: {exc.strerror or exc}")
                return
            if not window.grab().save(str(path)):
                fail(f"could not write {path}")
                return
            print(f"saved {path}")
            window.close()

        window.run_done.connect(lambda reason: QTimer.singleShot(300, lambda: shoot(reason)))
        window.model_failed.connect(fail)
    if headless:  # never hang a script: give up after 10 minutes
        QTimer.singleShot(600_000, lambda: fail("timed out waiting for the model or the run"))
    code = app.exec()
    code = result["code"] or code
    from .worker import orphaned

    if orphaned():  # the engine thread is stuck in a library call (e.g. a model load): exit without joining it
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
