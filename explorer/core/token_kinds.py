"""Kinds inside a model's own text: tool calls and reasoning, marked by their tags (a post-pass over the Run).

The runner tags every sampled token `generated` (and tokenization tags a model reply in the conversation
history the same way, core/tokens.py). This pass retags those tokens that lie inside

    <tool_call> ... </tool_call>            -> tool_call   (tags included)
    <think> ... </think> (and the like)     -> reasoning

plus the tag pairs the model's chat template itself spells (`tags_for`). It runs as the Run grows
(`Run.apply`): an open tag marks everything after it until it closes, so a streaming reply is marked
while it is written, and the tokens that spell the opening tag are marked once it is complete. Only
model text is retagged: a user who types "<think>" keeps the user kind.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache
from typing import Any

from .events import Token, TokenKind

Tag = tuple[str, str, TokenKind]  # (open, close, kind)
DEFAULT_TAGS: tuple[Tag, ...] = (
    ("<think>", "</think>", TokenKind.REASONING),
    ("<thinking>", "</thinking>", TokenKind.REASONING),
    ("<reasoning>", "</reasoning>", TokenKind.REASONING),
    ("<tool_call>", "</tool_call>", TokenKind.TOOL_CALL),
)
_KIND_WORDS = (("tool_call", TokenKind.TOOL_CALL), ("think", TokenKind.REASONING), ("thought", TokenKind.REASONING),
               ("reason", TokenKind.REASONING))
_TEMPLATE_TAG = re.compile(r"<(\|?)([A-Za-z_]{1,40})(\|?)>")
MAX_TEMPLATE_TAGS = 16


def tags_for(tokenizer: Any) -> tuple[Tag, ...]:
    """The default tags plus the reasoning / tool-call tag pairs the tokenizer's chat template spells."""
    try:
        source = tokenizer.get_chat_template() if getattr(tokenizer, "chat_template", None) else ""
    except Exception:  # noqa: BLE001 - no template or several: the defaults
        source = ""
    return DEFAULT_TAGS + template_tags(source if isinstance(source, str) else "")


def template_tags(source: str) -> tuple[Tag, ...]:
    """Pairs like `<X>`/`</X>` or `<|begin_of_X|>`/`<|end_of_X|>` in a template whose name says thinking,
    reasoning or tool call (those not already in DEFAULT_TAGS)."""
    known = {t[0] for t in DEFAULT_TAGS}
    found: list[Tag] = []
    for bar, name, bar2 in _TEMPLATE_TAG.findall(source[:1_000_000]):
        kind = next((k for word, k in _KIND_WORDS if word in name.lower()), None)
        if kind is None or name.startswith("end_of_"):
            continue
        opening = f"<{bar}{name}{bar2}>"
        closing = (f"<{bar}end_of_{name[len('begin_of_'):]}{bar2}>" if name.startswith("begin_of_")
                   else f"</{name}>")
        if opening in known or closing not in source:
            continue
        known.add(opening)
        found.append((opening, closing, kind))
        if len(found) >= MAX_TEMPLATE_TAGS:
            break
    return tuple(found)


@lru_cache(maxsize=8)
def _opening(tags: tuple[Tag, ...]) -> tuple[re.Pattern, dict[str, Tag]]:
    by_open = {t[0]: t for t in tags}
    return re.compile("|".join(re.escape(o) for o in sorted(by_open, key=len, reverse=True))), by_open


def kind_spans(text: str, tags: tuple[Tag, ...], lo: int = 0) -> list[tuple[int, int, TokenKind]]:
    """Character spans [start, end) of tagged regions in text[lo:], in order; an unclosed one runs to the end."""
    if not tags or text.find("<", lo) < 0:
        return []
    pattern, by_open = _opening(tags)
    spans = []
    at = lo
    while True:
        m = pattern.search(text, at)
        if m is None:
            return spans
        _open, close, kind = by_open[m.group()]
        end = text.find(close, m.end())
        end = len(text) if end < 0 else end + len(close)
        spans.append((m.start(), end, kind))
        at = end


def mark(tokens: list[Token], text: str, tags: tuple[Tag, ...], first: int, lo_token: int = 0,
         resume: int = 0) -> int:
    """Retag (in place) the `generated` tokens inside tagged spans of `text`; returns where the next call may
    start scanning (`resume`): the end of the last span that has closed (text only grows, so the spans
    before it are final and already marked).

    `first`: index of the first token just added (earlier ones were marked against the earlier text);
    `lo_token`: tokens before it are never model text here (e.g. a prompt, on decode steps)."""
    if first >= len(tokens) or not tags:
        return resume
    lo_char = max(resume, tokens[lo_token].start if lo_token < len(tokens) else len(text))
    new_from = tokens[first].start
    still_open = False
    for s_start, s_end, kind in kind_spans(text, tags, lo_char):
        if _closed(text, s_start, s_end, tags):
            resume = max(resume, s_end)
        else:
            still_open = True
        if s_end < new_from:
            continue  # closed before this update: already marked
        _mark_span(tokens, s_start, s_end, kind, first, lo_token)
    if not still_open:  # no tag opens before the last characters that could still begin one
        resume = max(resume, len(text) - max(len(t[0]) for t in tags) + 1)
    return resume


def _closed(text: str, start: int, end: int, tags: tuple[Tag, ...]) -> bool:
    """Whether the span text[start:end] ends with its closing tag (not cut off by the end of the text)."""
    pattern, by_open = _opening(tags)
    m = pattern.match(text, start)
    if m is None:
        return False
    close = by_open[m.group()][1]
    return end - m.end() >= len(close) and text.endswith(close, 0, end)


def _mark_span(tokens: list[Token], s_start: int, s_end: int, kind: TokenKind, first: int, lo_token: int) -> None:
    i = len(tokens) - 1
    while i >= lo_token and tokens[i].start >= s_end and tokens[i].end > tokens[i].start:
        i -= 1  # after the span
    while i >= lo_token:
        t = tokens[i]
        inside = t.start < s_end and t.end > s_start or (t.start == t.end and s_start <= t.start < s_end)
        if not inside and t.end <= s_start:
            break
        if inside and t.kind == TokenKind.GENERATED:
            tokens[i] = replace(t, kind=kind)
        elif inside and t.kind == kind and i < first:
            break  # marked on an earlier update, and so is everything before it in the span
        i -= 1
