"""The Depth lab benchmark table: read at equal tokens / equal time by interpolation, verdicts judged
against the seed spread (never a claim from one seed)."""

from __future__ import annotations

import pytest

from explorer.lab.report import at, markdown, table, verdict


def run(arch, final_bpb, tokens_end=1000, seconds_end=10.0, seed=0, params=100):
    return {"arch": arch, "seed": seed, "params": params, "tokens_per_s": tokens_end / seconds_end,
            "heldout_bpb": [[0, 8.0], [tokens_end, final_bpb]],
            "heldout_bpb_time": [[0.0, 8.0], [seconds_end, final_bpb]]}


def test_interpolation_inside_the_curve_only():
    assert at([[0, 8.0], [100, 4.0]], 25) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        at([[0, 8.0], [100, 4.0]], 150)


def test_variants_are_compared_at_the_slowest_runs_tokens_and_time():
    rows, tokens, seconds = table([run("plain", 4.0, 1000, 10.0), run("attnres", 4.0, 500, 20.0)])
    assert tokens == 500 and seconds == 10.0
    by = {r.arch: r for r in rows}
    assert by["plain"].bpb_equal_tokens == pytest.approx(6.0)  # halfway along plain's curve
    assert by["attnres"].bpb_equal_tokens == pytest.approx(4.0)
    assert by["attnres"].bpb_equal_time == pytest.approx(6.0)  # attnres needed 20 s, read at 10 s


def test_verdict_needs_more_than_the_seed_spread():
    assert verdict([3.95, 4.05], [4.0, 4.1], "below").startswith("within seed noise")
    assert verdict([3.5, 3.52], [4.0, 4.02], "below").startswith("yes")
    assert verdict([4.5, 4.52], [4.0, 4.02], "below").startswith("no")
    assert "one seed" in verdict([3.9], [4.0], "below")
    assert verdict([4.0], [4.0], None) == "-"


def test_markdown_has_one_row_per_variant():
    rows, tokens, seconds = table([run("plain", 4.0, seed=0), run("plain", 4.1, seed=1), run("moda", 3.0)])
    text = markdown(rows, tokens, seconds)
    assert text.count("\n| plain | 2 |") == 1 and text.count("\n| moda | 1 |") == 1
