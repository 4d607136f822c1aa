"""Each guided tour, run in the real window on the real default model, and each claim checked independently."""

from __future__ import annotations

import os

import numpy as np
import pytest
from numeric import approx

from explorer.core import catalogue
from explorer.core.analysis.align import lens_logprobs
from explorer.core.analysis.eviction import EvictionPolicy
from explorer.core.analysis.jobs import EvictionWhatIf
from explorer.core.lens_store import cached_lens
from explorer.ui import theme
from explorer.ui import tour_scripts as ts
from explorer.ui.main_window import MainWindow
from explorer.ui.settings import open_settings
from explorer.ui.tours import NEXT_KEYS, player

pytest.importorskip("pytestqt")
PANELS = ["tokens", "attention", "depth", "kv_cache", "next_token", "interventions"]
SHOTS = os.environ.get("LM_EXPLORER_TOUR_SHOTS")  # a folder: save a PNG of the window at each step


@pytest.fixture(scope="module")
def window(qapp, tmp_path_factory, default_model):
    w = MainWindow(open_settings(tmp_path_factory.mktemp("tours") / "s.ini"), model=catalogue.default_model_name(),
                   autoload=False, autorun=False, panels=PANELS)
    w.resize(1400, 900)
    w.show()
    yield w
    w.close()


def _play(qtbot, w, key: str) -> list:
    """Start a tour and walk every step; returns (the run on screen, a copy of the facts) per step."""
    p = player(w)
    seen = []
    for i in range(len(ts.TOURS[key].steps)):
        with qtbot.waitSignal(p.step_shown, timeout=180000) as blocker:
            if i == 0:
                p.start(key)
            else:
                p.go_next()
        assert blocker.args == [key, i]
        assert p.text.text() and "could not be shown" not in p.text.text()
        seen.append((w.run, dict(p.facts), p.text.text()))
        if SHOTS:
            w.grab().save(os.path.join(SHOTS, f"{key}-{i}.png"))
    return seen


def _overlap(tokenizer, text: str, word: str) -> int:
    """Tokens of `text` (by the tokenizer's own offsets) overlapping `word`."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    lo = text.index(word)
    hi = lo + len(word)
    return sum(1 for a, b in enc["offset_mapping"] if a < hi and b > lo and b > a)


def test_tokenization_tour(qtbot, window):
    steps = _play(qtbot, window, "tokens")
    run, facts, text = steps[0]
    tok = window.host.session.loaded.tokenizer
    assert facts["n_digits"] == len("12345") == _overlap(tok, ts.TOKENS_PROMPT, "12345")
    assert run.tokens[facts["digits_pos"][0]].text == "1" and f"is {facts['n_digits']} tokens" in text
    pieces = [run.tokens[i].raw_bytes for i in facts["emoji_pos"]]  # byte-level: offsets cannot split a character
    emoji = ts.FAMILY.encode()
    assert facts["n_emoji"] == len(pieces) > len(ts.FAMILY) and emoji in b"".join(pieces)
    assert emoji not in b"".join(pieces[1:]) and emoji not in b"".join(pieces[:-1])  # every piece carries its bytes

    def whole(b: bytes) -> bool:
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    assert facts["emoji_partial"] == sum(not whole(b) for b in pieces) >= len(ts.FAMILY)
    assert facts["n_cyr"] == _overlap(tok, ts.TOKENS_PROMPT, "Привет") > 1
    kanji = [run.tokens[i].raw_bytes for i in facts["kanji_pos"]]
    assert facts["n_kanji"] == len(kanji) > 2 and "東京".encode() in b"".join(kanji)
    special = run.tokens[facts["special_pos"]]
    assert special.id == tok.convert_tokens_to_ids("<|im_end|>") and special.injected
    assert window.selection.position == facts["special_pos"]  # the last step selected it


def test_attention_sink_tour(qtbot, window):
    steps = _play(qtbot, window, "sink")
    run, facts, _ = steps[0]
    L, H = run.info.n_layers, run.info.n_heads
    sink = np.array([[run.attention(layer, h)[1:, 0].mean() for h in range(H)] for layer in range(L)])  # rows >= 1
    assert np.unravel_index(np.argmax(sink), sink.shape) == (facts["sink_layer"], facts["sink_head"])
    assert sink[facts["sink_layer"], facts["sink_head"]] > 0.5
    assert window.selection.layer == facts["sink_layer"] and window.selection.head == facts["sink_head"]
    peak = np.abs(run.array("resid").astype(np.float32)).max(axis=(0, 2))
    assert peak[0] > 20 * np.median(peak[1:]) and facts["peak_ratio"] == pytest.approx(
        peak[0] / np.median(peak[1:]), rel=1e-3)


def test_induction_tour(qtbot, window):
    steps = _play(qtbot, window, "induction")
    (base, facts, _), (ablated, facts2, _) = steps
    ids = base.token_ids
    rows, cols = [], []
    for i in range(len(ids)):
        for j in range(i - 1):
            if ids[j] == ids[i]:
                rows.append(i)
                cols.append(j + 1)
    rows, cols = np.array(rows), np.array(cols)
    L, H = base.info.n_layers, base.info.n_heads
    score = np.zeros((L, H))
    for layer in range(L):
        for h in range(H):
            a = base.attention(layer, h)
            per_row = np.bincount(rows, weights=a[rows, cols], minlength=len(ids))
            score[layer, h] = per_row[np.unique(rows)].mean()
    assert np.unravel_index(np.argmax(score), score.shape) == (facts["ind_layer"], facts["ind_head"])
    assert score[facts["ind_layer"], facts["ind_head"]] > 0.3  # an induction head by the panel's own threshold
    ivs = ablated.request.interventions
    assert [(iv.kind, iv.layer, iv.head) for iv in ivs] == [("zero_head", facts["ind_layer"], facts["ind_head"])]
    half = range(len(ids) // 2 + 1, len(ids) - 1)
    lp = [np.mean([r.next_token_logprobs(i)[ids[i + 1]] for i in half]) for r in (base, ablated)]
    assert lp[1] < lp[0]  # the ablation hurts the copying
    panel = window.docks["interventions"].panel  # the panel shows the ablated run against the one before
    qtbot.waitUntil(lambda: "KL(baseline" in panel.summary.text(), timeout=30000)
    assert panel.baseline is base and panel.run is ablated
    # log-probabilities of a few nats: a tolerance relative to their size (CPUs round differently)
    assert facts2["base_lp"] == approx(lp[0], 1e-4) and facts2["ablated_lp"] == approx(lp[1], 1e-4)


def test_paris_tour(qtbot, window):
    steps = _play(qtbot, window, "paris")
    run, facts, text = steps[0]
    info = run.info
    readout = cached_lens(info.name, "tuned", info.n_layers, info.hidden_size) if facts["lens_kind"] == "tuned" \
        else None
    assert facts["lens_kind"] == ("tuned" if readout is not None else "logit")
    assert facts["lens_label"] in text
    pos = run.n_prompt - 1
    top = lens_logprobs(run, pos, readout).argmax(-1)  # [L+1] top token per depth with the named lens
    assert run.vocab[top[-1]].strip() == "Paris" and top[-1] == facts["paris_id"]
    first = next(d for d in range(len(top)) if (top[d:] == top[-1]).all())
    assert facts["depth"] == first
    depth_panel = window.docks["depth"].panel
    assert depth_panel.lens_choice.kind == facts["lens_kind"]
    assert steps[1][1]["p_final"] == pytest.approx(float(np.exp(run.next_token_logprobs(pos)[top[-1]])), rel=1e-4)


def test_kv_cache_tour(qtbot, window):
    steps = _play(qtbot, window, "kv")
    run, facts, _ = steps[0]
    info = run.info
    per_token = facts["per_token"]
    for s in range(len(run.steps)):  # the claim "growing by the same amount at each token"
        n = run.n_prompt + s
        assert int(run.kv_bytes_per_layer(s).sum()) == pytest.approx(n * per_token)
    assert per_token == 2 * info.n_layers * info.n_kv_heads * info.head_dim * facts["bytes_per_value"]
    assert facts["bytes_per_value"] in (2, 4)
    f2 = steps[1][1]
    results = []  # the same what-if, asked of the engine again (the model runs only on its thread)
    window.host.submit_job(EvictionWhatIf(run, (EvictionPolicy("streaming", 16, 4),), ts.KV_NEW - 1),
                           on_done=results.append)
    qtbot.waitUntil(lambda: bool(results), timeout=120000)
    _run, _rows, _keeps, effects = results[0]
    eff = effects["streaming"]
    assert f2["ev_kl"] == pytest.approx(eff.mean_kl, rel=1e-3, abs=1e-6) and eff.mean_kl > 0
    assert f2["ev_kept"] < 1.0 and f2["ev_flips"] == int(eff.top1_changed.sum())
    from PySide6.QtWidgets import QTabWidget

    tabs = [t for t in window.docks["kv_cache"].panel.findChildren(QTabWidget) if t.count()]
    assert any(t.tabText(t.currentIndex()) == "Eviction" for t in tabs)  # the step brought its tab forward


def test_keyboard_steps_and_previous(qtbot, window):
    """Alt+Right moves to the next step; Previous goes back without re-running an identical prompt."""
    p = player(window)
    with qtbot.waitSignal(p.step_shown, timeout=180000):
        p.start("sink")
    run = window.run
    action = next(a for a in window.actions() if a.shortcut().toString() == NEXT_KEYS)
    with qtbot.waitSignal(p.step_shown, timeout=60000) as blocker:
        action.trigger()
    assert blocker.args == ["sink", 1]
    with qtbot.waitSignal(p.step_shown, timeout=60000) as blocker:
        p.go_previous()
    assert blocker.args == ["sink", 0] and window.run is run  # same prompt: no new run
    normal = p.text.font().pointSizeF()
    theme.apply(presenter=True)
    try:
        assert p.text.font().pointSizeF() >= 1.45 * normal  # presenter mode: the paragraph grows with the app font
        assert p.text.height() >= 4 * p.text.fontMetrics().lineSpacing()  # a paragraph is visible, not one line
        if SHOTS:
            window.grab().save(os.path.join(SHOTS, "presenter.png"))
    finally:
        theme.apply(presenter=False)
    p.stop()
    assert not p.isVisible()
