"""Hardening round 2 (issue 16), panel side: depth panel on encoders, residual-share wording, patch labels,
and the student-facing wording that is logic (RoPE variants, sliding windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PySide6.QtWidgets import QApplication

from explorer.core.api import capture, run_request
from explorer.core.events import RunRequest
from explorer.core.runner import Session
from explorer.ui.panels.depth import DepthPanel
from explorer.ui.panels.intervention_menu import head_menu
from explorer.ui.panels.interventions import InterventionsPanel
from explorer.ui.selection import Selection
from explorer.ui.widgets.background import Background


def _drawn(panel):
    """Off-thread results delivered and drawn (they land at the next frame)."""
    for _ in range(3):
        Background.wait_idle()
        QApplication.processEvents()
        panel.frames.flush()


def _limits(sel, run):
    sel.set_limits(steps=len(run.steps), positions=run.n_tokens, layers=run.info.n_layers, heads=run.info.n_heads)


# --- item 16: the depth panel on an encoder ---------------------------------------------------------------------
def test_depth_panel_clears_attribution_and_shows_similarity_for_an_encoder(qtbot, tiny_models, make_panel):
    causal = capture("The capital of France is Paris", Session(tiny_models["tiny-llama"]))
    encoder = capture("the capital of france is paris", Session(tiny_models["tiny-bert"]))
    panel, sel = make_panel(DepthPanel, causal, position="last")
    panel.tabs.setCurrentWidget(panel.attribution)
    panel._refresh_view()
    _drawn(panel)  # computed off the GUI thread, drawn at the next frame
    assert len(panel.attribution.bars.opts["height"]) == 2 * causal.info.n_layers + 1
    assert "Target" in panel.attribution.caption.text()
    _limits(sel, encoder)
    panel.set_run(encoder)
    _drawn(panel)  # (a result for the previous run still in flight must not land)
    assert len(panel.attribution.bars.opts["height"]) == 0  # the previous run's bars are gone
    assert "Target" not in panel.attribution.caption.text() and "encoder" in panel.attribution.caption.text()
    assert panel.attribution.last is None
    panel.tabs.setCurrentWidget(panel.similarity)
    _drawn(panel)
    x, y = panel.similarity.curves["whole layer"].getData()
    assert x is not None and len(y) == encoder.info.n_layers and np.isfinite(y).all()
    assert panel.similarity.map.data.shape == (encoder.info.n_layers + 1,) * 2
    panel.tabs.setCurrentWidget(panel.share)
    _drawn(panel)
    assert "post-norm" in panel.share.caption.text()  # BERT: rows do not sum to 1, and it says so
    assert panel.error is None


def test_residual_share_caption_follows_additivity(qtbot, tiny_models, make_panel):
    from explorer.core.analysis.depth import additivity_error, residual_share

    llama = capture("The capital of France is Paris", Session(tiny_models["tiny-llama"]))
    bert = capture("the capital of france is paris", Session(tiny_models["tiny-bert"]))
    rows = np.nansum(residual_share(llama, 3), axis=1)
    np.testing.assert_allclose(rows, 1.0, rtol=2e-3)  # pre-norm: a state is the sum of its components
    assert additivity_error(llama, 3).max() < 2e-3
    bert_rows = np.nansum(residual_share(bert, 3), axis=1)
    assert np.abs(bert_rows[1:] - 1).max() > 0.1 and additivity_error(bert, 3).max() > 0.1
    panel, _sel = make_panel(DepthPanel, llama, position="last")
    panel.tabs.setCurrentWidget(panel.share)
    _drawn(panel)
    text = panel.share.caption.text()
    assert "Rows sum to 1" in text and "geometric share" in text and "Logit attribution" in text


# --- item 15: the Interventions panel patches along the alignment and labels it ----------------------------------
def test_patch_from_run_b_of_another_length_is_aligned_and_labelled(qtbot, tiny_llama, make_panel):
    session = Session(tiny_llama, store_dtype=torch.float32)
    base = run_request(session, RunRequest("The capital of France is Paris"))
    other = run_request(session, RunRequest("The capital of the lovely old country France is Rome"))
    panel, _sel = make_panel(InterventionsPanel, base, position="last")
    panel.run_b = other
    head_menu(panel, 1, 2).actions()[3].trigger()  # "Patch head L1.H2 from run B..."
    iv = panel.interventions[-1]
    assert iv.kind == "patch_head" and iv.positions == tuple(range(base.n_tokens))
    text = panel.list.item(panel.list.count() - 1).text()
    assert "all positions" not in text and "aligned" in text
    # run B much shorter: unmatched positions are named in the label
    panel.run_b = run_request(session, RunRequest("Paris"))
    head_menu(panel, 0, 1).actions()[3].trigger()
    text = panel.list.item(panel.list.count() - 1).text()
    assert "no counterpart" in text


def test_help_texts_say_what_the_views_are(qtbot, tiny_models):
    from explorer.ui.panels.interventions import InterventionsPanel as Iv

    depth_help = DepthPanel.help_text
    assert "linearisation" in depth_help and "frozen" in depth_help and "not the effect of removing" in depth_help
    assert "geometry" in depth_help and "not how much the prediction depends" in depth_help
    assert "this prompt's positions" in Iv.help_text
    run = capture("Hello there", Session(tiny_models["tiny-llama"]))
    from explorer.core.interventions import mean_ablation

    assert "this prompt's" in mean_ablation(run, 0, 0).describe()


@pytest.fixture(autouse=True)
def _idle():
    yield
    Background.wait_idle()


# --- item 18: wording that is logic ------------------------------------------------------------------------------
def test_kv_whatif_accounts_for_mistrals_sliding_window(qtbot):
    from explorer.ui.panels.kv_whatif import WhatIfCalculator

    calc = WhatIfCalculator()
    qtbot.addWidget(calc)
    calc.select("mistral-7b")
    calc.dtype.setCurrentText("bf16")
    calc.spins["batch"].setValue(1)
    assert calc.spins["context"].value() == 32768
    assert calc.total_bytes() == 2 * 32 * 8 * 128 * 4096 * 2  # the rolling cache holds 4,096 tokens, not 32,768
    assert "sliding" in calc.detail.text() and "4,096" in calc.detail.text()
    y = calc.current_item.yData
    assert y.max() * (1 << 30) == pytest.approx(calc.total_bytes(), rel=1e-12)  # the curve flattens at the window
    calc.select("llama-3-8b")
    assert "sliding" not in calc.detail.text()


def test_eviction_captions_call_streaming_llm_a_masking_approximation(qtbot):
    from explorer.ui.panels.kv_cache import KVCachePanel

    panel = KVCachePanel(Selection())
    qtbot.addWidget(panel)
    assert "masking approximation" in panel.eviction.captions["streaming"].text()
    assert "masking approximation" in KVCachePanel.help_text and "sliding window" in KVCachePanel.help_text


class _Info:
    """A model description as the RoPE view reads it, with a scaled RoPE variant."""

    def __init__(self, info, variant):
        self.__dict__.update(info.to_dict())
        self.rope_variant = variant


class _RunStandIn:
    def __init__(self, run, info):
        self.info, self.n_tokens = info, run.n_tokens


def test_rope_view_says_when_the_model_scales_rope(qtbot, tiny_models):
    from explorer.ui.panels.embeddings_views import RopeView

    run = capture("a b c", Session(tiny_models["tiny-llama"]))
    view = RopeView(Selection())
    qtbot.addWidget(view)
    view.set_run(run)
    assert "This model uses" not in view.title.text()
    view.set_run(_RunStandIn(run, _Info(run.info, "llama3 RoPE scaling (factor 8)")))
    assert "llama3 RoPE scaling" in view.title.text() and "plain RoPE" in view.title.text()


# --- item 17: a run stored partly in float32 says so -------------------------------------------------------------
def test_pipeline_panel_names_arrays_kept_in_float32(qtbot, tiny_models, make_panel):
    import copy

    from explorer.core.models import LoadedModel
    from explorer.ui.panels.pipeline import PipelinePanel

    base = tiny_models["tiny-llama"]
    model = copy.deepcopy(base.model)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(4e6)
    loud = LoadedModel(model=model, tokenizer=base.tokenizer, info=base.info, source="scaled")
    run = capture("one two three four five six seven eight nine ten", Session(loud), max_new_tokens=2)
    assert "resid" in run.widened
    panel, _sel = make_panel(PipelinePanel, run, position="last")
    from PySide6.QtWidgets import QLabel

    texts = " ".join(label.text() for label in panel.findChildren(QLabel))
    assert "kept in float32" in texts and "resid" in texts
