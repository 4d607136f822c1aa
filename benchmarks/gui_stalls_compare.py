"""GUI-thread stalls and redraw while the real window's engine streams, for comparing two versions of the code.

    PYTHONPATH=<checkout> OMP_NUM_THREADS=1 python benchmarks/gui_stalls_compare.py [view substrings...]

Run it alternately on two checkouts (e.g. an older commit exported with `git archive` and this one): the same
measurement code times both. Prints the redraw per frame at LONG (default 1,024) prompt tokens over two runs
of STEPS new tokens in the default layout (RunController step handling + the paint it causes), then for each
panel and tab the longest gap of a 5 ms GUI timer while the window streams a 29-token prompt + 16 tokens, and
a JSON line with everything. Environment: LONG, STEPS, REDRAW=0 to skip the redraw part.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QTabWidget  # noqa: E402

import explorer  # noqa: E402
from explorer.core.benchmarks import prompt_of  # noqa: E402
from explorer.core.events import GenerationSettings, RunRequest  # noqa: E402
from explorer.core.models import load_model  # noqa: E402
from explorer.ui.main_window import MainWindow  # noqa: E402
from explorer.ui.run_control import RunController  # noqa: E402
from explorer.ui.settings import open_settings  # noqa: E402
from explorer.ui.widgets.background import Background  # noqa: E402

app = QApplication.instance() or QApplication([])

MODEL = "smollm2-135m-instruct"
LONG = int(os.environ.get("LONG", 1024))
STEPS = int(os.environ.get("STEPS", 6))
SHORT = 29
only = [a for a in sys.argv[1:]]
redraws, in_step = [], [False]
orig_step = RunController._step
has_flush = hasattr(RunController, "flush_steps")


def timed_step(self, run_id, event):
    t0 = time.perf_counter()
    orig_step(self, run_id, event)
    if not has_flush:
        app.sendPostedEvents()
        redraws.append((time.perf_counter() - t0) * 1e3)


RunController._step = timed_step
if has_flush:
    orig_flush = RunController.flush_steps

    def timed_flush(self):
        t0 = time.perf_counter()
        orig_flush(self)
        app.sendPostedEvents()
        redraws.append((time.perf_counter() - t0) * 1e3)

    RunController.flush_steps = timed_flush


class Meter:
    def __init__(self):
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self.tick)
        self.clock = QElapsedTimer()
        self.longest = 0.0
        self.last = 0

    def start(self):
        self.longest, self.last = 0.0, 0
        self.clock.start()
        self.timer.start()

    def tick(self):
        now = self.clock.elapsed()
        self.longest = max(self.longest, float(now - self.last))
        self.last = now

    def stop(self):
        self.tick()
        self.timer.stop()
        return self.longest


def drain(limit_s=120):
    end = time.perf_counter() + limit_s
    quiet = 0
    while time.perf_counter() < end and quiet < 20:
        app.processEvents()
        quiet = 0 if Background.pool().activeThreadCount() > 0 else quiet + 1
        time.sleep(0.005)


def stream(window, request):
    done = []
    window.run_done.connect(done.append)
    window.submit(request)
    while not done:
        app.processEvents()
        time.sleep(0.001)
    drain()
    window.run_done.disconnect(done.append)


def views(panels):
    out = []
    for name, panel in panels.items():
        tabs = getattr(panel, "tabs", None)
        if isinstance(tabs, QTabWidget) and tabs.count() > 1:
            out += [(f"{name} > {tabs.tabText(i).replace('&&', '&')}", panel, tabs, i) for i in range(tabs.count())]
        else:
            out.append((name, panel, None, 0))
    return out


def raise_view(panel, tabs, index):
    dock = panel.parentWidget()
    while dock is not None and not hasattr(dock, "setFloating"):
        dock = dock.parentWidget()
    if dock is not None:
        dock.show()
        dock.raise_()
    if tabs is not None:
        tabs.setCurrentIndex(index)


tok = load_model(MODEL).tokenizer
window = MainWindow(open_settings(Path(tempfile.mkdtemp()) / "s.ini"), model=MODEL, autoload=False, autorun=False)
window.resize(1600, 1000)
window.show()
ready = []
window.model_ready.connect(ready.append)
window.load_model(MODEL)
while not ready:
    app.processEvents()
    time.sleep(0.005)
panels = {n: d.panel for n, d in window.docks.items() if d.panel is not None}
short = RunRequest(
    prompt=prompt_of(tok, SHORT)[0],
    reuse_prefix=False,
    settings=GenerationSettings(max_new_tokens=16, stop_at_eos=False),
)
longr = RunRequest(
    prompt=prompt_of(tok, LONG)[0],
    reuse_prefix=False,
    settings=GenerationSettings(max_new_tokens=STEPS, stop_at_eos=False),
)
out = {"code": explorer.__file__, "stall": {}, "redraw": {}}
if os.environ.get("REDRAW", "1") == "1":
    window.reset_layout()
    app.processEvents()
    drain()
    stream(window, longr)
    redraws.clear()
    for _ in range(2):
        stream(window, longr)
    t = redraws
    out["redraw"] = {"frames": len(t), "median": float(np.median(t)), "p95": float(np.percentile(t, 95)), "max": max(t)}
    print("redraw", out["redraw"], flush=True)
stream(window, short)
m = Meter()
for label, panel, tabs, index in views(panels):
    if only and not any(o in label for o in only):
        continue
    raise_view(panel, tabs, index)
    drain()
    m.start()
    stream(window, short)
    out["stall"][label] = m.stop()
    print(f"  {label}: {out['stall'][label]:.0f}", flush=True)
print("JSON", json.dumps(out), flush=True)
window.close()
