"""Head search ranks heads by the attention statistics and by attention to a token or span."""

from __future__ import annotations

import numpy as np
import pytest
from numeric import approx, assert_close

from explorer.core.analysis.attention import STAT_NAMES
from explorer.core.analysis.head_search import head_statistics, search, token_positions
from explorer.core.api import run_request
from explorer.core.events import RunRequest
from explorer.core.runner import Session


@pytest.fixture(scope="module")
def run(tiny_llama):
    prompt = "The capital of France is Paris. The capital of Italy is Rome and the capital"
    return run_request(Session(tiny_llama), RunRequest(prompt))


def test_statistics_rank(run):
    stats = head_statistics(run)
    assert stats.shape == (run.info.n_layers, run.info.n_heads, len(STAT_NAMES))
    hits = search(run, "sink", stats=stats, top=5)
    col = stats[:, :, STAT_NAMES.index("sink")]
    assert hits[0].score == pytest.approx(col.max())
    assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    sink = np.array([run.attention(h.layer, h.head)[:, 0].mean() for h in hits])
    assert_close(sink, [h.score for h in hits], 1e-3)


def test_attends_to_token_and_span(run):
    where = token_positions(run, "Capital")
    assert where.size == 3
    hits = search(run, "token", token=" capital ", top=3)
    first = int(where.min())
    for h in hits:
        a = run.attention(h.layer, h.head)[first + 1:]  # [rows after the first ' capital', N]
        assert h.score == approx(a[:, where].sum(axis=1).mean(), 1e-3)
    span = search(run, "span", span=(0, 1), top=1)[0]
    assert span.score == approx(run.attention(span.layer, span.head)[1:, 0].mean(), 1e-3)
    with pytest.raises(ValueError):
        search(run, "telepathy")
