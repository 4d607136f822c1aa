"""Embeddings panel: shown points equal the shared projection, clicks select, play, neighbours, Q/K, RoPE."""

from __future__ import annotations

import numpy as np
import pytest
from numeric import assert_close
from PySide6.QtWidgets import QApplication

from explorer.core.analysis import projection as P
from explorer.core.analysis import rope as R
from explorer.core.api import capture
from explorer.ui.panels.embeddings import EmbeddingsPanel
from explorer.ui.widgets.background import Background

TOKENS, VOCAB, QK, ROPE = range(4)


@pytest.fixture(scope="module")
def llama_run(tiny_llama):
    return capture("The cat sat on the mat. The cat sat", tiny_llama, max_new_tokens=3)


@pytest.fixture(autouse=True)
def private_vocab_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "vocab_cache_dir", lambda: tmp_path / "vocab-maps")


def _settle() -> None:
    for _ in range(3):
        Background.wait_idle()
        QApplication.processEvents()


def _panel(make_panel, run, tab=TOKENS):
    panel, sel = make_panel(EmbeddingsPanel, run, size=(1000, 650), draw=False)
    panel.tabs.setCurrentIndex(tab)
    panel.set_run(run)
    _settle()
    return panel, sel


def _shown(scatter) -> np.ndarray:
    x, y = scatter.getData()
    return np.stack([x, y], axis=1)


def test_points_are_the_shared_projection_at_the_slider_layer(qtbot, llama_run, make_panel):
    panel, sel = _panel(make_panel, llama_run)
    view = panel.tokens_view
    states = llama_run.array("resid")  # [layers + 1, N, D]
    expected, _, massive = P.project_trajectories(states, normalise=True)  # checked in test_projection.py
    for layer in (0, 2, llama_run.info.n_layers):
        view.slider.setValue(layer)
        shown = _shown(view.scatter)
        assert shown.shape == (llama_run.n_tokens, 2)
        assert_close(shown[~massive], expected[layer][~massive], 1e-4)
    assert view.layer_label.text().startswith("after block")
    # the trajectory is the selected token's path through every layer
    sel.set("position", 4)
    tx, ty = view.trajectory.getData()
    assert_close(np.stack([tx, ty], 1)[:-1], expected[:, 4], 1e-4)


def test_a_projection_that_lands_after_more_steps_arrived_is_drawn_for_its_tokens(qtbot, llama_run, make_panel):
    """While a run streams, the projection of N tokens can land when the run already holds more (the panel projects
    them at its next draw): it is drawn with the first N tokens' colours, not refused by the scatter."""
    panel, _sel = _panel(make_panel, llama_run)
    view = panel.tokens_view
    n = llama_run.n_tokens
    coords, explained, massive = view.coords, view.explained, view.massive
    for colour in range(view.colour.count()):
        view.colour.setCurrentIndex(colour)
        view._got_coords((coords[:, : n - 2], explained, massive[: n - 2]))  # computed 2 tokens ago
        assert panel.error is None
        assert _shown(view.scatter).shape == (n - 2, 2)
        assert len(view._brushes) == n - 2


def test_clicking_a_point_selects_the_token(qtbot, llama_run, make_panel):
    panel, sel = _panel(make_panel, llama_run)
    view = panel.tokens_view
    points = view.scatter.points()
    view.scatter.sigClicked.emit(view.scatter, [points[5]], None)
    assert sel.position == 5
    view.scatter.sigClicked.emit(view.scatter, [points[2]], None)
    assert sel.position == 2
    sizes = np.array([p.size() for p in view.scatter.points()])
    assert sizes.argmax() == 2  # the selected point is drawn larger


def test_slider_follows_the_shared_layer_and_play_animates(qtbot, llama_run, make_panel):
    panel, sel = _panel(make_panel, llama_run)
    view = panel.tokens_view
    sel.set("layer", 1)
    assert view.slider.value() == 2  # hidden state 2 is the output of block 1
    view.slider.setValue(3)
    assert sel.layer == 2
    view.play.setChecked(True)
    assert view.timer.isActive()
    before = _shown(view.scatter).copy()
    view._tick()
    assert view.slider.value() == 4 and not np.allclose(_shown(view.scatter), before)
    view._tick()  # at the last layer: play stops
    assert not view.play.isChecked() and not view.timer.isActive()


def test_vocabulary_neighbours_match_the_table(qtbot, llama_run, make_panel):
    panel, sel = _panel(make_panel, llama_run, tab=VOCAB)
    view = panel.vocab_view
    sel.set("position", 1)
    ids, sims = P.nearest_neighbours(llama_run.unembed, llama_run.tokens[1].id, view.table.rowCount())
    assert view.table.rowCount() > 0
    assert [int(view.table.item(r, 1).text()) for r in range(len(ids))] == ids.tolist()
    assert_close([float(view.table.item(r, 2).text()) for r in range(len(ids))], sims, 1e-3)
    assert "tied" in view.header.text()
    # the sample map is on the disk cache now, and loads from it next time
    assert P.vocab_map(llama_run.unembed, llama_run.info.name, 4000).from_cache


def test_queries_and_keys_share_one_projection(qtbot, llama_run, make_panel):
    panel, sel = _panel(make_panel, llama_run, tab=QK)
    sel.set("layer", 1)
    sel.set("head", 3)
    view = panel.qk_view
    n = llama_run.n_tokens
    q = llama_run.array("queries")[1, 3].astype(np.float32)
    k = llama_run.array("keys")[1, 3 // llama_run.info.group_size].astype(np.float32)
    assert_close(_shown(view.scatter), P.pca(np.vstack([q, k])), 1e-4)
    symbols = [p.symbol() for p in view.scatter.points()]
    assert symbols == ["o"] * n + ["t"] * n
    view.scatter.sigClicked.emit(view.scatter, [view.scatter.points()[n + 3]], None)  # a key
    assert sel.position == 3


def test_rope_view_angles_and_absence(qtbot, llama_run, tiny_models, make_panel):
    panel, _ = _panel(make_panel, llama_run, tab=ROPE)
    view = panel.rope_view
    info = llama_run.info
    assert not view.split.isHidden() and view.absent.isHidden()
    rows = view.heatmap.data.shape[0]
    assert_close(view.heatmap.data, R.rope_angles(rows, info.head_dim, info.rope_theta, wrap=True), 1e-5)
    x, y = view.curve.getData()
    q = np.random.default_rng(0).normal(size=info.head_dim)
    np.testing.assert_allclose(y, R.distance_curve(q, q, info.rope_theta, rows), rtol=1e-6)
    gpt2 = capture("a b c", tiny_models["tiny-gpt2"])
    panel.set_run(gpt2)
    assert view.split.isHidden() and not view.absent.isHidden() and "no rotary" in view.absent.text()


def test_encoder_without_head(qtbot, tiny_models, make_panel):
    run = capture("a b c", tiny_models["tiny-bert"])
    panel, _ = _panel(make_panel, run, tab=VOCAB)
    assert "no language-model head" in panel.vocab_view.header.text()
    panel.tabs.setCurrentIndex(TOKENS)
    _settle()
    assert len(panel.tokens_view.scatter.points()) == run.n_tokens
    assert panel.error is None
