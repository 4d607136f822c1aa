"""Tokens panel redraw time at 4,000 tokens: full layout + paint, scrolling, and per streamed token.

Tokenizes a long text with the default model's tokenizer (no weights loaded), shows it in a
TokenView inside a scroll area and times: a full relayout, a full repaint of the visible area,
a scroll step, and appending one token (layout of the new token + repaint of its line), the
cost paid per generated token while streaming. Target: < 16 ms per streamed token.

    .venv/bin/python benchmarks/bench_tokens.py [tokenizer-name]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication  # noqa: E402

from explorer.core.analysis.tokenizer_compare import load_tokenizer, tokenize_text  # noqa: E402
from explorer.ui.panels.token_colors import _kind_colors  # noqa: E402
from explorer.ui.widgets.token_view import TokenView, scrolling  # noqa: E402

N = 4000
PARAGRAPH = (
    "The model never sees letters: text is cut into tokens, each with an id. Attention lets every token look "
    "back at earlier ones, and the KV cache keeps their keys and values so decoding stays cheap.\n"
    "def f(x):\n\treturn x * 2  # code, tabs and 東京 or émoji 😀 too\n\n"
)


def _ms(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


# PySide6 6.12.0 on Python 3.11 drops a reference to None on every call of a void Qt method (None is
# not immortal before 3.12), so a process aborts with "none_dealloc" after ~16,000 such calls. Until the
# pin is fixed, hold enough references to None for the benchmark's millions of paint calls.
_NONE_GUARD = [None] * 20_000_000


def main() -> None:
    app = QApplication.instance() or QApplication([])
    tokenizer = load_tokenizer(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct")
    text = PARAGRAPH
    while len(tokenizer(text)["input_ids"]) < N:
        text += PARAGRAPH
    tokens = tokenize_text(tokenizer, text)[:N]
    fill = _kind_colors(tokens)
    view = TokenView()
    area = scrolling(view)
    area.resize(900, 700)
    area.show()
    app.processEvents()

    def full():
        view.set_tokens(tokens, fill, [None] * len(tokens), [None] * len(tokens))
        area.viewport().repaint()

    full_ms = _ms(full, 5)
    bar = area.verticalScrollBar()

    def scroll():
        bar.setValue((bar.value() + 300) % max(1, bar.maximum()))
        area.viewport().repaint()

    scroll_ms = _ms(scroll, 30)
    # streaming: start from 3,950 tokens and append the last 50 one by one, keeping the end in view
    view.set_tokens(tokens[:-50], fill[:-50], [None] * (len(tokens) - 50), [None] * (len(tokens) - 50))
    app.processEvents()
    stream_ms, stream_full_ms = [], []
    for i in range(len(tokens) - 50, len(tokens)):
        t0 = time.perf_counter()
        view.append_tokens([tokens[i]], [fill[i]], [None], [None])
        bar.setValue(bar.maximum())
        app.processEvents()  # what the event loop does: layout + paint of the changed line only
        stream_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        view.repaint()  # worst case: the whole visible area repainted after the append
        stream_full_ms.append((time.perf_counter() - t0) * 1e3 + stream_ms[-1])
    lines = view.fragments[-1].line + 1
    print(f"TokenView, {len(tokens)} tokens, {len(text)} characters, {lines} lines, 900x700 viewport")
    print(f"  full relayout + repaint : median {statistics.median(full_ms):7.2f} ms  (max {max(full_ms):.2f})")
    print(f"  scroll step + repaint   : median {statistics.median(scroll_ms):7.2f} ms  (max {max(scroll_ms):.2f})")
    print(f"  per streamed token      : median {statistics.median(stream_ms):7.2f} ms  (max {max(stream_ms):.2f})"
          f"  target < 16 ms")
    print(f"  ... with full repaint   : median {statistics.median(stream_full_ms):7.2f} ms  "
          f"(max {max(stream_full_ms):.2f})")
    print("  (timed on a shared machine with other jobs running: figures are upper bounds)")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (see _NONE_GUARD)
