"""The Retrieval panel: the embedding map, the chunk table and the attention shares of a RAG run, following
the shared selection; empty (with its sentence) for a run without retrieval; streaming adds to the shares."""

from __future__ import annotations

import pytest
from numeric import assert_close

from explorer.core.api import capture
from explorer.core.events import TokenKind
from explorer.core.retrieval.attribution import chunk_attention
from explorer.core.retrieval.embed import Embedder
from explorer.core.retrieval.index import build_index
from explorer.core.retrieval.jobs import embedding_map
from explorer.core.runner import Session
from explorer.ui.panels import token_colors
from explorer.ui.panels.embeddings_tokens import KIND_COLOURS

pytest.importorskip("pytestqt")

DOCS = {"paris.md": "Paris is the capital of France.\n\nThe Eiffel tower stands in Paris.\n",
        "python.txt": "Python is a programming language with lists and dicts.\n",
        "nile.txt": "The Nile is a long river in Africa.\n"}


@pytest.fixture(scope="module")
def rag_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("rag")
    for name, text in DOCS.items():
        (root / name).write_text(text, encoding="utf-8")
    build_index(root, root / "index", emb=Embedder(tiny_models["tiny-bert"]))
    return capture("Where is the Eiffel tower?", Session(tiny_models["tiny-llama"]), retrieve=root / "index",
                   retrieve_k=3, max_new_tokens=5)


def _sync_jobs(panel):
    """Run the panel's embedding-map job at once (as the engine would, on this thread)."""
    def submit(request, on_done=None, on_error=None, on_progress=None, **_kw):
        on_done(embedding_map(request))
    panel.services.submit_job = submit


def test_every_token_kind_has_a_colour_and_a_name():
    for kind in TokenKind:
        assert kind in token_colors.KIND_COLORS and kind in token_colors.KIND_NAMES and kind in KIND_COLOURS


def test_panel_draws_map_table_and_attention(qtbot, make_panel, rag_run):
    panel, sel = make_panel("retrieval", draw=False)
    _sync_jobs(panel)
    sel.set_limits(steps=len(rag_run.steps), positions=rag_run.n_tokens, layers=rag_run.info.n_layers,
                   heads=rag_run.info.n_heads)
    panel.set_run(rag_run)
    assert panel.error is None, panel.error
    assert not panel.is_empty()
    assert panel.table.rowCount() == 3
    assert panel.map is not None and panel.map.points.shape[0] == 1 + 3 + panel.map.n_neighbours
    assert_close(panel.map.scores[1:4], [c.score for c in rag_run.retrieved], 1e-3)  # the map's cosine = search's
    assert "PCA" in panel.map_caption.text()
    expected = chunk_attention(rag_run)
    assert_close(panel.tokens.data, expected.shares.mean(axis=0), 1e-5)  # [G, C] averaged over layers

    last = rag_run.n_tokens - 1
    sel.set("position", last)  # a generated token: the layer map shows that token's shares
    assert_close(panel.layers.data, expected.shares[:, -1, :], 1e-5)
    sel.set("position", 0)  # a prompt token: the mean over the generated tokens
    assert_close(panel.layers.data, expected.mean_over_tokens(), 1e-5)

    panel.select_chunk(1)  # a chunk's row selects its first token, for every panel
    assert sel.position == int(expected.chunk_tokens[1][0])
    assert rag_run.tokens[sel.position].kind == TokenKind.RETRIEVED


def test_streaming_adds_shares_step_by_step(qtbot, make_panel, rag_run):
    from explorer.core.run import Run

    panel, _sel = make_panel("retrieval", draw=False)
    _sync_jobs(panel)
    growing = Run.start(rag_run.info, rag_run.request, rag_run.norm, rag_run.unembed)
    growing.scaling = rag_run.scaling
    for event in rag_run.steps:
        growing.apply(event)
        if event.is_prefill:
            panel.set_run(growing)
        else:
            panel.on_step(growing, event)
        assert panel.error is None, panel.error
    assert_close(panel.attn.shares, chunk_attention(rag_run).shares, 1e-5)


def test_a_run_without_retrieval_leaves_the_panel_empty(qtbot, make_panel, tiny_models):
    run = capture("one two", Session(tiny_models["tiny-llama"]), max_new_tokens=1)
    panel, _sel = make_panel("retrieval", run)
    assert panel.is_empty() and panel.table.rowCount() == 0


def test_window_retrieve_toggle_runs_rag_and_a_bad_index_loses_nothing(qtbot, tiny_window, tiny_models, tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for name, text in DOCS.items():
        (root / name).write_text(text, encoding="utf-8")
    emb = Embedder(tiny_models["tiny-bert"])
    build_index(root, tmp_path / "index", emb=emb)
    w = tiny_window(panels=("tokens", "retrieval"))
    bar = w.prompt_bar
    assert not bar.retrieve_k.isEnabled()
    bar.retrieve.setChecked(True)
    bar.retrieve_k.setValue(2)
    bar.retrieve_index.set_index(str(tmp_path / "index"))
    bar.max_new.setValue(2)
    with qtbot.waitSignal(w.run_done, timeout=60000):
        w.run_text("Where is the Eiffel tower?")
    run = w.run
    assert len(run.retrieved) == 2 and any(t.kind == TokenKind.RETRIEVED for t in run.tokens)
    assert bar.to_state()["retrieve"] is True and bar.to_state()["retrieve_k"] == 2

    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "b.txt").write_text("\n")
    build_index(tmp_path / "blank", tmp_path / "empty", emb=emb)
    bar.retrieve_index.set_index(str(tmp_path / "empty"))
    with qtbot.waitSignal(w.run_done, timeout=60000) as done:
        w.run_text("Where is the Eiffel tower?")
    assert done.args == ["error"]
    assert "holds no chunks" in w.banner_label.text()
    assert w.run is run  # the run on screen is kept
