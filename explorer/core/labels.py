"""Token label text: the one way every panel (and a notebook) turns a token into text for a label.

`readable_label` makes whitespace visible (space as a middle dot, newline and tab as arrows) and
shortens; `token_text` / `position_text` find the text of a vocabulary id or of a run's position
(the run's vocabulary, else a token of the run, else `#id`); `token_label` / `vocab_label` combine
the two. Qt-free, like the rest of core.
"""

from __future__ import annotations

from typing import Any

NEWLINE, TAB, SPACE, ELLIPSIS = "\u21b5", "\u21e5", "\u00b7", "\u2026"


def readable_label(text: str, width: int | None = 10, spaces: bool = True) -> str:
    """Token text for a label: newline, tab (and spaces, unless `spaces` is False) made visible,
    shortened to `width` characters with an ellipsis (None: not shortened)."""
    text = text.replace("\n", NEWLINE).replace("\t", TAB)
    if spaces:
        text = text.replace(" ", SPACE)
    return text if width is None or len(text) <= width else text[: max(0, width - 1)] + ELLIPSIS


def token_text(run: Any, token_id: int, known: dict[int, str] | None = None) -> str:
    """Raw text of any vocabulary id: the run's vocabulary, else a token of this run with that id,
    else a text seen elsewhere (`known`), else `#id`."""
    vocab = getattr(run, "vocab", None)
    if vocab is not None and 0 <= token_id < len(vocab):
        return vocab[token_id]
    for t in run.tokens:
        if t.id == token_id and t.text:
            return t.text
    if known and token_id in known:
        return known[token_id]
    return f"#{token_id}"


def position_text(run: Any, i: int) -> str:
    """Raw text of the run's token at position i (its piece; the vocabulary's when it owns no text)."""
    t = run.tokens[i]
    return t.text or token_text(run, t.id)


def token_label(run: Any, i: int, width: int | None = 14) -> str:
    """Label of the run's token at position i."""
    return readable_label(position_text(run, i), width)


def vocab_label(run: Any, token_id: int, known: dict[int, str] | None = None, width: int | None = 14) -> str:
    """Label of a vocabulary id."""
    return readable_label(token_text(run, token_id, known), width)
