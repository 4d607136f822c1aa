"""Head statistics over many prompts: per head, the mean and spread of each score (STAT_NAMES) across a set
of prompts, the label of the mean scores, and on how many prompts that label held, so that a label is a
property of the head rather than of one prompt.

The induction score only means something on a prompt where a token recurs at least two positions after an
earlier copy (else there is nothing to copy): its mean and spread are over those prompts only (nan when none does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import Cancelled, InputError
from .attention import STAT_NAMES, Thresholds, induction_prompt, induction_targets, label_head
from .head_search import head_statistics

MAX_PROMPTS = 200
MAX_FILE_BYTES = 1_000_000
MAX_PROMPT_CHARS = 20_000
_INDUCTION = STAT_NAMES.index("induction")

DEFAULT_PROMPTS = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Once upon a time, a small robot lived in a quiet village by the sea.",
    induction_prompt(n_words=16, repeats=2, seed=1),
    "The museum opened in 1901 with a single room of fossils and grew for a century.",
    "Q: What is 12 times 12?\nA: 144.\nQ: What is 7 times 8?\nA:",
)


@dataclass(frozen=True)
class ManyPromptStats:
    prompts: tuple[str, ...]
    scores: np.ndarray  # [P, L, H, S] per prompt (induction nan where the prompt repeats no token)
    n_tokens: tuple[int, ...]

    @property
    def mean(self) -> np.ndarray:
        """[L, H, S] mean over prompts (induction: over prompts that repeat a token)."""
        return _nan_reduce(np.nanmean, self.scores)

    @property
    def std(self) -> np.ndarray:
        """[L, H, S] standard deviation over prompts."""
        return _nan_reduce(np.nanstd, self.scores)

    def labels(self, th: Thresholds | None = None) -> tuple[np.ndarray, np.ndarray]:
        """([L, H] label of the mean scores, [L, H] share of prompts whose own label agrees)."""
        th = th or Thresholds()
        mean = np.nan_to_num(self.mean, nan=0.0)
        L, H = mean.shape[:2]
        per_prompt = np.nan_to_num(self.scores, nan=0.0)
        labels = np.empty((L, H), object)
        agree = np.zeros((L, H), np.float32)
        for layer in range(L):
            for head in range(H):
                labels[layer, head] = label_head(mean[layer, head], th)
                agree[layer, head] = np.mean([label_head(p, th) == labels[layer, head]
                                              for p in per_prompt[:, layer, head]])
        return labels, agree


def _nan_reduce(fn, a: np.ndarray) -> np.ndarray:
    out = np.full(a.shape[1:], np.nan, np.float32)
    ok = ~np.isnan(a).all(axis=0)
    if ok.any():
        out[ok] = fn(a[:, ok], axis=0)
    return out


def head_stats_over_prompts(session, prompts: Sequence[str], *, max_rows: int = 256,
                            on_progress: Callable[[float, str], None] | None = None,
                            cancel: threading.Event | None = None) -> ManyPromptStats:
    """Run every prompt (prompt only, no generation) and collect each head's statistics."""
    from ..api import capture

    prompts = tuple(p for p in prompts if p.strip())
    if not prompts:
        raise InputError("No prompts: give at least one non-empty prompt.")
    if len(prompts) > MAX_PROMPTS:
        raise InputError(f"{len(prompts)} prompts is more than {MAX_PROMPTS}: use fewer.")
    scores, sizes = [], []
    for i, prompt in enumerate(prompts):
        if cancel is not None and cancel.is_set():
            raise Cancelled("Head statistics cancelled.")
        if on_progress is not None:
            on_progress(i / len(prompts), f"prompt {i + 1} of {len(prompts)}")
        run = capture(prompt[:MAX_PROMPT_CHARS], session)
        s = head_statistics(run, max_rows=max_rows).astype(np.float32)  # [L, H, S]
        if induction_targets(run.token_ids, np.arange(run.n_tokens))[0].size == 0:  # nothing to copy
            s[..., _INDUCTION] = np.nan
        scores.append(s)
        sizes.append(run.n_tokens)
    if on_progress is not None:
        on_progress(1.0, f"{len(prompts)} prompts")
    return ManyPromptStats(prompts, np.stack(scores), tuple(sizes))


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a UTF-8 text file: separated by blank lines (a one-line-per-prompt file works too)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"No prompt file at {path}.")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{path.name} is larger than {MAX_FILE_BYTES // 1000} kB: split it.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path.name} is not UTF-8 text.") from None
    blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
    prompts = [b for b in blocks if b]
    if len(prompts) == 1 and "\n" in prompts[0]:
        prompts = [line.strip() for line in prompts[0].split("\n") if line.strip()]
    if not prompts:
        raise InputError(f"{path.name} holds no prompt.")
    if len(prompts) > MAX_PROMPTS:
        raise InputError(f"{path.name} holds {len(prompts)} prompts; at most {MAX_PROMPTS} are read.")
    return prompts
