"""Screenshots of every panel in the light, dark and presenter themes, on the real default model, offscreen.

    .venv/bin/python scripts/screenshots.py [--out assets/panels] [--model smollm2-135m-instruct]
                                            [--panels tokens,attention] [--size 1200x800]

Writes <out>/<panel>-<theme>.png (PNG at the highest compression; optimised again with Pillow when it is
installed) and prints each file's size and the total. Look at them: white plots on a dark theme,
unreadable text and clipped labels are bugs.
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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    raise SystemExit(main())
