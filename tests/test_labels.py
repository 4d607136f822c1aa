"""Token label text has one home (explorer.core.labels): whitespace made visible, shortened, ids resolved."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import explorer
from explorer.core.labels import position_text, readable_label, token_label, token_text, vocab_label


def _run(vocab=None):
    tok = lambda i, text: SimpleNamespace(id=i, text=text)  # noqa: E731
    return SimpleNamespace(vocab=vocab, tokens=[tok(5, " the"), tok(7, "\n"), tok(9, "")])


def test_readable_label_shows_whitespace_and_shortens():
    assert readable_label(" a\tb\n") == "\u00b7a\u21e5b\u21b5"
    assert readable_label(" a b", spaces=False) == " a b"
    assert readable_label("abcdefghijkl", 5) == "abcd\u2026" and len(readable_label("abcdefghijkl", 5)) == 5
    assert readable_label("abcdefghijkl", None) == "abcdefghijkl"


def test_token_text_prefers_the_vocabulary_then_the_run_then_known_texts():
    vocab = [f"v{i}" for i in range(10)]
    assert token_text(_run(vocab), 5) == "v5"
    assert token_text(_run(), 5) == " the"
    assert token_text(_run(), 42, known={42: "far"}) == "far"
    assert token_text(_run(), 42) == "#42"


def test_position_and_vocab_labels():
    run = _run()
    assert position_text(run, 1) == "\n" and token_label(run, 1) == "\u21b5"
    assert position_text(run, 2) == "#9"  # owns no text, no vocabulary: its id
    assert vocab_label(run, 5) == "\u00b7the"


def test_no_other_module_makes_token_label_text():
    """The class of the finding: panels each spelled their own whitespace glyphs and shortening."""
    root = Path(explorer.__file__).parent
    pattern = re.compile(r"""replace\(\s*["']\\n["']""")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "labels.py" and pattern.search(p.read_text())]
    assert offenders == []


def test_residual_depths_are_labelled_by_the_one_naming_rule():
    """Issue 17: one residual row was "layer i", "after i" and "layer i+1 of L" in three panels. Only
    core/naming.py spells a depth label; everything else calls depth_label / block_label."""
    root = Path(explorer.__file__).parent
    pattern = re.compile(r"""f["'][^"']*after (layer|block) \{""")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "naming.py" and pattern.search(p.read_text())]
    assert offenders == []


def test_depth_labels():
    from explorer.core.naming import block_label, block_output_depth, depth_label

    assert [depth_label(d) for d in range(3)] == ["embed", "after block 0", "after block 1"]
    assert depth_label(2, short=True) == "after 1" and block_label(4) == "block 4" and block_output_depth(4) == 5
    with pytest.raises(ValueError):
        depth_label(-1)
