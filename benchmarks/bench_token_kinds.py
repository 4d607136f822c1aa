"""Cost of marking tool-call and reasoning tokens while a run streams (core/token_kinds.mark, run by Run.apply
once per step), per streamed token, at 4,096 generated tokens of four kinds of text.

    .venv/bin/python benchmarks/bench_token_kinds.py

Prints milliseconds in total and microseconds per token; a decode step of SmolLM2-135M takes tens of
milliseconds on a CPU, so this should stay in the tens of microseconds.
"""

from __future__ import annotations

import time

from explorer.core.events import Token, TokenKind
from explorer.core.token_kinds import DEFAULT_TAGS, mark

N_CHARS = 16_384  # 4,096 tokens of 4 characters
TEXTS = {
    "plain text": "word " * (N_CHARS // 5),
    "'<' without tags": "a < b > c " * (N_CHARS // 10),
    "one open <think>": "<think>" + "x" * N_CHARS,
    "630 tool calls": "<tool_call>{}</tool_call> " * (N_CHARS // 26),
}


def stream(text: str) -> tuple[float, int]:
    """Seconds spent in `mark` while `text` arrives 4 characters per token, and the token count."""
    tokens: list[Token] = []
    resume, spent = 0, 0.0
    for i in range(0, len(text), 4):
        tokens.append(Token(id=0, text=text[i:i + 4], start=i, end=min(len(text), i + 4), kind=TokenKind.GENERATED))
        shown = text[:i + 4]
        t0 = time.perf_counter()
        resume = mark(tokens, shown, DEFAULT_TAGS, len(tokens) - 1, 0, resume)
        spent += time.perf_counter() - t0
    return spent, len(tokens)


def main() -> None:
    for name, text in TEXTS.items():
        spent, n = stream(text)
        print(f"{name:>18}: {n:,} tokens, {spent * 1e3:7.1f} ms in total, {spent / n * 1e6:6.1f} us per token")


if __name__ == "__main__":
    main()
