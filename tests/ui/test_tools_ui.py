"""Tool use in the prompt bar (Tools dialog, tool-result reply) and the Token economics panel."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from explorer.core import tools
from explorer.core.api import capture
from explorer.core.economics import economics
from explorer.core.events import TokenKind
from explorer.ui.panels.token_colors import legend_html
from explorer.ui.prompt_bar import PromptBar
from explorer.ui.tools_dialog import ToolResultDialog, ToolsDialog, suggested_result

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'


@pytest.fixture
def bar(qtbot):
    bar = PromptBar()
    qtbot.addWidget(bar)
    bar.prompt.setPlainText("What is 6*7?")
    bar.chat.setChecked(True)
    return bar


def test_bad_tool_json_keeps_the_dialog_open_and_the_prompt(qtbot, bar):
    dialog = ToolsDialog(bar.tools, bar)
    qtbot.addWidget(dialog)
    bad = '[{"name": "lookup",}]'
    dialog.definitions.setPlainText(bad)
    dialog.accept()
    assert dialog.result() == 0 and not dialog.message.isHidden()
    assert "not valid JSON" in dialog.message.text()
    assert dialog.definitions.toPlainText() == bad  # nothing typed is lost
    assert bar.prompt.toPlainText() == "What is 6*7?" and bar.request().tools is None


def test_tools_reach_the_request_in_chat_mode_only(qtbot, bar):
    dialog = ToolsDialog(None, bar)
    qtbot.addWidget(dialog)
    dialog.calculator.setChecked(True)
    dialog.definitions.setPlainText('{"name": "lookup", "parameters": {"type": "object"}}')
    dialog.accept()
    assert dialog.result() == 1
    bar.set_tools(dialog.result_json)
    assert [tools.tool_name(t) for t in json.loads(bar.request().tools)] == ["calculator", "lookup"]
    assert bar.tools_button.text() == "Tools (2)…"
    again = ToolsDialog(bar.tools, bar)  # reopened: the same choice shown
    qtbot.addWidget(again)
    assert again.calculator.isChecked() and "lookup" in again.definitions.toPlainText()
    bar.chat.setChecked(False)
    assert bar.request().tools is None and bar.tools_button.isHidden()


def _run_with_call(tiny_llama, call=CALL):
    """A tiny-model chat run whose reply (the tokens after n_prompt) is `call`, as if the model wrote it."""
    run = capture("What is 6*7?", tiny_llama, chat=True, turns=(("assistant", call), ("tool", "x")),
                  max_new_tokens=1)
    start = next(i for i, t in enumerate(run.tokens) if t.kind == TokenKind.TOOL_CALL)
    end = max(i for i, t in enumerate(run.tokens) if t.kind == TokenKind.TOOL_CALL) + 1
    return replace(run, tokens=run.tokens[:end], n_prompt=start, request=replace(run.request, turns=()))


def test_the_reply_dialog_offers_the_calculators_answer(qtbot, tiny_llama):
    run = _run_with_call(tiny_llama)
    assert suggested_result(run)[0] == str(6 * 7)
    dialog = ToolResultDialog(run)
    qtbot.addWidget(dialog)
    dialog.accept()
    assert dialog.result() == 1
    assert dialog.request.turns == (("assistant", CALL), ("tool", str(6 * 7)))


def test_a_failing_call_is_explained_and_a_result_can_be_typed(qtbot, tiny_llama):
    run = _run_with_call(tiny_llama, '<tool_call>{"name": "calculator", "arguments": {"expression": "9**9**9"}}'
                                     '</tool_call>')
    result, note = suggested_result(run)
    assert result == "" and "too large" in note
    dialog = ToolResultDialog(run)
    qtbot.addWidget(dialog)
    dialog.accept()  # empty: refused, stays open
    assert dialog.result() == 0 and "empty" in dialog.message.text()
    dialog.text.setPlainText("a very large number")
    dialog.accept()
    assert dialog.request.turns[-1] == ("tool", "a very large number")


def test_follow_up_request_shows_its_turns_in_the_bar(bar, tiny_llama):
    request = tools.follow_up(_run_with_call(tiny_llama))
    bar.show_request(request)
    assert bar.request().turns == request.turns and not bar.turns_label.isHidden()
    bar.set_turns(())
    assert bar.request().turns == () and bar.turns_label.isHidden()


def test_tokens_legend_names_the_new_kinds(tiny_llama):
    run = capture("hi", tiny_llama, chat=True, turns=(("assistant", "<think>hm</think>" + CALL), ("tool", "42")),
                  max_new_tokens=1)
    legend = legend_html(run, "kind")
    for name in ("tool call", "tool result", "reasoning"):
        assert name in legend


def test_economics_panel_draws_the_table_and_bars(make_panel, tiny_session):
    first = capture("Hello there, how are you", tiny_session, chat=True, max_new_tokens=3)
    run = capture("Hello there, how are you", tiny_session, chat=True, max_new_tokens=3, previous=first)
    panel, _sel = make_panel("economics", run)
    rows = economics(run).table()
    assert panel.table.rowCount() == len(rows)
    assert [panel.table.item(i, 1).data(256) for i in range(len(rows))] == [r[1] for r in rows]
    assert np.allclose(panel.bars.opts["width"], [r[4] for r in rows], rtol=1e-12)
    assert any(panel.table.item(i, 5).text() == "saved" for i in range(len(rows)))  # the cached prefix
    assert "cache saved" in panel.figures.text()


def test_tool_controls_keep_the_bar_within_1280_in_presenter_mode(qtbot):
    from explorer.ui import theme

    theme.apply(presenter=True)
    try:
        bar = PromptBar()
        qtbot.addWidget(bar)
        bar.show()
        bar.chat.setChecked(True)
        bar.set_turns((("assistant", "a reply"), ("tool", "5")))
        assert bar.tools_button.isVisible() and bar.turns_label.isVisible()
        assert bar.minimumSizeHint().width() <= 1280 - 16
    finally:
        theme.apply(presenter=False)


def test_the_window_explains_when_there_is_nothing_to_answer(tiny_window):
    window = tiny_window()
    window.reply_with_tool_result()  # no chat run on screen: a sentence, no dialog
    assert "chat-mode run" in window.banner_text()


def test_a_tool_result_continues_the_conversation_in_the_window(qtbot, tiny_window, monkeypatch):
    from explorer.ui import tools_dialog

    window = tiny_window(panels=("tokens", "economics"))
    bar = window.prompt_bar
    bar.chat.setChecked(True)
    bar.prompt.setPlainText("What is 6*7?")
    bar.max_new.setValue(3)
    with qtbot.waitSignal(window.run_done, timeout=30000):
        window.run_prompt()
    first = window.runs.run

    def answer(dialog):  # the user types a result and presses OK
        dialog.text.setPlainText("42")
        dialog.accept()
        return dialog.result()

    monkeypatch.setattr(tools_dialog.ToolResultDialog, "exec", answer)
    with qtbot.waitSignal(window.run_done, timeout=30000):
        window.reply_with_tool_result()
    second = window.runs.run
    assert second is not first and second.request.turns[-1] == ("tool", "42")
    assert second.steps[0].cached_prefix >= first.n_prompt  # the conversation so far came from the cache
    assert any(t.kind == TokenKind.TOOL_RESULT for t in second.tokens)
    assert bar.request().turns == second.request.turns  # the next Run continues the conversation
    assert window.docks["economics"].panel.error is None


def test_tools_that_overflow_the_context_are_named_in_the_message(qtbot, tiny_window):
    window = tiny_window()
    bar = window.prompt_bar
    bar.chat.setChecked(True)
    bar.set_tools(tools.tools_json([tools.CALCULATOR]))  # ~750 tokens of system message: over tiny-llama's 512
    bar.prompt.setPlainText("What is 6*7?")
    with qtbot.waitSignal(window.run_done, timeout=30000):
        window.run_prompt()
    assert "tool definitions" in window.banner_text()
    assert bar.prompt.toPlainText() == "What is 6*7?" and bar.tools is not None  # nothing lost
