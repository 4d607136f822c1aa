"""Text coming in from outside (a file, the clipboard, a paste): made into valid Unicode at the boundary.

The tokenizer refuses text without a UTF-8 form (lone surrogates); bytes that are not UTF-8 are
decoded with replacement characters. Both return warnings that the GUI shows, so nothing is
changed silently.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def decode_prompt_bytes(data: bytes) -> tuple[str, list[str]]:
    """Decode bytes as UTF-8 (a BOM is dropped); invalid bytes become U+FFFD, with a warning."""
    text = data.decode("utf-8-sig", errors="replace")
    warnings = []
    bad = text.count(REPLACEMENT) - data.decode("utf-8-sig", errors="ignore").count(REPLACEMENT)
    if bad:
        warnings.append(f"The text was not valid UTF-8: {bad} undecodable byte sequence(s) were replaced "
                        f"by {REPLACEMENT}.")
    clean, more = clean_text(text)
    return clean, warnings + more


def clean_text(text: str) -> tuple[str, list[str]]:
    """Replace lone UTF-16 surrogates (a broken paste) by U+FFFD; say how many were replaced.

    NUL and other control characters are kept: the tokenizers handle them (the Tokens panel shows them).
    """
    try:
        text.encode("utf-8")
        return text, []
    except UnicodeEncodeError:
        pass
    fixed = "".join(REPLACEMENT if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    count = sum(1 for a, b in zip(text, fixed, strict=True) if a != b)
    return fixed, [f"The text held {count} invalid character(s) (lone UTF-16 surrogates, from a broken copy "
                   f"or paste); they were replaced by {REPLACEMENT}."]
