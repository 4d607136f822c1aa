"""The GUI thread never does a panel's heavy work: results are coalesced to the frame rate (newest wins,
stale ones dropped), analyses run off the GUI thread on a frozen snapshot of the run, long tables fill in
chunks, and streamed steps reach the panels once per frame, in order."""

from __future__ import annotations

import threading

import numpy as np
import torch
from PySide6.QtWidgets import QApplication

from explorer.core.analysis.attention import STAT_NAMES, LayerSummary, Thresholds
from explorer.core.api import capture
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runner import Session
from explorer.ui.panels import depth_views
from explorer.ui.panels.attention_overview import FILL_CHUNK, HeadStatsTable
from explorer.ui.panels.depth import DepthPanel
from explorer.ui.widgets.background import Background
from explorer.ui.widgets.coalesce import FrameCoalescer


def _drawn(panel) -> None:
    for _ in range(3):
        Background.wait_idle()
        QApplication.processEvents()
        panel.frames.flush()


# --- the coalescer ----------------------------------------------------------------------------------------------
def test_coalescer_delivers_only_the_newest_per_key_and_drops_stale(qtbot):
    current = {"token": 1}
    frames = FrameCoalescer(is_current=lambda token: token == current["token"])
    seen = []
    for i in range(5):  # a burst within one frame: only the last one is drawn
        frames.post("lens", 1, lambda i=i: seen.append(("lens", i)))
    frames.post("curve", 1, lambda: seen.append(("curve", 0)))
    frames.post("old", 0, lambda: seen.append(("old", 0)))  # posted for a run no longer on screen
    assert seen == []  # nothing runs at post time
    qtbot.waitUntil(lambda: frames.pending() == 0, timeout=2000)
    assert sorted(seen) == [("curve", 0), ("lens", 4)]
    assert frames.delivered == 2 and frames.dropped == 5
    frames.post("lens", 1, lambda: seen.append(("late", 0)))
    current["token"] = 2  # the run changed before the frame: the result is stale
    frames.flush()
    assert ("late", 0) not in seen


def test_offthread_result_for_a_replaced_run_is_never_drawn(qtbot, tiny_llama, make_panel):
    a = capture("The capital of France is Paris", Session(tiny_llama))
    panel, _sel = make_panel(DepthPanel, a, position="last")
    drawn = []
    gate = threading.Event()

    def slow():
        gate.wait(5)
        return "for a"

    panel.offthread("probe", slow, drawn.append)
    panel.set_run(capture("Another prompt entirely", Session(tiny_llama)))  # replaced while computing
    gate.set()
    _drawn(panel)
    assert drawn == []
    panel.offthread("probe", lambda: "for b", drawn.append)
    _drawn(panel)
    assert drawn == ["for b"]


# --- analyses off the GUI thread ------------------------------------------------------------------------------
def test_depth_views_compute_off_the_gui_thread(qtbot, tiny_llama, make_panel, monkeypatch):
    run = capture("The capital of France is Paris", Session(tiny_llama, store_dtype=torch.float32))
    panel, sel = make_panel(DepthPanel, run, position="last")
    threads = {}
    for name in ("direct_logit_attribution", "residual_share", "layer_similarity"):
        original = getattr(depth_views, name)

        def spy(*args, _name=name, _original=original, **kw):
            threads.setdefault(_name, set()).add(threading.current_thread() is threading.main_thread())
            return _original(*args, **kw)

        monkeypatch.setattr(depth_views, name, spy)
    for view in (panel.attribution, panel.share, panel.similarity):
        panel.tabs.setCurrentWidget(view)
        sel.set("position", 3)
        sel.set("position", run.n_tokens - 1)
        _drawn(panel)
    assert set(threads) == {"direct_logit_attribution", "residual_share", "layer_similarity"}
    assert all(on_gui == {False} for on_gui in threads.values()), threads
    # and what is drawn is the same as a computation on the GUI thread
    expected = depth_views.ShareView.compute(run, run.n_tokens - 1, False)[0]
    panel.tabs.setCurrentWidget(panel.share)
    _drawn(panel)
    np.testing.assert_allclose(panel.share.map.data, expected, rtol=1e-5, atol=1e-6 * np.nanmax(np.abs(expected)))
    assert panel.error is None


def test_snapshot_does_not_grow_with_the_run(tiny_llama):
    session = Session(tiny_llama)
    request = RunRequest("one two three", settings=GenerationSettings(max_new_tokens=3, stop_at_eos=False))
    events = list(session.stream(request))
    run = session.new_run(request)
    run.apply(events[0])
    frozen = run.snapshot()
    before = frozen.array("resid").copy()
    for event in events[1:]:
        run.apply(event)
    assert frozen.n_tokens == events[0].n_new and len(frozen.tokens) == frozen.n_tokens
    assert run.n_tokens == frozen.n_tokens + 3
    np.testing.assert_array_equal(frozen.array("resid"), before)


# --- long tables in chunks --------------------------------------------------------------------------------------
def _summaries(n_layers: int, n_heads: int) -> list[LayerSummary]:
    rng = np.random.default_rng(0)
    return [LayerSummary(layer=i, thumbs=np.zeros((n_heads, 4, 4), np.float32),
                         scores=rng.random((n_heads, len(STAT_NAMES))).astype(np.float32))
            for i in range(n_layers)]


def _cells(table) -> list[tuple[str, ...]]:
    return sorted(tuple(table.item(r, c).text() for c in range(table.columnCount())) for r in range(table.rowCount()))


def test_head_stats_table_fills_in_chunks_equal_to_a_full_fill(qtbot):
    table = HeadStatsTable(Thresholds())
    qtbot.addWidget(table)
    summaries = _summaries(30, 9)  # the default model's 270 heads
    table.set_summaries(summaries, group=3)
    assert table.table.rowCount() == FILL_CHUNK < 270  # the rest follows on later event-loop turns
    qtbot.waitUntil(lambda: table.table.rowCount() == 270, timeout=5000)
    chunked = _cells(table.table)
    assert table.table.isSortingEnabled()
    # a newer fill replaces one in progress: no rows of the old one remain
    table.set_summaries(_summaries(30, 9)[:2], group=3)
    table.set_summaries(summaries, group=3)
    qtbot.waitUntil(lambda: table.table.rowCount() == 270, timeout=5000)
    qtbot.wait(50)
    assert table.table.rowCount() == 270
    assert _cells(table.table) == chunked
    expected = sorted((str(s.layer), str(h), str(h // 3)) for s in summaries for h in range(9))
    assert sorted(row[:3] for row in chunked) == expected


# --- streamed steps reach the panels once a frame, in order -----------------------------------------------------
def test_steps_faster_than_a_frame_are_shown_once_in_order_and_stale_ones_dropped(qtbot, tiny_window, tiny_llama):
    w = tiny_window()
    session = Session(tiny_llama)
    request = RunRequest("one two three", settings=GenerationSettings(max_new_tokens=4, stop_at_eos=False))
    events = list(session.stream(request))
    runs, panel = w.runs, w.docks["tokens"].panel
    seen, shown = [], []
    real_on_steps = panel.on_steps
    panel.on_steps = lambda run, events: (seen.extend(e.step for e in events), real_on_steps(run, events))
    runs.steps_shown.connect(lambda n, _ms: shown.append(n))
    runs.host.active_id = 7  # as if the engine streamed run 7 (the signals are called as the host would)
    runs._run_started(7, session.new_run(request))
    runs._step(7, events[0])
    qtbot.waitUntil(lambda: not panel._update_skipped, timeout=2000)  # the new run's first draw (next frame)
    for event in events[1:]:  # a burst: all arrive before the next frame
        runs._step(7, event)
    assert seen == [] and w.run.n_tokens == events[0].n_new  # nothing drawn at arrival
    qtbot.waitUntil(lambda: bool(shown), timeout=2000)
    assert shown == [len(events) - 1] and seen == [e.step for e in events[1:]]
    assert w.run.n_tokens == events[0].n_new + 4 and w.selection.step == len(events) - 1
    # steps queued for a run that another run replaced before the frame are dropped
    other = list(session.stream(request))
    runs._run_started(7, session.new_run(request))
    runs._step(7, other[0])  # the new run is on screen
    runs.host.active_id = 8
    runs._step(7, other[1])  # a late step of the old stream id: ignored
    runs.flush_steps()
    assert w.run.n_tokens == other[0].n_new and len(w.run.steps) == 1
    assert panel.error is None


def test_next_token_of_a_streaming_run_is_computed_off_the_gui_thread(qtbot, tiny_llama, make_panel, monkeypatch):
    from explorer.core.run import Run
    from explorer.ui.panels.next_token import NextTokenPanel

    session = Session(tiny_llama)
    request = RunRequest("one two three", settings=GenerationSettings(max_new_tokens=3, stop_at_eos=False))
    events = list(session.stream(request))
    run = session.new_run(request)
    run.apply(events[0])
    panel, sel = make_panel(NextTokenPanel, run, draw=False)
    on_gui = []
    original = Run.next_token_logprobs

    def spy(self, position):
        on_gui.append(threading.current_thread() is threading.main_thread())
        return original(self, position)

    monkeypatch.setattr(Run, "next_token_logprobs", spy)
    panel.on_step(run, events[0])  # streamed: the prefill, then each token
    for event in events[1:]:
        run.apply(event)
        sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)
        panel.on_step(run, event)
        sel.set("position", run.n_tokens - 1)
    _drawn(panel)
    assert on_gui and not any(on_gui)  # every prediction was computed in the background
    monkeypatch.setattr(Run, "next_token_logprobs", original)
    np.testing.assert_array_equal(panel.logprobs, run.next_token_logprobs(run.n_tokens - 1))
    assert panel.error is None


def test_a_background_job_that_outlives_its_panel_ends_quietly(qtbot):
    """A pool job finishing after its panel (and the panel's relay) was deleted must not raise in the pool."""
    import threading

    from shiboken6 import delete, isValid

    from explorer.ui.widgets.background import Background, _Job, _Relay

    relay = _Relay()
    release = threading.Event()
    job = _Job(1, lambda: release.wait(5) and "late", relay)
    job.setAutoDelete(False)
    Background.pool().start(job)
    delete(relay)  # the panel closes (its relay with it) while the job still works
    assert not isValid(relay)
    release.set()
    assert Background.pool().waitForDone(5000)  # no "Signal source has been deleted" from the pool thread


# --- cyclic garbage is collected on the GUI thread ---------------------------------------------------------------
def test_cyclic_garbage_is_collected_on_the_gui_thread_never_in_a_pool_thread(qtbot, tiny_window):
    import gc

    tiny_window(load=False)  # a window (its engine host and pool) turns automatic collection off
    assert not gc.isenabled()
    where: list[str] = []

    class Cycle:
        def __init__(self):
            self.me = self  # garbage only the cyclic collector can free

        def __del__(self):
            where.append(threading.current_thread().name)

    Cycle()
    Background(None).submit("churn", lambda: [[i] for i in range(200_000)], lambda _r: None)  # allocations
    Background.wait_idle()  # in a pool thread: with automatic collection it would collect there
    assert where == []
    alive = [[i] for i in range(5_000)]  # the young generation passes its threshold (the churn was freed again)
    qtbot.waitUntil(lambda: bool(where), timeout=5000)  # the GUI thread's collector timer
    del alive
    assert where == [threading.main_thread().name]


def test_full_collections_follow_pythons_rule_and_start_up_objects_are_frozen(qtbot, tiny_window, monkeypatch):
    """A full collection scans the whole heap (330 ms with the libraries loaded on the 2-core machine): the GUI
    thread's collector does one only when generation 2 grew by a quarter since the last, and what start-up loaded
    is frozen once the first model is loaded, so a full collection scans only what runs created."""
    import gc

    from explorer.ui.widgets import collector

    w = tiny_window()  # loads the model
    assert w.info is not None and collector.collect_on_gui_thread().frozen and gc.get_freeze_count() > 0

    class FakeGC:  # the counts a long streaming session reaches
        counts, objects2 = (701, 11, 11), 100

        def __init__(self):
            self.collected: list[int] = []

        def get_count(self):
            return self.counts

        def get_threshold(self):
            return (700, 10, 10)

        def get_objects(self, generation=None):
            return [None] * self.objects2

        def collect(self, generation=2):
            self.collected.append(generation)
            return 0

        def disable(self):
            pass

    fake = FakeGC()
    monkeypatch.setattr(collector, "gc", fake)
    c = collector.Collector(interval_ms=10**6)  # checked by hand here
    assert c.survivors == 100
    fake.objects2 = 110  # generation 2 grew by a tenth: a generation-1 collection only
    c.check()
    fake.objects2 = 130  # by three tenths: a full collection, and its survivors are the new reference
    c.check()
    fake.objects2 = 150
    c.check()  # 150 <= 1.25 * 130
    fake.counts = (701, 3, 11)
    c.check()
    fake.counts = (12, 3, 11)
    c.check()  # the young generation is under its threshold: nothing
    assert fake.collected == [1, 2, 1, 0] and c.full == 1 and c.survivors == 130
