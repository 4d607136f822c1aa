"""Depth lab panel: curves of every checkpoint (a band for seeds), training on a background job with
cancel, the routing probe with ablation beside it, and the Layer depth panel's learned-routing tab."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import explorer
from explorer.lab.data import Corpus
from explorer.lab.train import TrainConfig, train
from explorer.ui.panels.depth import DepthPanel
from explorer.ui.panels.depth_lab import DepthLabPanel
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background

TEXT = b"def add(a, b):\n    return a + b\n\nclass Point:\n    x = 0\n\n" * 60
CORPUS = Corpus(np.frombuffer(TEXT, np.uint8), np.frombuffer(TEXT[:900], np.uint8), 1, 1)


def _train(root, arch, seed, steps=10):
    cfg = TrainConfig(arch=arch, size="tiny", minutes=0, max_steps=steps, batch=4, seq=32, eval_every=5,
                      eval_batches=1, eval_batch=2, seed=seed)
    torch.set_num_threads(1)
    return train(cfg, root / f"{arch}-tiny-seed{seed}", corpus=CORPUS)


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    for seed in (0, 1):
        _train(root, "attnres", seed)
    _train(root, "moda", 0)
    return root


def _panel(qtbot, root):
    panel = DepthLabPanel(Selection(), root=root)
    qtbot.addWidget(panel)
    panel.resize(1200, 800)
    panel.show()
    return panel


def test_curves_of_every_checkpoint_with_a_band_for_seeds(qtbot, lab_root):
    panel = _panel(qtbot, lab_root)
    assert panel.models.count() == 3
    curves = panel.curves()
    assert len(curves["attnres"]["tokens"]) == 2 and len(curves["moda"]["tokens"]) == 1
    items = panel.by_tokens.getPlotItem().items
    assert sum(type(i).__name__ == "FillBetweenItem" for i in items) == 1  # the two attnres seeds' band


def test_probe_shows_weights_and_ablation_on_the_same_axes(qtbot, lab_root):
    panel = _panel(qtbot, lab_root)
    row = next(i for i, e in enumerate(panel.entries) if e.arch == "attnres")
    panel.models.setCurrentRow(row)
    qtbot.waitUntil(lambda: panel.probe_result is not None, timeout=30000)
    Background.wait_idle()
    weights, importance = panel.routing.weights.data, panel.routing.importance.data
    assert weights.shape == importance.shape == (5, 5)  # readers x sources of a 2-layer model
    assert np.allclose(np.nansum(weights, axis=1), 1.0, rtol=1e-5)
    assert np.isfinite(importance).any()
    assert panel.snapshot.maximum() >= 1  # routing snapshots recorded while training


def test_training_from_the_gui_runs_in_its_own_process_and_cancels(qtbot, tmp_path, monkeypatch):
    import explorer.lab.train as train_module

    in_this_process = []
    monkeypatch.setattr(train_module, "train", lambda *a, **k: in_this_process.append(a))
    panel = _panel(qtbot, tmp_path)
    panel.arch.setCurrentText("mhc")
    panel.size.setCurrentText("tiny")
    panel.minutes.setValue(5.0)
    job = panel.start_training()
    assert panel.start_training() is None  # one training at a time
    assert not panel.train_button.isEnabled()
    assert job._side.engine.pid != os.getpid()  # the trainer is another process
    qtbot.waitUntil(lambda: job.progress is not None, timeout=120000)
    panel.shutdown()  # what quitting the app does: cancel, wait for the checkpoint
    assert job.done
    panel.poll()
    assert job.result is not None and job.result.cancelled
    assert in_this_process == []  # the window's process never trained (never ran torch for it)
    assert panel.train_button.isEnabled() and "cancelled" in panel.status.text()
    assert panel.models.count() == 1 and (job.out / "model.safetensors").is_file()


def test_layer_depth_panel_shows_learned_routing_beside_the_post_hoc_share(qtbot, lab_root, tiny_llama):
    folder = next(p for p in lab_root.iterdir() if p.name.startswith("attnres"))
    run = explorer.capture("def add(a, b):", model=explorer.load_model(str(folder)), max_new_tokens=2)
    sel = Selection()
    panel = DepthPanel(sel)
    qtbot.addWidget(panel)
    panel.resize(900, 800)
    panel.show()
    sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)
    panel.set_run(run)
    panel.tabs.setCurrentWidget(panel.learned)
    sel.set("position", 4)
    weights = panel.learned.learned.weights.data
    assert np.allclose(weights, run.routing["attnres"][:, 4], equal_nan=True)
    assert panel.learned.share.map.data is not None  # the post-hoc view of the same run, beside it
    other = explorer.capture("Hello there", model=tiny_llama)
    panel.set_run(other)
    panel.tabs.setCurrentWidget(panel.depth_attention)
    panel.tabs.setCurrentWidget(panel.learned)
    assert "not a Depth lab model" in panel.learned.learned.caption.text()


def test_kv_cache_formula_counts_moda_depth_keys(qtbot, lab_root):
    from explorer.ui.panels.kv_cache import KVCachePanel

    sel = Selection()
    panel = KVCachePanel(sel)
    qtbot.addWidget(panel)
    panel.show()
    for arch in ("moda", "attnres"):
        folder = next(p for p in lab_root.iterdir() if p.name.startswith(arch))
        run = explorer.capture("def add(a, b):", model=explorer.load_model(str(folder)), max_new_tokens=2)
        sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers,
                       heads=run.info.n_heads)
        panel.set_run(run)
        text = panel.formula.text()
        info = run.info
        expected = 2 * 2 * (info.n_layers - 1) * info.n_kv_heads * info.head_dim * run.n_prompt * 4  # float32
        assert ("MoDA depth keys/values" in text) == (arch == "moda")
        assert (f"{expected:,} B" in text) == (arch == "moda")
