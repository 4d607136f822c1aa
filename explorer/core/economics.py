"""Token economics of one run: tokens and forward-pass compute by token kind, prefill vs decode, what the
prefix cache saved and what rejected draft tokens cost.

Compute is counted as multiply-accumulates x 2 (FLOPs) of the matrix products, from the model's shapes:

    per token:  2 N  +  4 L H d_head c        (+ 2 d_model V when that position's logits are computed)

    N = L (d_model H d_head + 2 d_model KV d_head + H d_head d_model + m d_model d_ff)   (q, k, v, o, MLP)

where L = layers, H / KV = query / key-value heads, m = 2 (plain MLP) or 3 (gated, SwiGLU), V = vocabulary,
and c = the keys the token attends (its position + 1 in a causal model, all N positions in an encoder).
This is Kaplan et al. 2020 ("Scaling Laws for Neural Language Models", Table 1: C_forward = 2N +
2 n_layer n_ctx d_attn) with the attention counted as in Hoffmann et al. 2022 (Chinchilla, Appendix F):
logits q.k and the weighted sum of values, 2 c H d_head each. The embedding lookup, norms, RoPE,
softmax, activations and residual adds (O(d_model) per token, under 1 %) are left out.

The runner computes logits once per forward pass (the last position: `logits_to_keep=1`), so the head costs
2 d_model V per step, the prefill once. (The explorer also scores every prompt position for its panels;
that extra analysis is not inference and is not counted.) Cached-prefix tokens were not computed: their
cost is shown as saved. Draft tokens the verifier rejected (`run.drafts`, when present) were computed and
thrown away.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .events import TokenKind
from .models import ModelInfo

SAVED = "cached prefix (saved, not computed)"
VISIBLE = frozenset({TokenKind.USER.value, TokenKind.PROMPT.value, TokenKind.GENERATED.value})


@dataclass(frozen=True)
class Shapes:
    """What the compute formula needs from a model's config."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    mlp_matrices: int
    vocab: int
    causal: bool = True
    estimated: bool = False  # the MLP size was inferred from the parameter count (an older run file)

    @classmethod
    def from_info(cls, info: ModelInfo) -> Shapes:
        d_ff, m = int(getattr(info, "d_ff", 0)), int(getattr(info, "mlp_matrices", 0))
        estimated = not (d_ff and m)
        if estimated:  # what is left of the parameters after embeddings and attention, as one 2-matrix MLP
            attn = info.n_layers * info.hidden_size * info.head_dim * (2 * info.n_heads + 2 * info.n_kv_heads)
            rest = info.n_params - info.vocab_size * info.hidden_size - attn
            m, d_ff = 2, max(0, rest // max(1, 2 * info.n_layers * info.hidden_size))
        return cls(info.n_layers, info.hidden_size, info.n_heads, info.n_kv_heads, info.head_dim, d_ff, m,
                   info.vocab_size, info.is_causal, estimated)

    @property
    def attention_params(self) -> int:
        """Weights of q, k, v and o over all layers."""
        return self.n_layers * self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)

    @property
    def mlp_params(self) -> int:
        return self.n_layers * self.mlp_matrices * self.d_model * self.d_ff

    @property
    def body_params(self) -> int:
        """N: the weights every token multiplies (embeddings and head excluded)."""
        return self.attention_params + self.mlp_params

    @property
    def head_flops(self) -> int:
        """One position's logits: 2 d_model V."""
        return 2 * self.d_model * self.vocab

    def token_flops(self, position: int, keys: int | None = None) -> int:
        """Forward FLOPs of one token (no head): 2N + 4 L H d_head c, c = keys it attends."""
        c = position + 1 if keys is None else keys
        return 2 * self.body_params + 4 * self.n_layers * self.n_heads * self.head_dim * c

    def span_flops(self, lo: int, hi: int, keys: int | None = None) -> int:
        """Sum of token_flops over positions lo .. hi-1 (closed form; causal unless `keys` is given)."""
        n = max(0, hi - lo)
        attended = n * keys if keys is not None else (hi * (hi + 1) - lo * (lo + 1)) // 2
        return 2 * self.body_params * n + 4 * self.n_layers * self.n_heads * self.head_dim * attended


@dataclass(frozen=True)
class KindRow:
    kind: str
    tokens: int  # positions of this kind in the run
    prefill: int  # of them computed in the prefill
    decode: int  # of them computed one per decode step
    flops: int  # their forward compute (head excluded)


@dataclass(frozen=True)
class Economics:
    rows: tuple[KindRow, ...]  # by kind, most compute first
    prefill_flops: int  # the prompt's forward pass (computed positions) + its one head
    decode_flops: int  # every decode step + its head
    head_flops: int  # all heads (part of the two above)
    cached_tokens: int
    cached_flops_saved: int
    draft_tokens: int  # proposed by a drafter (0: no speculative decoding)
    rejected_tokens: int
    rejected_flops: int  # ~ verified and thrown away (at the mean decode position)
    shapes: Shapes

    @property
    def total_flops(self) -> int:
        return self.prefill_flops + self.decode_flops + self.rejected_flops

    @property
    def total_tokens(self) -> int:
        return sum(r.tokens for r in self.rows)

    def overhead_share(self) -> float:
        """Share of the compute spent on tokens nobody typed or reads (template, system, tools, retrieved,
        reasoning, ...): what the visible prompt and answer do not show."""
        body = sum(r.flops for r in self.rows)
        hidden = sum(r.flops for r in self.rows if r.kind not in VISIBLE)
        return hidden / body if body else 0.0

    def table(self) -> list[tuple[str, int, int, int, float]]:
        """(what, tokens, prefill tokens, decode tokens, GFLOPs) rows, then the totals and the extras."""
        g = 1e-9
        out = [(r.kind, r.tokens, r.prefill, r.decode, r.flops * g) for r in self.rows
               if not (r.kind == TokenKind.CACHED_PREFIX.value and r.flops == 0)]  # shown as the saved row
        n_heads = self.head_flops // self.shapes.head_flops if self.shapes.head_flops else 0
        out.append(("lm_head (logits)", n_heads, 0, 0, self.head_flops * g))
        if self.cached_tokens:
            out.append((SAVED, self.cached_tokens, 0, 0, self.cached_flops_saved * g))
        if self.draft_tokens:
            out.append(("draft tokens rejected", self.rejected_tokens, 0, 0, self.rejected_flops * g))
        return out


def economics(run: Any) -> Economics:
    """The run's tokens and compute by kind (see the module doc for the formula)."""
    shapes = Shapes.from_info(run.info)
    n = run.n_tokens
    tokens = run.tokens[:n]
    steps = run.steps
    cached = int(steps[0].cached_prefix) if steps else 0
    n_prompt = run.n_prompt if steps else 0
    keys = n_prompt if not shapes.causal else None  # an encoder: every token attends the whole input
    per_kind: dict[str, list[int]] = {}
    for p, t in enumerate(tokens):
        row = per_kind.setdefault(t.kind.value, [0, 0, 0, 0])
        row[0] += 1
        if p < cached:
            continue
        row[1 if p < n_prompt else 2] += 1
        row[3] += shapes.token_flops(p, keys)
    rows = tuple(sorted((KindRow(k, *v) for k, v in per_kind.items()), key=lambda r: (-r.flops, -r.tokens)))
    prefill_passes = 1 if steps else 0
    decode_passes = max(0, len(steps) - 1)
    head = shapes.head_flops if shapes.causal else 0  # an encoder has no language-model head
    prefill = shapes.span_flops(cached, n_prompt, keys) + head * prefill_passes
    decode = shapes.span_flops(n_prompt, n) + head * decode_passes
    drafted, rejected = _drafts(getattr(run, "drafts", None))
    mean_pos = (n_prompt + n) // 2
    return Economics(
        rows=rows, prefill_flops=prefill, decode_flops=decode, head_flops=head * (prefill_passes + decode_passes),
        cached_tokens=cached, cached_flops_saved=shapes.span_flops(0, cached), draft_tokens=drafted,
        rejected_tokens=rejected, rejected_flops=rejected * (shapes.token_flops(mean_pos) + head), shapes=shapes,
    )


def _drafts(drafts: Iterable | None) -> tuple[int, int]:
    """(proposed, rejected) draft tokens from `run.drafts`: entries with the proposed ids and the number
    accepted (attributes or dict keys; an entry of another shape is skipped)."""
    proposed = rejected = 0
    for d in drafts or ():
        ids = _field(d, ("proposed", "proposed_ids", "draft_ids", "ids"))
        accepted = _field(d, ("accepted", "n_accepted", "num_accepted"))
        try:
            k = len(ids)
            a = int(accepted) if not isinstance(accepted, (list, tuple)) else len(accepted)
        except (TypeError, ValueError):
            continue
        proposed += k
        rejected += max(0, k - min(a, k))
    return proposed, rejected


def _field(d: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        value = d.get(name) if isinstance(d, dict) else getattr(d, name, None)
        if value is not None:
            return value
    return None
