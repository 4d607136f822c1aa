"""Interventions, head sweep and A/B panels: menus -> interventions -> re-run request, diff view, sweep map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numeric import approx, assert_close
from PySide6.QtCore import Qt

from explorer.core.analysis.align import align_runs
from explorer.core.analysis.sweep import head_sweep
from explorer.core.api import run_request
from explorer.core.events import RunRequest
from explorer.core.labels import readable_label
from explorer.core.runner import Session
from explorer.ui.panels.base import PanelServices
from explorer.ui.panels.compare import ComparePanel
from explorer.ui.panels.head_sweep import HeadSweepPanel
from explorer.ui.panels.intervention_menu import head_menu, layer_menu
from explorer.ui.panels.interventions import InterventionsPanel
from explorer.ui.widgets.background import Background
from explorer.ui.worker import EngineHost

PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def session(tiny_llama):
    return Session(tiny_llama, store_dtype=torch.float32)


@pytest.fixture(scope="module")
def base(session):
    return run_request(session, RunRequest(PROMPT))


def test_menu_to_rerun_and_difference_view(qtbot, session, base, make_panel):
    panel, sel = make_panel(InterventionsPanel, base, size=(1000, 600), position="last")
    requests = []
    panel.rerun.connect(requests.append)
    head_menu(panel, 1, 2).actions()[0].trigger()  # "Ablate head L1.H2"
    assert panel.list.count() == 1 and requests[-1].interventions == panel.interventions
    (iv,) = requests[-1].interventions
    assert (iv.kind, iv.layer, iv.head, iv.positions) == ("zero_head", 1, 2, None)
    assert requests[-1].prompt == PROMPT
    layer_menu(panel, 3).actions()[1].trigger()  # "Ablate MLP block L3"
    assert [i.kind for i in requests[-1].interventions] == ["zero_head", "zero_mlp"]
    ablated = run_request(session, requests[-1], previous=None)
    panel.set_run(ablated)
    Background.wait_idle()
    qtbot.waitUntil(lambda: panel.table.rowCount() > 0, timeout=10000)
    assert "KL(baseline" in panel.summary.text() and panel.baseline is base
    pos = base.n_tokens - 1
    kl_now = float(panel.summary.text().split("<b>")[1].split("</b>")[0])
    lp, lq = base.next_token_logprobs(pos), ablated.next_token_logprobs(pos)
    assert kl_now == approx(float(np.sum(np.exp(lp) * (lp - lq))), 1e-3)
    assert panel.lens.data.shape == (base.info.n_layers + 1, 8)
    assert panel.attn.data.shape == (base.n_tokens, base.n_tokens)
    # untick the first: the re-run carries only the MLP ablation
    panel.list.item(0).setCheckState(Qt.Unchecked)
    assert [i.kind for i in requests[-1].interventions] == ["zero_mlp"]
    # patching needs a pinned run B: a sentence, no intervention
    head_menu(panel, 0, 0).actions()[3].trigger()
    assert "run B" in panel.status.text() and panel.list.count() == 2
    panel.pin_run_b()
    head_menu(panel, 0, 0).actions()[3].trigger()
    assert panel.list.count() == 3 and panel.interventions[-1].kind == "patch_head"


def test_head_sweep_panel_map_equals_core_sweep(qtbot, session, base, make_panel):
    panel, sel = make_panel(HeadSweepPanel, base, size=(1000, 600), position="last")
    host = EngineHost(session=session)  # the sweep is an engine job
    try:
        panel.services = PanelServices(submit_job=host.submit_job)
        sel.set("position", base.n_tokens - 2)
        panel.start_sweep()
        qtbot.waitUntil(lambda: panel.result is not None, timeout=60000)
        pos = base.n_tokens - 2
        expected = head_sweep(session, base.token_ids, pos, int(base.tokens[pos + 1].id))
        assert_close(panel.map.data, expected.heads, 1e-5)
        assert panel.progress.value() == panel.progress.maximum() > 0
        panel.map.clicked.emit(2, 3)
        assert (sel.layer, sel.head) == (2, 3)
        panel.behaviour.setCurrentText("sink")
        panel.search()
        Background.wait_idle()
        qtbot.waitUntil(lambda: panel.hits.rowCount() > 0, timeout=10000)
        panel.hits.cellClicked.emit(0, 0)
        assert (sel.layer, sel.head) == (int(panel.hits.item(0, 0).text()), int(panel.hits.item(0, 1).text()))
    finally:
        assert host.shutdown(5000)


def test_compare_panel_aligns_and_diffs(qtbot, session, base, make_panel):
    panel, sel = make_panel(ComparePanel, base, size=(1000, 600), position="last")
    b = run_request(session, RunRequest("The capital of beautiful France is Paris. The capital of Italy is"))
    panel.set_run_b(b)
    Background.wait_idle()
    qtbot.waitUntil(lambda: panel.attn_d.data is not None, timeout=10000)
    al = align_runs(base, b)
    assert panel.strip.columnCount() == len(al.pairs)
    only_b = [c for c in range(len(al.pairs)) if panel.strip.item(0, c).text() == ""]
    assert "".join(panel.strip.item(1, c).text() for c in only_b) == readable_label(" beautiful", None)
    assert panel.attn_d.data.shape == (len(al.matched),) * 2
    assert "KL(A‖B)" in panel.summary.text()
