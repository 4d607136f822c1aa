"""Tokenization with exact character spans and token kinds.

Every token maps to a `[start, end)` span of the run's text; the spans tile the text (no gap,
no overlap). A character belongs to the token that completes it, so a token holding only the
first bytes of a multi-byte character has an empty span and is marked `partial`; this also
works while generated tokens stream in. SentencePiece's dummy prefix space ("▁" added before the
text, Llama-2/Mistral style) is not part of the text: a token that is only that space has an empty span.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from functools import cache
from typing import Any

from .events import Token, TokenKind


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class TokenBytes:
    """Maps token ids to the exact bytes they stand for, for the tokenizer families we know."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = repr(getattr(backend, "decoder", None))
        self.scheme = (
            "bytelevel" if "ByteLevel" in decoder else "sentencepiece" if "ByteFallback" in decoder else "none"
        )
        self.special_ids = special_ids(tokenizer)
        self._cache: dict[int, bytes | None] = {}

    def __call__(self, token_id: int) -> bytes | None:
        """The token's bytes, or None when this tokenizer's pieces do not map to bytes."""
        if token_id in self._cache:
            return self._cache[token_id]
        piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
        result: bytes | None
        if piece is None:
            result = b""
        elif token_id in self.special_ids:
            result = piece.encode("utf-8")
        elif self.scheme == "bytelevel":
            table = _byte_decoder()
            result = bytes(table[c] for c in piece) if all(c in table for c in piece) else piece.encode("utf-8")
        elif self.scheme == "sentencepiece":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                result = bytes([int(piece[3:5], 16)])
            else:
                result = piece.replace("\u2581", " ").encode("utf-8")
        else:
            result = None
        self._cache[token_id] = result
        return result


def special_ids(tokenizer: Any) -> frozenset[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        ids.update(i for i, added in backend.get_added_tokens_decoder().items() if added.special)
    return frozenset(ids)


@dataclass(frozen=True)
class Tokenized:
    text: str
    ids: list[int]
    tokens: list[Token]


class IncrementalSpans:
    """Assigns spans as token bytes arrive: a character goes to the token that completes it."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.parts: list[str] = []
        self.length = 0

    def add(self, piece: bytes) -> tuple[int, int, bool]:
        pending_before = bool(self._decoder.getstate()[0])
        chars = self._decoder.decode(piece)
        start = self.length
        self.parts.append(chars)
        self.length += len(chars)
        partial = pending_before or bool(self._decoder.getstate()[0])
        return start, self.length, partial

    @property
    def text(self) -> str:
        return "".join(self.parts)


def readable_piece(span_text: str, piece: bytes, partial: bool) -> str:
    if partial and not span_text:
        return "".join(f"<0x{b:02X}>" for b in piece)
    return span_text


def tokenize(
    tokenizer: Any,
    prompt: str,
    *,
    chat: bool = False,
    system: str | None = None,
    allow_special_in_text: bool = True,
    token_bytes: TokenBytes | None = None,
    cancel: Any = None,
    tools: str | None = None,
    turns: tuple = (),
) -> Tokenized:
    """Tokenize a prompt (plain or chat template) into ids and spanned, kind-tagged tokens.

    `token_bytes`: a TokenBytes of this tokenizer to reuse (its id -> bytes cache stays warm across runs).
    `cancel`: a threading.Event or callable; Stop interrupts the chat template's rendering.
    """
    encoded = encode(tokenizer, prompt, chat=chat, system=system, allow_special_in_text=allow_special_in_text,
                     cancel=cancel, tools=tools, turns=turns)
    return with_spans(tokenizer, encoded, token_bytes)


@dataclass(frozen=True)
class Encoded:
    """A checked prompt's text (after the chat template) and ids, before spans are assigned."""

    text: str
    ids: list[int]
    regions: list[tuple[int, int, TokenKind]]  # character ranges of system / user / prompt content
    content_kind: TokenKind


def encode(tokenizer: Any, prompt: str, *, chat: bool = False, system: str | None = None,
           allow_special_in_text: bool = True, cancel: Any = None, tools: str | None = None,
           turns: tuple = (), retrieved: tuple = ()) -> Encoded:
    """Check the text (InputError for text with no UTF-8 form) and encode it: ids only, no spans (fast).

    `cancel`: a threading.Event or callable; Stop interrupts the chat template's rendering.
    `tools` (JSON text of tool definitions) and `turns` ((role, content) after the prompt): chat mode only.
    `retrieved`: chunks (core.retrieval.RetrievedChunk) inserted before the question (core/retrieval/rag.py);
    their tokens are of kind "retrieved" and their text never becomes special tokens (it is untrusted).
    """
    _check_text(prompt, "prompt")
    if system:
        _check_text(system, "system message")
    for _role, content in turns:
        _check_text(content, "conversation")
    content, pieces = prompt, []
    if retrieved:
        from .retrieval.rag import compose

        content, pieces = compose(prompt, retrieved)
        _check_text(content, "retrieved text")
    regions: list[tuple[int, int, TokenKind]] = []
    if chat:
        text, regions = render_chat(tokenizer, content, system, cancel=cancel, tools=tools, turns=turns)
        content_kind = TokenKind.USER
    else:
        text = content
        regions = [(0, len(text), TokenKind.PROMPT)]
        content_kind = TokenKind.PROMPT
    if pieces:
        at = text.rfind(content)  # the user's message (the turns that follow it, if any, keep their regions)
        end = at + len(content)
        regions = sorted([r for r in regions if r[1] <= at or r[0] >= end] +
                         [(at + lo, at + hi, kind or content_kind) for lo, hi, kind in pieces])
        ids = _encode_regions(tokenizer, text, chat, regions, allow_special_in_text)
    else:
        ids = _encode(tokenizer, text, chat, regions, allow_special_in_text)
    return Encoded(text, ids, regions, content_kind)


def with_spans(tokenizer: Any, encoded: Encoded, token_bytes: TokenBytes | None = None) -> Tokenized:
    """The encoded prompt's spanned, kind-tagged tokens."""
    tokens = spans_for(tokenizer, encoded.text, encoded.ids, encoded.regions, default_kind=encoded.content_kind,
                       token_bytes=token_bytes)
    return Tokenized(text=encoded.text, ids=encoded.ids, tokens=tokens)


def _check_text(text: str, what: str) -> None:
    """Refuse text that has no UTF-8 form (lone UTF-16 surrogates, e.g. from a broken paste)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        from .errors import InputError

        raise InputError(
            f"The {what} holds an invalid character at position {exc.start} (a lone surrogate, "
            f"U+{ord(text[exc.start]):04X}); remove it or paste the text again."
        ) from None


def render_chat(tokenizer: Any, prompt: str, system: str | None, cancel: Any = None, tools: str | None = None,
                turns: tuple = ()) -> tuple[str, list[tuple[int, int, TokenKind]]]:
    """Apply the chat template; return the text and the character ranges of each message's content.

    The template is untrusted code: it runs sandboxed with time and size limits, and `cancel` stops it.
    `tools` (JSON text): passed to a template that formats tools, else shown in the system message
    (core/tools.py). `turns`: (role, content) messages after the user's prompt (a model reply, a tool result).
    """
    from . import chat_template
    from .tools import system_with_tools, tool_list

    if not getattr(tokenizer, "chat_template", None):
        from .errors import InputError

        raise InputError("This model has no chat template: use plain mode.")
    template_tools = None
    if tools:
        if chat_template.formats_tools(tokenizer):
            template_tools = tool_list(tools)
        else:
            system = system_with_tools(system, tools)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    messages += [{"role": str(role), "content": content} for role, content in turns]
    text = chat_template.render(tokenizer, messages, add_generation_prompt=True, cancel=cancel, tools=template_tools)
    regions: list[tuple[int, int, TokenKind]] = []
    cursor = 0
    for message in messages:
        content = message["content"]
        at = text.find(content, cursor) if content else -1
        if at >= 0:
            regions.append((at, at + len(content), ROLE_KINDS.get(message["role"], TokenKind.USER)))
            cursor = at + len(content)
    return text, regions


# the kind of a message's content tokens by its role (a model reply's tool calls and reasoning: core/token_kinds.py)
ROLE_KINDS = {"system": TokenKind.SYSTEM, "user": TokenKind.USER, "assistant": TokenKind.GENERATED,
              "tool": TokenKind.TOOL_RESULT, "ipython": TokenKind.TOOL_RESULT}


def _encode(tokenizer: Any, text: str, chat: bool, regions, allow_special: bool) -> list[int]:
    add_special = not chat  # a chat template already holds its special tokens
    if allow_special or not regions:
        return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])
    if not chat:  # plain text: the whole prompt is typed text
        return list(tokenizer(text, add_special_tokens=True, split_special_tokens=True)["input_ids"])
    # Typed special-token text stays plain text: encode content regions with specials split.
    ids: list[int] = []
    cursor = 0
    for start, end, _kind in sorted(regions):
        if start > cursor:
            ids += tokenizer(text[cursor:start], add_special_tokens=False)["input_ids"]
        ids += tokenizer(text[start:end], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        cursor = end
    if cursor < len(text):
        ids += tokenizer(text[cursor:], add_special_tokens=False)["input_ids"]
    return ids


def _encode_regions(tokenizer: Any, text: str, chat: bool, regions, allow_special: bool) -> list[int]:
    """Encode region by region (no token crosses a region's edge); retrieved text with specials split."""
    ids: list[int] = []
    cursor = 0
    for start, end, kind in sorted(regions):
        if start > cursor:
            ids += tokenizer(text[cursor:start], add_special_tokens=False)["input_ids"]
        split = kind == TokenKind.RETRIEVED or not allow_special
        ids += tokenizer(text[start:end], add_special_tokens=False, split_special_tokens=split)["input_ids"]
        cursor = max(cursor, end)
    if cursor < len(text):
        ids += tokenizer(text[cursor:], add_special_tokens=False)["input_ids"]
    if not chat:  # plain text: the specials the tokenizer adds around a text (BOS, [CLS] ... [SEP])
        wrapped = list(tokenizer("x", add_special_tokens=True)["input_ids"])
        inner = list(tokenizer("x", add_special_tokens=False)["input_ids"])
        at = next((i for i in range(len(wrapped) - len(inner) + 1) if wrapped[i:i + len(inner)] == inner), None)
        if at is not None:
            ids = wrapped[:at] + ids + wrapped[at + len(inner):]
    return ids


def spans_for(tokenizer: Any, text: str, ids: list[int], regions, default_kind: TokenKind,
              token_bytes: TokenBytes | None = None) -> list[Token]:
    """Spans for `ids` over `text` from token bytes; falls back to the tokenizer's offsets."""
    to_bytes = token_bytes if token_bytes is not None else TokenBytes(tokenizer)
    spans = _byte_spans(text, ids, to_bytes)
    if spans is None:
        spans = _offset_spans(tokenizer, text, ids, to_bytes)
    tokens = []
    for token_id, (start, end, piece, partial) in zip(ids, spans, strict=True):
        is_special = token_id in to_bytes.special_ids
        kind = _kind_at(start, end, regions, default_kind)
        # typed text that became a special token: the span spells the token (an [UNK] standing in
        # for an unknown character is special too, but it is not an injection and keeps its kind)
        literal = str(tokenizer.convert_ids_to_tokens(int(token_id))) if is_special else ""
        spelled = is_special and end > start and text[start:end].strip() == literal
        injected = spelled and kind in _TYPED
        if is_special and (spelled or end == start or kind not in _TYPED):
            kind = TokenKind.SPECIAL
        shown = readable_piece(text[start:end], piece, partial)
        if end == start and (is_special or not partial):
            # inserted by the tokenizer (BOS, [CLS], SentencePiece's dummy "▁"): show its name, not ""
            shown = str(tokenizer.convert_ids_to_tokens(int(token_id)))
        tokens.append(Token(
            id=int(token_id), text=shown, start=start, end=end,
            kind=kind, raw_bytes=piece, partial=partial, injected=injected, is_special=is_special,
        ))
    return tokens


_TYPED = (TokenKind.USER, TokenKind.SYSTEM, TokenKind.PROMPT, TokenKind.TOOL_RESULT, TokenKind.RETRIEVED)


def _kind_at(start: int, end: int, regions, default_kind: TokenKind) -> TokenKind:
    for r_start, r_end, kind in regions:
        if start < r_end and end > r_start or (start == end and r_start <= start < r_end):
            return kind
    return TokenKind.SPECIAL if regions and default_kind != TokenKind.PROMPT else default_kind


def _byte_spans(text: str, ids: list[int], to_bytes: TokenBytes):
    """Spans from the tokens' bytes; None when they do not spell the text.

    SentencePiece tokenizers (Llama-2, Mistral) add a dummy space ("▁") at the start of the text or of
    each segment after a special token: that space is not in the text, so it is dropped from the first
    piece of a segment. Two readings are tried: drop it only where the piece does not fit otherwise
    (Metaspace, which adds no dummy before a real space), then drop it at every segment start (the
    legacy `Prepend("▁")` normaliser, which always adds one).
    """
    encoded = text.encode("utf-8", errors="surrogatepass")
    pieces = []
    for token_id in ids:
        piece = to_bytes(token_id)
        if piece is None:
            return None
        pieces.append(piece)
    passes = ("none",) if to_bytes.scheme != "sentencepiece" else ("needed", "always")
    for dummy in passes:
        spans = _spell(text, encoded, ids, pieces, to_bytes.special_ids, dummy)
        if spans is not None:
            return spans
    return None


def _spell(text: str, encoded: bytes, ids: list[int], pieces: list[bytes], specials, dummy: str):
    spans = []
    builder = IncrementalSpans()
    offset = 0
    segment_start = True
    for token_id, piece in zip(ids, pieces, strict=True):
        special = token_id in specials
        if special and encoded[offset: offset + len(piece)] != piece:
            piece = b""  # inserted by the tokenizer (BOS, [CLS]): not part of the text
        elif segment_start and not special and dummy != "none" and piece.startswith(b" "):
            fits = encoded.startswith(piece, offset)
            if dummy == "always" or (not fits and encoded.startswith(piece[1:], offset)):
                piece = piece[1:]  # the dummy prefix space: not in the text
        start, end, partial = builder.add(piece)
        spans.append((start, end, piece, partial))
        offset += len(piece)
        segment_start = special
    return spans if builder.text == text else None


def _offset_spans(tokenizer: Any, text: str, ids: list[int], to_bytes: TokenBytes):
    """WordPiece and friends: offsets from the tokenizer; gaps (spaces) join the next token."""
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    offsets = enc["offset_mapping"] if list(enc["input_ids"]) == list(ids) else None
    spans = []
    cursor = 0
    for i, _token_id in enumerate(ids):
        lo, hi = offsets[i] if offsets else (cursor, cursor)
        if hi <= lo:  # inserted special token
            spans.append((cursor, cursor, b"", False))
            continue
        if i + 1 < len(ids) and tuple(offsets[i + 1]) == (lo, hi):
            # several tokens for one character: it goes to the last (the one that completes it); their bytes
            # do not spell the text here (that is why offsets are used), so none is claimed for the earlier ones
            spans.append((cursor, cursor, b"", False))
            continue
        start, end = cursor, max(cursor, hi)
        spans.append((start, end, text[start:end].encode("utf-8", errors="surrogatepass"), False))
        cursor = end
    if spans and cursor < len(text):  # trailing text the tokenizer dropped (spaces) joins the last real token
        last = max((i for i, s in enumerate(spans) if s[1] > s[0]), default=len(spans) - 1)
        start = spans[last][0]
        spans[last] = (start, len(text), text[start:].encode("utf-8", errors="surrogatepass"), False)
        spans[last + 1:] = [(len(text), len(text), b"", False)] * (len(spans) - last - 1)
    return spans

