"""Tool use and reasoning tokens: definitions, calls, the calculator, kinds in the Run, saved runs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from explorer.core import tools
from explorer.core.api import capture
from explorer.core.errors import InputError, ToolError
from explorer.core.events import RunRequest, Token, TokenKind
from explorer.core.runfile import load_run
from explorer.core.token_kinds import DEFAULT_TAGS, mark, tags_for, template_tags
from explorer.core.tokens import tokenize

THINK = "<think>need math</think>"
CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>'


# --- the calculator -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("expression", "expected"), [
    ("12 * (3 + 4)", 12 * (3 + 4)), ("2 ** 10", 2 ** 10), ("-7 // 2", -7 // 2), ("17 % 5", 17 % 5),
    ("1 / 4", 1 / 4), ("2^8", 2 ** 8), ("1234 * 5678", 1234 * 5678), ("2 ** -2", 2 ** -2), ("+3 - -3", 6),
])
def test_calculator_computes(expression, expected):
    assert float(tools.calculate(expression)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("expression", "words"), [
    ("9 ** 9 ** 9", "too large"), ("2 ** 5000", "bits"), ("10 ** 100000", "too large"),
    ("1" * 201, "characters long"), ("__import__('os')", "not names"), ("x + 1", "not names"),
    ("abs(-1)", "not names"), ("(1).real", "not names"), ("'a' * 3", "refused"), ("1 / 0", "Division by zero"),
    ("2.0 ** 5000", "too large"), ("", "empty"), ("1 +", "not an arithmetic"), ("(-8) ** 0.5", "not a real"),
    ("[1, 2]", "refused"), ("1e308 * 10", "too large"),
])
def test_calculator_refuses_with_a_sentence(expression, words):
    with pytest.raises(ToolError, match=words):
        tools.calculate(expression)


def test_calculator_refuses_deep_nesting():
    with pytest.raises(ToolError):
        tools.calculate("-" * 60 + "1")


# --- definitions and calls ----------------------------------------------------------------------------
def test_tool_definitions_are_checked():
    text = tools.tools_json([tools.CALCULATOR])
    assert json.loads(text) == [tools.CALCULATOR]
    assert tools.tools_json(json.dumps({"name": "lookup", "parameters": {}})) is not None  # one bare object
    assert tools.tools_json(None) is None and tools.tools_json("  ") is None
    with pytest.raises(ToolError, match=r"not valid JSON \(line 1, column"):
        tools.tools_json('[{"name": "x",}]')
    with pytest.raises(ToolError, match="needs a name"):
        tools.tools_json([{"description": "no name"}])
    with pytest.raises(ToolError, match="same name"):
        tools.tools_json([tools.CALCULATOR, tools.CALCULATOR])
    with pytest.raises(ToolError, match="at most"):
        tools.tools_json([{"name": f"t{i}"} for i in range(tools.MAX_TOOLS + 1)])
    with pytest.raises(ToolError, match="characters long"):
        tools.tools_json(" " * (tools.MAX_TOOLS_CHARS + 1))
    with pytest.raises(ToolError, match="list of JSON objects"):
        tools.tools_json("42")
    with pytest.raises(ToolError, match="parameters"):
        tools.tools_json([{"name": "x", "parameters": "free text"}])


def test_tool_calls_are_read_and_answered():
    calls = tools.parse_tool_calls('<tool_call>[{"name": "calculator", "arguments": {"expression": "6*7"}}]'
                                   '</tool_call>' + CALL)
    assert [c.name for c in calls] == ["calculator", "calculator"]
    assert [tools.call_tool(c) for c in calls] == [str(6 * 7), str(2 + 3)]
    with pytest.raises(ToolError, match="not valid JSON"):
        tools.parse_tool_calls("<tool_call>{name: calculator}</tool_call>")
    with pytest.raises(ToolError, match="did not close"):
        tools.parse_tool_calls('<tool_call>{"name": "calculator"')
    with pytest.raises(ToolError, match="not a built-in tool"):
        tools.call_tool(tools.ToolCall("weather", {}))
    with pytest.raises(ToolError, match="needs an 'expression'"):
        tools.call_tool(tools.ToolCall("calculator", {"a": [1], "b": 2}))
    assert tools.parse_tool_calls("no call here") == []


# --- kinds ------------------------------------------------------------------------------------------------
def _kinds_of(tokens, text, needle):
    """The kinds of the tokens whose span lies inside the first occurrence of `needle` in `text`."""
    lo = text.index(needle)
    hi = lo + len(needle)
    return {t.kind for t in tokens if t.end > t.start and lo <= t.start and t.end <= hi}


def test_kinds_in_a_conversation_on_the_tiny_model(tiny_llama):
    turns = (("assistant", THINK + CALL), ("tool", "5"))
    run = capture("What is 2+3? <think>typed</think>", tiny_llama, chat=True, turns=turns, max_new_tokens=3)
    assert _kinds_of(run.tokens, run.text, THINK) == {TokenKind.REASONING}
    assert _kinds_of(run.tokens, run.text, CALL) == {TokenKind.TOOL_CALL}
    assert _kinds_of(run.tokens, run.text, "\n5<|im_end|>") - {TokenKind.SPECIAL} == {TokenKind.TOOL_RESULT}
    assert _kinds_of(run.tokens, run.text, "<think>typed</think>") == {TokenKind.USER}  # typed: stays user
    assert {t.kind for t in run.tokens[run.n_prompt:]} <= {TokenKind.GENERATED, TokenKind.TOOL_CALL,
                                                           TokenKind.REASONING}


def test_a_typed_special_token_in_a_tool_result_is_flagged(tiny_llama):
    tok = tokenize(tiny_llama.tokenizer, "hi", chat=True, turns=(("assistant", CALL), ("tool", "<|im_start|>x")))
    at = tok.text.index("<|im_start|>x")
    flagged = [t for t in tok.tokens if t.injected]
    assert [(t.start, t.end) for t in flagged] == [(at, at + len("<|im_start|>"))]


def _pieces(text: str, kinds: dict[int, TokenKind] | None = None) -> list[Token]:
    """`text` cut into 1-3 character generated tokens."""
    out, at, i = [], 0, 0
    while at < len(text):
        n = 1 + (i * 7) % 3
        out.append(Token(id=0, text=text[at:at + n], start=at, end=min(len(text), at + n), kind=TokenKind.GENERATED))
        at += n
        i += 1
    return out


def test_streaming_marks_the_same_as_marking_the_finished_text():
    text = f"Sure. {THINK}Let me call {CALL} and {CALL}{THINK} <thi <think>an unclosed thought <tool_call>"
    whole = _pieces(text)
    mark(whole, text, DEFAULT_TAGS, 0)
    streamed: list[Token] = []
    resume = 0
    for t in _pieces(text):
        streamed.append(t)
        resume = mark(streamed, text[:t.end], DEFAULT_TAGS, len(streamed) - 1, 0, resume)
        assert 0 <= resume <= t.end
    assert [t.kind for t in streamed] == [t.kind for t in whole]
    assert _kinds_of(whole, text, THINK) == {TokenKind.REASONING}
    assert _kinds_of(whole, text, CALL) == {TokenKind.TOOL_CALL}
    assert _kinds_of(whole, text, "<think>an unclosed thought") == {TokenKind.REASONING}
    assert _kinds_of(whole, text, "Let me call") == {TokenKind.GENERATED}


def test_tags_a_template_defines_are_used():
    source = ("{% if thinking %}<|begin_of_thought|>{{ t }}<|end_of_thought|>{% endif %}"
              "<reasoning_trace>{{ r }}</reasoning_trace><tools>{{ tools }}</tools>")
    found = template_tags(source)
    assert ("<|begin_of_thought|>", "<|end_of_thought|>", TokenKind.REASONING) in found
    assert ("<reasoning_trace>", "</reasoning_trace>", TokenKind.REASONING) in found
    assert all(o != "<tools>" for o, _c, _k in found)  # definitions are not model text
    text = "a <|begin_of_thought|>b<|end_of_thought|> c"
    tokens = _pieces(text)
    mark(tokens, text, DEFAULT_TAGS + found, 0)
    assert _kinds_of(tokens, text, "<|begin_of_thought|>b<|end_of_thought|>") == {TokenKind.REASONING}


# --- templates: tools given to the template, or shown in the system message ---------------------------------
def test_real_template_shows_tools_and_tool_results(default_model):
    tok = default_model.tokenizer
    assert tags_for(tok) == DEFAULT_TAGS  # SmolLM2's template defines no tags of its own
    definitions = tools.tools_json([tools.CALCULATOR])
    turns = (("assistant", CALL), ("tool", "5"))
    out = tokenize(tok, "What is 2+3?", chat=True, tools=definitions, turns=turns)
    assert definitions in out.text and "<tool_call>[" in out.text  # SmolLM2 ignores `tools`: the system shows them
    assert _kinds_of(out.tokens, out.text, definitions) == {TokenKind.SYSTEM}
    assert _kinds_of(out.tokens, out.text, "5") == {TokenKind.TOOL_RESULT}
    assert out.text.endswith("<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture
def tools_template(tiny_llama):
    """The tiny model's tokenizer with a chat template that formats `tools` itself (names only: short)."""
    tok = tiny_llama.tokenizer
    original = tok.chat_template
    tok.chat_template = (
        "{% if tools %}{{ '<|im_start|>system\nTOOLS ' + tools | map(attribute='function.name') | join(',') "
        "+ '<|im_end|>\n' }}{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + "
        "m['content'] + '<|im_end|>\n' }}{% endfor %}{{ '<|im_start|>assistant\n' }}")
    yield tiny_llama
    tok.chat_template = original


def test_a_template_that_formats_tools_gets_them(tools_template):
    out = tokenize(tools_template.tokenizer, "hi", chat=True, tools=tools.tools_json([tools.CALCULATOR]))
    assert out.text.startswith("<|im_start|>system\nTOOLS calculator<|im_end|>")
    assert "<tools>" not in out.text  # not the system-message fallback


# --- requests, follow-up and saved runs -------------------------------------------------------------------
def test_bad_input_is_refused_before_running(tiny_llama):
    with pytest.raises(ToolError, match="not valid JSON"):
        capture("hi", tiny_llama, chat=True, tools="[{oops")
    with pytest.raises(InputError, match="need chat mode"):
        capture("hi", tiny_llama, tools=[tools.CALCULATOR])
    with pytest.raises(InputError, match="role"):
        capture("hi", tiny_llama, chat=True, turns=[("robot", "x")])
    with pytest.raises(ToolError, match="empty"):
        capture("hi", tiny_llama, chat=True, turns=[("tool", " ")])


def test_follow_up_continues_and_reuses_the_cache(tiny_session):
    first = capture("What is 2+3?", tiny_session, chat=True, max_new_tokens=4)
    with pytest.raises(ToolError, match="no <tool_call>"):
        tools.follow_up(first)  # nothing to answer: a clear message, the run is untouched
    request = tools.follow_up(first, "5")
    assert request.turns == (("assistant", tools.reply_text(first)), ("tool", "5"))
    second = capture(request.prompt, tiny_session, chat=True, turns=request.turns, max_new_tokens=2, previous=first)
    assert second.steps[0].cached_prefix > first.n_prompt  # the prompt and (re-tokenized) reply came from the cache
    assert _kinds_of(second.tokens, second.text, "\n5<|im_end|>") - {TokenKind.SPECIAL} == {TokenKind.TOOL_RESULT}


def test_follow_up_answers_a_call_with_the_calculator(tiny_llama):
    run = capture("What is 2+3?", tiny_llama, chat=True, turns=(("assistant", CALL), ("tool", "5")),
                  max_new_tokens=1)
    # the model's reply, as if it had written the call: the tokens after the prompt hold it
    fake = replace(run, n_prompt=run.tokens.index(next(t for t in run.tokens if t.kind == TokenKind.TOOL_CALL)))
    fake.request = replace(run.request, turns=())
    cut = tools.reply_text(fake)
    assert CALL in cut
    with pytest.raises(ToolError):  # the reply holds more than the call, and the call is answered
        tools.follow_up(replace(fake, request=replace(fake.request, chat=False)))
    request = tools.follow_up(fake)
    assert request.turns[-1] == ("tool", str(2 + 3))


def test_saved_run_keeps_kinds_tools_and_turns(tools_template, tmp_path):
    definitions = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    run = capture("What is 2+3?", tools_template, chat=True, tools=definitions,
                  turns=(("assistant", THINK + CALL), ("tool", "5")), max_new_tokens=3)
    kinds = [t.kind for t in run.tokens]
    assert {TokenKind.REASONING, TokenKind.TOOL_CALL, TokenKind.TOOL_RESULT} <= set(kinds)
    run.save(tmp_path / "run.npz")
    loaded = load_run(tmp_path / "run.npz")
    assert [t.kind for t in loaded.tokens] == kinds
    assert loaded.request == run.request
    assert isinstance(loaded.request, RunRequest) and json.loads(loaded.request.tools) == definitions


@pytest.mark.parametrize(("key", "value"), [
    ("turns", [["tool"]]), ("turns", "assistant"), ("turns", [["tool", 5]]), ("tools", {"name": "x"}),
])
def test_a_run_file_with_a_broken_conversation_is_refused(tiny_llama, tmp_path, key, value):
    from test_runfile import _edit_header

    from explorer.core.errors import RunFileError

    path = tmp_path / "run.npz"
    capture("hi", tiny_llama, chat=True, turns=(("assistant", CALL), ("tool", "5")), max_new_tokens=1).save(path)
    path.write_bytes(_edit_header(path.read_bytes(), lambda h: h["request"].update({key: value})))
    with pytest.raises(RunFileError):
        load_run(path)


def test_a_run_file_from_before_tools_still_loads(tiny_llama, tmp_path):
    from test_runfile import _edit_header

    from explorer.core.economics import economics

    def older(h):
        for k in ("tools", "turns"):
            h["request"].pop(k)
        for k in ("d_ff", "mlp_matrices"):
            h["info"].pop(k)

    path = tmp_path / "run.npz"
    capture("hi", tiny_llama, max_new_tokens=2).save(path)
    path.write_bytes(_edit_header(path.read_bytes(), older))
    run = load_run(path)
    assert run.request.turns == () and run.request.tools is None
    assert economics(run).shapes.estimated


def test_real_model_marks_exactly_the_tagged_text_it_writes(default_session):
    """Whatever SmolLM2 writes after a conversation that shows a tool call, a generated token is tool_call or
    reasoning exactly when it lies in a tagged region of the text (the streaming post-pass, on a real run)."""
    from explorer.core.token_kinds import kind_spans

    turns = (("assistant", THINK + CALL), ("tool", "5"))
    run = capture("What is 2+3?", default_session, chat=True, tools=[tools.CALCULATOR], turns=turns, max_new_tokens=24)
    lo = run.tokens[run.n_prompt].start
    spans = kind_spans(run.text, DEFAULT_TAGS, lo)
    for t in run.tokens[run.n_prompt:]:
        inside = [k for s, e, k in spans if t.start < e and t.end > s]
        assert t.kind == (inside[0] if inside else TokenKind.GENERATED), (t.text, t.kind)
    assert {TokenKind.SYSTEM, TokenKind.TOOL_CALL, TokenKind.TOOL_RESULT, TokenKind.REASONING} <= {
        t.kind for t in run.tokens[:run.n_prompt]}
