"""Screenshots of every panel in the light, dark and presenter themes, on the real default model, offscreen;
or of the whole window on given screen sizes (--window), with what does not fit listed.

    .venv/bin/python scripts/screenshots.py [--out assets/panels] [--model smollm2-135m-instruct]
                                            [--panels tokens,attention] [--size 1200x800]
    .venv/bin/python scripts/screenshots.py --window 1280x720,1920x1080 --themes dark,presenter --out assets

Writes <out>/<panel>-<theme>.png, or <out>/presenter-<W>x<H>-<theme>.png for --window (PNG at the highest
compression; optimised again with Pillow when it is installed) and prints each file's size and the total. With
--window the window takes the layout chosen for a screen of that size (under Xvfb with a screen that size, or
offscreen, where the screen size is pretended) and every panel's tab is shown in turn to list anything clipped,
squeezed or scrolling. Look at the pictures: white plots on a dark theme, unreadable text and clipped labels
are bugs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "The capital of France is Paris. The capital of Italy is"
THEMES = {"light": ("light", False), "dark": ("dark", False), "presenter": ("dark", True)}


def _settle(app, seconds: float = 0.3) -> None:
    from explorer.ui.widgets.background import Background

    end = time.monotonic() + seconds
    while True:
        Background.wait_idle()
        app.processEvents()
        if time.monotonic() > end:
            break
        time.sleep(0.02)


def _optimise(path: Path) -> None:
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as img:
        img.load()
    img.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="assets/panels")
    parser.add_argument("--model", default=None, help="catalogue name or path (default: the default model)")
    parser.add_argument("--panels", default=None, help="comma-separated registry names (default: all)")
    parser.add_argument("--themes", default=",".join(THEMES))
    parser.add_argument("--size", default="1200x800")
    parser.add_argument("--max-new", type=int, default=8)
    parser.add_argument("--window", default=None, help="comma-separated screen sizes (WxH): the whole window")
    args = parser.parse_args(argv)
    if args.window:
        return window_shots(args)

    import torch
    from PySide6.QtWidgets import QApplication

    torch.set_num_threads(1)
    from explorer.core import catalogue
    from explorer.core.api import capture
    from explorer.core.models import load_model
    from explorer.ui import theme
    from explorer.ui.panels import REGISTRY, panel_class
    from explorer.ui.selection import Selection

    app = QApplication.instance() or QApplication([])
    loaded = load_model(args.model or catalogue.default_model_name())
    run = capture(PROMPT, loaded, max_new_tokens=args.max_new)
    from explorer.core.runner import Session
    from explorer.ui.panels.base import PanelServices
    from explorer.ui.worker import EngineHost

    host = EngineHost(session=Session(loaded))  # panels that need the model (weights, what-ifs) ask its engine
    services = PanelServices(submit_job=host.submit_job)
    width, height = (int(v) for v in args.size.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.panels.split(",") if args.panels else list(REGISTRY)
    total = 0
    for theme_name in args.themes.split(","):
        name, presenter = THEMES[theme_name]
        theme.apply(name=name, presenter=presenter)
        for panel_name in names:
            sel = Selection()
            sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers,
                           heads=run.info.n_heads)
            panel = panel_class(panel_name)(sel)
            panel.services = services
            panel.resize(width, height)
            panel.show()
            panel.set_run(run)
            sel.set("position", run.n_prompt - 1)  # the prediction of the first generated token
            sel.set("layer", run.info.n_layers // 2)
            _settle(app, 1.0)
            panel.grab()  # painting sizes pyqtgraph's axes to their tick text; the layout follows on the next events
            _settle(app, 0.2)
            path = out / f"{panel_name}-{theme_name}.png"
            panel.grab().save(str(path), "PNG", 0)  # quality 0: the highest PNG compression
            _optimise(path)
            size = path.stat().st_size
            total += size
            print(f"{path}  {size / 1024:,.0f} KiB" + (f"  ERROR: {panel.error}" if panel.error else ""), flush=True)
            panel.close()
            panel.deleteLater()
            app.processEvents()
    host.shutdown()
    print(f"total {total / 2**20:,.2f} MiB in {out}")
    return 0


def window_shots(args) -> int:
    """The real window on each screen size and theme: saved, and what does not fit printed (exit 1 if anything)."""
    import tempfile

    import torch
    from PySide6.QtCore import QRect
    from PySide6.QtWidgets import QApplication

    torch.set_num_threads(1)
    from explorer.ui import screen_fit, theme
    from explorer.ui.main_window import MainWindow
    from explorer.ui.settings import open_settings

    app = QApplication.instance() or QApplication(["lm-explorer"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total, trouble = 0, 0
    for size in args.window.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        for theme_name in args.themes.split(","):
            name, presenter = THEMES[theme_name]
            settings = open_settings(Path(tempfile.mkdtemp()) / "settings.json")
            window = MainWindow(settings, model=args.model, autorun=False)
            window.fit.area_override = QRect(0, 0, width, height)  # the screen this picture is for
            window.setGeometry(0, 0, width, height)
            window.show()
            theme.apply(name=name, presenter=presenter, screen_height=height)  # (not the previous picture's)
            window.fit.refit()
            window.apply_default_layout()
            window.prompt_bar.prompt.setPlainText(PROMPT)
            window.prompt_bar.max_new.setValue(args.max_new)
            done = []
            window.model_ready.connect(lambda _info, w=window: w.run_prompt())
            window.run_done.connect(done.append)
            end = time.monotonic() + 300
            while not done and time.monotonic() < end:
                _settle(app, 0.1)
            problems = []
            for dock in window.docks.values():  # every tab in turn: a background tab can be clipped too
                dock.raise_()
                _settle(app, 0.3)
                problems += [p for p in screen_fit.fit_problems(window) if p not in problems]
            window.apply_default_layout()
            window.selection.set("position", window.run.n_prompt - 1 if window.run else 0)
            _settle(app, 1.0)
            window.grab()
            _settle(app, 0.2)
            path = out / f"presenter-{width}x{height}-{theme_name}.png"
            window.grab().save(str(path), "PNG", 0)
            _optimise(path)
            total += path.stat().st_size
            print(f"{path}  {path.stat().st_size / 1024:,.0f} KiB  plan {window.fit.plan}, "
                  f"text {app.font().pointSizeF():.1f} pt" + ("" if done else "  (the run did not finish)"), flush=True)
            for p in problems:
                print(f"    does not fit: {p}")
            trouble += len(problems)
            theme.apply(name="light", presenter=False)
            window.close()
            window.deleteLater()
            _settle(app, 0.2)
    print(f"total {total / 2**20:,.2f} MiB in {out}; {trouble} fit problem(s)")
    return 1 if trouble else 0


if __name__ == "__main__":
    raise SystemExit(main())
