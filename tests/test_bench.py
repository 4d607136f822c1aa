"""`lm-explorer bench --quick` on the tiny model: every figure of the JSON is there and sane."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from explorer import bench
from explorer.core import benchmarks
from explorer.ui.panels import REGISTRY

SIZE_KEYS = {"tokens", "steps", "median_ms", "p95_ms", "first_draw_ms", "median_selection_ms", "median_on_step_ms",
             "median_events_paint_ms", "per_panel_median_ms", "per_panel_paint_median_ms", "per_panel_first_draw_ms"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LM_EXPLORER_CACHE", str(tmp / "cache"))
        mp.setitem(REGISTRY, "broken", "explorer.ui.panels.does_not_exist:Nope")  # a panel whose import fails
        assert bench.main(["--quick", "--model", "tiny-llama", "--json", str(tmp / "out.json"),
                           "--markdown", str(tmp / "out.md")]) == 0
    data = json.loads((tmp / "out.json").read_text())
    saved = json.loads((tmp / "cache" / bench.BENCH_FILE).read_text())
    markdown = (tmp / "out.md").read_text()
    assert "| decode 16 tokens, tokens/s" in markdown and "tiny-llama (--quick)" in markdown
    return data, saved


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_shape(results):
    data, saved = results
    assert saved == data  # the copy the Pipeline panel reads
    assert set(data) == {"meta", "load", "prefill", "decode", "memory", "gui", "stability", "live", "checks"}
    meta = data["meta"]
    assert meta["model"] == "tiny-llama" and meta["quick"] is True and _positive(meta["duration_s"])
    assert {"cpu", "cores", "torch", "transformers", "python", "platform"} <= set(meta["machine"])
    assert set(data["load"]) == {"first_s", "cached_s", "speedup"} and all(map(_positive, data["load"].values()))

    sizes = data["prefill"]["sizes"]
    assert len(sizes) == 2
    for key, v in sizes.items():
        assert set(v) == {"tokens", "plain_ms", "plain_last_logits_ms", "instrumented_ms", "ratio",
                          "ratio_vs_last_logits"}
        assert 0 < v["tokens"] <= int(key) and all(map(_positive, v.values()))
        assert v["ratio"] == pytest.approx(v["instrumented_ms"] / v["plain_ms"])
    assert data["prefill"]["ratio_max"] == max(v["ratio"] for v in sizes.values())

    d = data["decode"]
    assert set(d) == {"new_tokens", "prompt_tokens", "plain_tokens_per_s", "instrumented_tokens_per_s", "ratio"}
    assert all(map(_positive, d.values()))

    m = data["memory"]
    assert set(m) == {"tokens", "capture_bytes", "capture_used_bytes", "eager_bytes", "ratio", "used_ratio"}
    assert 0 < m["capture_used_bytes"] <= m["capture_bytes"] and 0 < m["ratio"] < 1

    s = data["stability"]
    assert set(s) == {"runs", "rss_start_mb", "rss_end_mb", "growth_mb"} and s["runs"] == 10
    assert s["growth_mb"] == pytest.approx(s["rss_end_mb"] - s["rss_start_mb"])

    assert set(data["checks"]) == set(bench.TARGETS)
    for c in data["checks"].values():
        assert set(c) == {"value", "target", "ok"} and isinstance(c["ok"], bool)


def test_gui_part(results):
    gui = results[0]["gui"]
    assert {"panels", "errors", "sizes", "head_select", "panels_measured", "redraw_p95_ms_at_1024",
            "redraw_reference_tokens"} <= set(gui)
    assert "broken" in gui["errors"] and "ModuleNotFoundError" in gui["errors"]["broken"]
    assert "pipeline" in gui["panels_measured"] and "broken" not in gui["panels_measured"]
    assert len(gui["sizes"]) == 2
    for v in gui["sizes"].values():
        assert set(v) >= SIZE_KEYS and v["steps"] == 6
        assert v["p95_ms"] >= v["median_ms"] > 0
        assert "pipeline" in v["per_panel_median_ms"] and "broken" not in v["per_panel_median_ms"]
    head = gui["head_select"]
    assert {"tokens", "median_ms", "max_ms"} <= set(head) and head["max_ms"] >= head["median_ms"] >= 0
    for key in ("stalls", "stalls_replay"):  # with the window's engine streaming, and the panels alone
        stalls = gui[key]
        views = stalls["per_view_ms"]
        assert "attention > Head statistics" in views and "tokens" in views and "broken" not in views
        assert all(ms >= 0 for ms in views.values()) and stalls["longest_ms"] == views[stalls["worst"]]
    live = gui["redraw_streaming"]  # the redraw figure is taken while the engine streams, not in a replay
    assert live["frames"] >= 1 and live["p95_ms"] >= live["median_ms"] > 0
    assert gui["redraw_p95_ms_at_1024"] == live["p95_ms"] and gui["redraw_reference_tokens"] == live["tokens"]
    first = live["first_run"]  # the first run at that length, reported on its own (not in the p95)
    assert live["warmup_runs"] == 1 and first["frames"] >= 1 and first["p95_ms"] >= first["median_ms"] > 0


def test_live_part(results):
    """The window and the headless API, both on a real engine process, per prompt and engine thread count."""
    data, _ = results
    live = data["live"]
    assert live["threads"] == [1, 2] and set(live["cases"]) == {"short", "long"}
    for case in live["cases"].values():
        assert case["prompt_tokens"] > 0 and _positive(case["headless"]["total_s"])
        assert case["generated"] and max(case["generated"]) <= case["new_tokens"]
        for t in (1, 2):
            w = case[f"window_{t}"]
            assert _positive(w["total_s"]) and w["stall_ms"] >= 0
            assert w["ratio_total"] == pytest.approx(case["headless"]["total_s"] / w["total_s"])
    assert set(live["worst"]) == {"short", "long"}
    assert data["checks"]["window vs headless, short prompt (engine process)"]["value"] == live["worst"]["short"]


def test_stall_meter_sees_a_blocked_gui_thread(qtbot):
    import time

    from PySide6.QtWidgets import QApplication

    from explorer.ui.bench_stalls import StallMeter, pump

    app = QApplication.instance()
    meter = StallMeter()
    meter.start()
    pump(app, 30)
    time.sleep(0.25)  # the GUI thread blocked for at least 250 ms
    pump(app, 30)
    assert meter.stop() >= 250


def test_eager_bytes_matches_design_figure():
    smollm = SimpleNamespace(n_layers=30, n_heads=9, hidden_size=576)
    # 30 layers x 9 heads x 2048^2 float32 attention maps is the 4.5 GB quoted in DESIGN.md
    assert benchmarks.eager_bytes(smollm, 2048) == 30 * 9 * 2048**2 * 4 + 31 * 2048 * 576 * 4
    assert 4.5e9 < benchmarks.eager_bytes(smollm, 2048) < 4.7e9


def test_checks_and_fit():
    results = {"decode": {"ratio": 0.8}, "prefill": {"ratio_max": 1.1}, "memory": {"ratio": 0.1},
               "gui": {"redraw_p95_ms_at_1024": 20.0, "head_select": {"median_ms": 50.0}},
               "stability": {"growth_mb": 10.0}}
    c = bench.checks(results)
    assert [c[k]["ok"] for k in bench.TARGETS] == [False, True, True, False, True, None, True, None, None]
    fitted = bench.fit_to_context(bench.config_for("x", quick=False), context=512)
    assert max(fitted.prefill_sizes + fitted.gui_sizes) + fitted.decode_tokens <= 512
    assert fitted.prefill_sizes == (128, 512 - 64 - 8)
