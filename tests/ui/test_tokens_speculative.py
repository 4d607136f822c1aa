"""Tokens panel with speculative decoding: accepted drafts coloured, rejected ones listed struck through,
the summary and the speed-up against a plain run of the same prompt; the prompt bar's option."""

from __future__ import annotations

import re

from explorer.core.api import run_request
from explorer.core.events import GenerationSettings, RunRequest, TokenKind
from explorer.core.speculative import summarize
from explorer.ui.panels import token_colors as tc
from explorer.ui.panels.tokens import TokensPanel
from explorer.ui.prompt_bar import PromptBar
from explorer.ui.selection import Selection

PROMPT = "def add(a, b):\n\treturn a + b\n\nprint(add(2, 3))"


def _request(spec: str, n: int = 12) -> RunRequest:
    return RunRequest(prompt=PROMPT, settings=GenerationSettings(max_new_tokens=n), speculative=spec)


def test_drafts_are_shown_accepted_and_rejected(qtbot, tiny_session, make_panel):
    run = run_request(tiny_session, _request("layers:n=2,k=3"))
    total = summarize(run.drafts)
    assert total.accepted and total.accepted < total.proposed  # the tiny model's 2-block draft: some of each
    panel, _ = make_panel(TokensPanel, run, size=(700, 600))
    assert panel.drafts_summary.isVisible() and panel.drafts_area.isVisible()
    summary = panel.drafts_summary.text()
    assert f"<b>{total.accepted}</b> of {total.proposed} draft tokens" in summary
    assert "without speculation to measure" in summary  # no plain run seen yet
    listing = panel.drafts_list.text()
    assert listing.count("<s ") == total.proposed - total.accepted  # each rejected proposal struck through
    assert listing.count("<br>") == sum(1 for d in run.drafts if d.proposed) - 1
    accepted = [i for i, t in enumerate(run.tokens) if t.kind == TokenKind.SPECULATIVE]
    assert len(accepted) == total.accepted
    assert f"{tc.KIND_NAMES[TokenKind.SPECULATIVE]} <b>{len(accepted)}</b>" in panel.legend.text()
    fill = panel.view._fill[accepted[0]]
    assert fill in (tc.QColor(tc.KIND_COLORS[TokenKind.SPECULATIVE]),
                    tc.QColor(tc.KIND_COLORS[TokenKind.SPECULATIVE]).darker(108))


def test_speed_up_is_measured_against_a_plain_run_of_the_same_prompt(qtbot, tiny_session, make_panel):
    plain = run_request(tiny_session, _request(""))
    panel, _ = make_panel(TokensPanel, plain, size=(700, 600))
    assert not panel.drafts_summary.isVisible()  # a plain run has no drafts
    spec = run_request(tiny_session, _request("prompt-lookup"))
    panel.set_run(spec)
    match = re.search(r"speed-up vs plain: <b>([0-9.]+)×</b>", panel.drafts_summary.text())
    assert match and float(match.group(1)) > 0
    other = run_request(tiny_session, _request("prompt-lookup", n=5))  # other settings: not comparable
    panel.set_run(other)
    assert "speed-up vs plain" not in panel.drafts_summary.text()


def test_streamed_speculative_run_updates_the_drafts(qtbot, tiny_session):
    panel = TokensPanel(Selection())
    qtbot.addWidget(panel)
    panel.resize(600, 500)
    panel.show()
    request = _request("layers:n=2,k=3")
    run = tiny_session.new_run(request)
    for event in tiny_session.stream(request):
        run.apply(event)
        if event.is_prefill:
            panel.set_run(run)
        else:
            panel.on_step(run, event)
        assert len(panel.view.tokens) == run.n_tokens
    assert run.drafts and f"({len(run.drafts)} passes)" in panel.drafts_summary.text()


def test_prompt_bar_sends_and_restores_the_option(qtbot):
    bar = PromptBar()
    qtbot.addWidget(bar)
    assert bar.request().speculative == ""
    bar.speculative.setCurrentIndex(bar.speculative.findData("prompt-lookup"))
    assert bar.request().speculative == "prompt-lookup"
    bar.show_request(_request("layers:n=3,k=2"))
    assert bar.request().speculative == "layers:n=3,k=2"
    bar.show_request(_request(""))
    assert bar.request().speculative == ""
