"""Prompt A/B: align two runs' tokens and compare their internals at matched positions.

Alignment: the identical prefix pairs one to one; the identical suffix too; the middle is an
edit-distance (Levenshtein) alignment on token ids, with text as a tie-break so that the same
word tokenised differently still lines up where it can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..lens import Readout, apply_readout
from ..run import Run
from ..sampling import log_softmax

_MAX_DP_CELLS = 4_000_000  # a bigger middle is aligned position by position (too slow for a full table)


@dataclass(frozen=True)
class Alignment:
    pairs: tuple[tuple[int | None, int | None], ...]  # (index in A, index in B); None = inserted/deleted
    prefix: int  # leading tokens identical in both

    @property
    def matched(self) -> list[tuple[int, int]]:
        return [(a, b) for a, b in self.pairs if a is not None and b is not None]

    def b_for(self, a_index: int) -> int | None:
        for a, b in self.pairs:
            if a == a_index:
                return b
        return None

    def a_for(self, b_index: int) -> int | None:
        for a, b in self.pairs:
            if b == b_index:
                return a
        return None


def align_tokens(a: Sequence, b: Sequence) -> Alignment:
    """Align two token sequences (ids or texts): (i, j) for kept/substituted, (i, None) deleted, (None, j) inserted."""
    a, b = list(a), list(b)
    n, m = len(a), len(b)
    pre = 0
    while pre < min(n, m) and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < min(n, m) - pre and a[n - 1 - suf] == b[m - 1 - suf]:
        suf += 1
    mid_a, mid_b = a[pre:n - suf], b[pre:m - suf]
    middle = _levenshtein_pairs(mid_a, mid_b) if len(mid_a) * len(mid_b) <= _MAX_DP_CELLS else [
        (i if i < len(mid_a) else None, i if i < len(mid_b) else None) for i in range(max(len(mid_a), len(mid_b)))]
    pairs = [(i, i) for i in range(pre)]
    pairs += [(None if i is None else i + pre, None if j is None else j + pre) for i, j in middle]
    pairs += [(n - suf + k, m - suf + k) for k in range(suf)]
    return Alignment(tuple(pairs), pre)


def _levenshtein_pairs(a: list, b: list) -> list[tuple[int | None, int | None]]:
    n, m = len(a), len(b)
    cost = np.zeros((n + 1, m + 1), np.int32)  # [n+1, m+1] edit distance of prefixes
    cost[:, 0] = np.arange(n + 1)
    cost[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            sub = cost[i - 1, j - 1] + (0 if a[i - 1] == b[j - 1] else 1)
            cost[i, j] = min(sub, cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    out: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:  # prefer diagonal, then deletion, then insertion
        if i > 0 and j > 0 and cost[i, j] == cost[i - 1, j - 1] + (0 if a[i - 1] == b[j - 1] else 1):
            out.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and cost[i, j] == cost[i - 1, j] + 1:
            out.append((i - 1, None))
            i -= 1
        else:
            out.append((None, j - 1))
            j -= 1
    return out[::-1]


def align_runs(a: Run, b: Run) -> Alignment:
    """Align by token id when both runs use the same vocabulary, else by token text."""
    same_vocab = a.info.vocab_size == b.info.vocab_size and a.info.name == b.info.name
    if same_vocab:
        return align_tokens(a.token_ids.tolist(), b.token_ids.tolist())
    return align_tokens([t.text for t in a.tokens], [t.text for t in b.tokens])


# --- comparisons at matched positions ---------------------------------------------------------------------
def kl(logp: np.ndarray, logq: np.ndarray) -> float:
    """KL(p || q) in nats from two log-distributions."""
    p = np.exp(logp)
    return float(np.sum(p * (logp - logq)))


def next_token_diff(a: Run, pos_a: int, b: Run, pos_b: int, k: int = 8) -> dict:
    """KL both ways, top-1 of each, and the union of their top-k with both probabilities."""
    la, lb = a.next_token_logprobs(pos_a), b.next_token_logprobs(pos_b)
    top = list(dict.fromkeys(np.argsort(-la)[:k].tolist() + np.argsort(-lb)[:k].tolist()))
    return {"kl_ab": kl(la, lb), "kl_ba": kl(lb, la), "top1_a": int(la.argmax()), "top1_b": int(lb.argmax()),
            "ids": top, "p_a": np.exp(la[top]), "p_b": np.exp(lb[top])}


def lens_logprobs(run: Run, position: int, readout: Readout = None) -> np.ndarray:
    """[layers + 1, vocab] lens log-distributions at one position (logit lens, or `readout`; last row = the real
    prediction)."""
    resid = np.array(run.array("resid")[:, position], np.float32)  # [L+1, D]
    resid[-1] = run.array("final_resid")[position]
    resid = apply_readout(resid, readout)  # [L+1, D]
    logits = run.norm.apply(resid) @ run.unembed.astype(np.float32, copy=False).T  # [L+1, vocab]
    return np.stack([log_softmax(row) for row in logits]).astype(np.float32)


def lens_diff(a: Run, pos_a: int, b: Run, pos_b: int, readout: Readout = None) -> dict:
    """Per layer: KL(A || B) of the lens distributions (logit lens, or `readout`), and each run's top token and its
    probability."""
    la, lb = lens_logprobs(a, pos_a, readout), lens_logprobs(b, pos_b, readout)
    return {"kl": np.array([kl(x, y) for x, y in zip(la, lb, strict=True)]),
            "top_a": la.argmax(-1), "p_a": np.exp(la.max(-1)), "top_b": lb.argmax(-1), "p_b": np.exp(lb.max(-1))}


def attention_diff(a: Run, b: Run, alignment: Alignment, layer: int, head: int) -> tuple[np.ndarray, list[int]]:
    """[M, M] attention of A minus B over matched positions (query rows x key columns), and A's indices."""
    matched = alignment.matched
    ia = np.array([i for i, _ in matched], np.int64)
    ib = np.array([j for _, j in matched], np.int64)
    maps_a = a.attention(layer, head)[np.ix_(ia, ia)]  # [M, M]
    maps_b = b.attention(layer, head)[np.ix_(ib, ib)]  # [M, M]
    return maps_a - maps_b, ia.tolist()
