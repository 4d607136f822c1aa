"""Head statistics over many prompts: per-head mean, spread, label and agreement, on the tiny Llama."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.core.analysis.attention import STAT_NAMES, Thresholds, label_head
from explorer.core.analysis.head_search import head_statistics
from explorer.core.analysis.head_stats_many import head_stats_over_prompts, read_prompts
from explorer.core.api import capture
from explorer.core.errors import InputError

PROMPTS = ["The capital of France is Paris.", "apple river stone apple river stone", "qwerty"]
IND = STAT_NAMES.index("induction")


def test_mean_and_spread_match_the_single_prompt_statistics(tiny_session):
    stats = head_stats_over_prompts(tiny_session, PROMPTS)
    single = []
    for p in PROMPTS:
        run = capture(p, tiny_session)
        s = head_statistics(run)
        ids = run.token_ids.tolist()
        if not any(ids[j] == ids[i] for i in range(len(ids)) for j in range(i - 1)):  # no earlier copy to follow
            s[..., IND] = np.nan
        single.append(s)
    single = np.stack(single)  # [P, L, H, S]
    np.testing.assert_allclose(stats.scores, single, rtol=1e-5, atol=1e-6)
    other = [i for i in range(len(STAT_NAMES)) if i != IND]
    np.testing.assert_allclose(stats.mean[..., other], single[..., other].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.std[..., other], single[..., other].std(0), rtol=1e-4, atol=1e-6)
    repeats = ~np.isnan(single[:, 0, 0, IND])
    assert 0 < repeats.sum() < len(PROMPTS)  # the induction mean covers only the prompts that repeat a token
    np.testing.assert_allclose(stats.mean[..., IND], single[repeats][..., IND].mean(0), rtol=1e-5, atol=1e-6)
    labels, agree = stats.labels()
    th = Thresholds()
    assert labels[0, 0] == label_head(np.nan_to_num(stats.mean[0, 0]), th)
    own = [label_head(np.nan_to_num(single[p, 0, 0]), th) for p in range(len(PROMPTS))]
    assert agree[0, 0] == pytest.approx(np.mean([o == labels[0, 0] for o in own]))


def test_prompt_files_are_checked(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first prompt\nstill first\n\nsecond prompt\n", encoding="utf-8")
    assert read_prompts(f) == ["first prompt\nstill first", "second prompt"]
    f.write_text("one\ntwo\nthree\n", encoding="utf-8")
    assert read_prompts(f) == ["one", "two", "three"]
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="UTF-8"):
        read_prompts(f)
    f.write_text("x\n\n" * 300, encoding="utf-8")
    with pytest.raises(InputError, match="at most"):
        read_prompts(f)
    with pytest.raises(InputError, match="No prompt file"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="No prompts"):
        head_stats_over_prompts(None, ["  "])
