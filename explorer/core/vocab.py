"""Readable text of every token id, so panels can name top-k alternatives without the tokenizer."""

from __future__ import annotations

from typing import Any

from .tokens import TokenBytes


def readable_vocab(tokenizer: Any) -> list[str]:
    """Every id's piece as readable text: bytes decoded (a space stays a space), stray bytes as <0xNN>."""
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    to_bytes = TokenBytes(tokenizer)
    if to_bytes.scheme == "none":
        return [p if p is not None else "" for p in pieces]
    out = []
    for i, piece in enumerate(pieces):
        if piece is None:
            out.append("")
            continue
        raw = to_bytes(i)
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(piece if i in to_bytes.special_ids else "".join(f"<0x{b:02X}>" for b in raw))
    return out
