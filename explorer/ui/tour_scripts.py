"""The guided tours' scripts: five scenes on the default model, each a few steps.

Every number a step's paragraph states is computed from the real run when the step is shown (its
`facts` function, pure core code), so the text cannot drift from the model; tests/ui/test_tours.py
runs each tour in the window and checks each claim with an independent computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.analysis.attention import STAT_NAMES, induction_prompt
from ..core.analysis.depth import lens_columns
from ..core.analysis.eviction import EvictionPolicy
from ..core.analysis.head_search import head_statistics
from ..core.analysis.jobs import EvictionWhatIf
from ..core.analysis.massive import massive_positions
from ..core.interventions import Intervention
from ..core.lens_store import cached_lens
from ..core.naming import depth_label

Facts = dict[str, Any]


@dataclass(frozen=True)
class Step:
    title: str
    text: str  # one paragraph; {names} are filled from the facts
    prompt: str  # the run this step shows (re-run only when it differs from the one on screen)
    panel: str  # the dock to raise
    max_new: int = 0
    chat: bool = False
    facts: Callable[[Any, Any, Facts], Facts] | None = None  # (run, job result or None, facts so far) -> new facts
    job: Callable[[Any, Facts], Any] | None = None  # (run, facts) -> an engine job request whose result `facts` reads
    interventions: Callable[[Facts], tuple] | None = None  # from the facts so far
    select: Callable[[Any, Facts], dict] | None = None  # -> {"layer": .., "head": .., "position": ..}
    lens: Callable[[Facts], str] | None = None  # the depth panel's lens ("logit" / "tuned" / "jacobian")
    tab: str | None = None  # a tab of the panel to bring forward (its title)


@dataclass(frozen=True)
class Tour:
    key: str
    title: str
    steps: tuple[Step, ...] = field(default_factory=tuple)


# --- 1. tokenization quirks ------------------------------------------------------------------------------------
FAMILY = "\U0001F469\u200d\U0001F469\u200d\U0001F467"  # woman, ZWJ, woman, ZWJ, girl: one picture
TOKENS_PROMPT = f"In 2024 she paid 12345 coins, sent {FAMILY} and said Привет to 東京. <|im_end|> Then she left."


def span_tokens(run, text: str) -> list[int]:
    """Positions of the tokens that carry bytes of the first occurrence of `text` in the run's text: those whose span
    overlaps it, the empty-span byte pieces inside it, and a partial piece just before it (a space + first bytes)."""
    lo = run.text.index(text)
    hi = lo + len(text)
    return [i for i, t in enumerate(run.tokens)
            if (t.start < hi and t.end > lo) or (t.start == t.end and lo <= t.start < hi)
            or (t.partial and t.end == lo)]


def tokens_facts(run, _loaded, _facts: Facts) -> Facts:
    digits = span_tokens(run, "12345")
    emoji = span_tokens(run, FAMILY)
    cyr = span_tokens(run, "Привет")
    kanji = span_tokens(run, "東京")
    injected = [i for i, t in enumerate(run.tokens) if t.injected or (t.is_special and t.text == "<|im_end|>")]
    return {"digits_pos": digits, "n_digits": len(digits), "emoji_pos": emoji, "n_emoji": len(emoji),
            "emoji_partial": sum(run.tokens[i].partial for i in emoji), "n_cyr": len(cyr), "cyr_pos": cyr,
            "n_kanji": len(kanji), "kanji_pos": kanji, "special_pos": injected[0] if injected else -1,
            "special_id": run.tokens[injected[0]].id if injected else -1}


TOKENS = Tour("tokens", "Tokenization quirks", (
    Step("Numbers", "The model never sees words or numbers, only tokens. SmolLM2's tokenizer splits every number "
         "into single digits: \"12345\" is {n_digits} tokens (selected), so arithmetic happens digit by digit.",
         TOKENS_PROMPT, "tokens", facts=tokens_facts, select=lambda run, f: {"position": f["digits_pos"][0]}),
    Step("Emoji", "The family emoji is one picture but five code points (woman, woman, girl, joined by invisible "
         "zero-width joiners), 18 UTF-8 bytes and {n_emoji} tokens: {emoji_partial} of them are byte pieces that are "
         "not a whole character on their own (drawn as <0x..> byte fallback).",
         TOKENS_PROMPT, "tokens", select=lambda run, f: {"position": f["emoji_pos"][0]}),
    Step("Other scripts", "Scripts that were rare in training cost more: the 6-letter Russian word takes "
         "{n_cyr} tokens and the two Japanese characters take {n_kanji} byte pieces, while most English words here "
         "are one token each. The same text is longer, slower and more expensive for these languages.",
         TOKENS_PROMPT, "tokens", select=lambda run, f: {"position": f["cyr_pos"][0]}),
    Step("A typed special token", "The user typed \"<|im_end|>\" as plain text, and the tokenizer turned it "
         "into the real end-of-turn control token (id {special_id}, flagged): typed text that becomes a control "
         "token is a prompt-injection path. (Prompt bar: 'Treat special-token text as plain text' prevents it.)",
         TOKENS_PROMPT, "tokens", select=lambda run, f: {"position": f["special_pos"]}),
))


# --- 2. the attention sink ------------------------------------------------------------------------------------
SINK_PROMPT = ("Once upon a time, a small robot lived in a quiet village by the sea. Every morning it walked "
               "to the harbour to count the boats and to listen to the gulls.")


def stat(run, name: str) -> np.ndarray:
    return head_statistics(run)[..., STAT_NAMES.index(name)]  # [layers, heads]


def sink_facts(run, _loaded, _facts: Facts) -> Facts:
    sink = stat(run, "sink")
    layer, head = (int(x) for x in np.unravel_index(np.argmax(sink), sink.shape))
    heavy = float((sink >= 0.5).mean())
    peak = np.abs(run.array("resid")).max(axis=(0, 2)).astype(np.float64)  # [N]
    return {"sink_layer": layer, "sink_head": head, "sink_score": float(sink[layer, head]),
            "sink_share": heavy, "first": run.tokens[0].text, "massive": bool(massive_positions(run.array("resid"))[0]),
            "peak_ratio": float(peak[0] / np.median(peak[1:]))}


SINK = Tour("sink", "The attention sink", (
    Step("A head that looks at nothing", "Layer {sink_layer}, head {sink_head} sends {sink_score:.1%} of every "
         "token's attention to the first token \"{first}\", which carries almost no meaning. {sink_share:.0%} of "
         "all heads put at least half their attention there: an attention sink, a place to park attention when "
         "a head has nothing to do (softmax must sum to 1).",
         SINK_PROMPT, "attention", facts=sink_facts,
         select=lambda run, f: {"layer": f["sink_layer"], "head": f["sink_head"], "position": run.n_tokens - 1}),
    Step("Why the first token", "The first token's residual stream is huge: its largest activation is "
         "{peak_ratio:.0f}x the median token's. Its key is easy to match and its value small, so attending to it "
         "changes little. Evicting it from the KV cache breaks long generation (see the KV cache tour).",
         SINK_PROMPT, "depth", select=lambda run, f: {"position": 0}),
))


# --- 3. an induction head, found and ablated ----------------------------------------------------------------
INDUCTION_PROMPT = induction_prompt(n_words=20, repeats=2)


def second_half_logprob(run) -> float:
    """Mean log-probability the model gave the real next token over the repeated second half."""
    ids = run.token_ids
    n = len(ids)
    return float(np.mean([run.next_token_logprobs(i)[ids[i + 1]] for i in range(n // 2 + 1, n - 1)]))


def induction_facts(run, _loaded, _facts: Facts) -> Facts:
    ind = stat(run, "induction")
    layer, head = (int(x) for x in np.unravel_index(np.argmax(ind), ind.shape))
    return {"ind_layer": layer, "ind_head": head, "ind_score": float(ind[layer, head]),
            "base_lp": second_half_logprob(run), "n_tokens": run.n_tokens}


def ablated_facts(run, _loaded, facts: Facts) -> Facts:
    lp = second_half_logprob(run)
    return {"ablated_lp": lp, "ratio": float(np.exp(facts["base_lp"] - lp))}


def _ablate(f: Facts) -> tuple:
    return (Intervention("zero_head", f["ind_layer"], f["ind_head"]),)


INDUCTION = Tour("induction", "An induction head, found and ablated", (
    Step("Found", "Twenty random words, then the same twenty again. Head {ind_layer}.{ind_head} (layer.head) has "
         "the highest induction score: in the second copy it attends to the token right after the earlier copy of "
         "the current token ({ind_score:.0%} of its attention), which is exactly what predicts the next word.",
         INDUCTION_PROMPT, "attention", facts=induction_facts,
         select=lambda run, f: {"layer": f["ind_layer"], "head": f["ind_head"], "position": run.n_tokens - 2}),
    Step("Ablated", "Now the same prompt with head {ind_layer}.{ind_head} zeroed. The model's mean log-probability "
         "of the correct next token over the second copy falls from {base_lp:.2f} to {ablated_lp:.2f} nats: the "
         "repeated tokens became {ratio:.1f}x less likely on average (geometric mean). That is one head out of 270.",
         INDUCTION_PROMPT, "interventions", facts=ablated_facts, interventions=_ablate,
         select=lambda run, f: {"layer": f["ind_layer"], "head": f["ind_head"], "position": run.n_tokens - 2}),
))


# --- 4. "Paris" emerging through the layers -------------------------------------------------------------------
PARIS_PROMPT = "The capital of France is"


def lens_kind_for(info) -> str:
    return "tuned" if cached_lens(info.name, "tuned", info.n_layers, info.hidden_size) is not None else "logit"


def emerges_at(run, position: int, token_id: int, readout) -> tuple[int, np.ndarray]:
    """(first depth from which `token_id` stays the top token to the end, its probability per depth)."""
    cols = lens_columns(run, position, position + 1, k=1, readout=readout)
    top = cols.top_ids[:, 0, 0]  # [L+1]
    stays = np.flatnonzero(np.cumprod((top == token_id)[::-1])[::-1])
    probs = np.exp(cols.target_logprob[:, 0]) if cols.target_ids[0] == token_id else cols.top_probs[:, 0, 0]
    return (int(stays[0]) if stays.size else -1), probs


def paris_facts(run, _loaded, _facts: Facts) -> Facts:
    info = run.info
    kind = lens_kind_for(info)
    readout = cached_lens(info.name, kind, info.n_layers, info.hidden_size) if kind != "logit" else None
    pos = run.n_prompt - 1
    paris = int(np.argmax(run.next_token_logprobs(pos)))
    depth, _ = emerges_at(run, pos, paris, readout)
    logit_depth, _ = emerges_at(run, pos, paris, None)
    p_final = float(np.exp(run.next_token_logprobs(pos)[paris]))

    def name(d: int) -> str:
        return "the embedding" if d == 0 else depth_label(d)

    return {"lens_kind": kind, "lens_label": "tuned lens" if kind == "tuned" else "logit lens",
            "paris": (run.vocab[paris] if run.vocab else str(paris)), "paris_id": paris, "pos": pos,
            "depth": depth, "depth_name": name(depth), "logit_depth": logit_depth,
            "logit_depth_name": name(logit_depth), "p_final": p_final,
            "also": "" if kind == "logit" else f" (the logit lens only gets there after {name(logit_depth)})"}


PARIS = Tour("paris", "\"Paris\" emerging through the layers", (
    Step("Through the layers", "Each row of the grid reads the residual stream after one layer with the "
         "{lens_label}. At the last prompt token the prediction \"{paris}\" becomes and stays the top token after "
         "{depth_name}{also}; before that, the middle layers hold other guesses.",
         PARIS_PROMPT, "depth", max_new=1, facts=paris_facts, lens=lambda f: f["lens_kind"],
         select=lambda run, f: {"position": f["pos"], "layer": max(0, f["depth"] - 1)}),
    Step("The answer", "At the last layer the model gives \"{paris}\" a probability of {p_final:.0%}, and it "
         "generates it. The lens shows that the answer is settled well before the output: the last layers mostly "
         "sharpen it.", PARIS_PROMPT, "next_token", max_new=1, select=lambda run, f: {"position": f["pos"]}),
))


# --- 5. the KV cache growing, and an eviction policy's cost -------------------------------------------------
KV_PROMPT = ("The museum opened in 1901 with a single room of fossils. Over the next century it grew into a "
             "large building with halls of minerals, birds and ancient tools, and today")
KV_NEW = 16


def kv_facts(run, _loaded, _facts: Facts) -> Facts:
    info = run.info
    total = int(run.kv_bytes_per_layer(len(run.steps) - 1).sum())
    per_token = total / run.n_tokens
    return {"n_prompt": run.n_prompt, "n_tokens": run.n_tokens, "kv_total": total, "per_token": per_token,
            "bytes_per_value": per_token / (2 * info.n_layers * info.n_kv_heads * info.head_dim),
            "L": info.n_layers, "KV": info.n_kv_heads, "hd": info.head_dim, "H": info.n_heads}


EVICTION = EvictionPolicy("streaming", budget=16, sinks=4)


def eviction_job(run, _facts: Facts) -> EvictionWhatIf:
    """The model re-runs with the evicted cache: an engine job (the GUI thread never runs the model)."""
    return EvictionWhatIf(run, (EVICTION,), n_steps=KV_NEW - 1)


def eviction_facts(run, result, _facts: Facts) -> Facts:
    policy = EVICTION
    _run, _rows, _keeps, effects = result
    eff = effects["streaming"]
    return {"ev_budget": policy.budget, "ev_sinks": policy.sinks, "ev_kl": eff.mean_kl,
            "ev_flips": int(eff.top1_changed.sum()), "ev_rows": int(len(eff.kl)), "ev_kept": eff.kept_fraction}


KV = Tour("kv", "The KV cache, growing and evicted", (
    Step("Growing", "Every token leaves a key and a value in every layer, for each of the {KV} KV heads "
         "({H} query heads share them: grouped-query attention). 2 x {L} layers x {KV} heads x {hd} dims x "
         "{bytes_per_value:.0f} bytes = {per_token:,.0f} bytes per token; after {n_tokens} tokens the cache holds "
         "{kv_total:,} bytes, growing by the same amount at each generated token.",
         KV_PROMPT, "kv_cache", max_new=KV_NEW, facts=kv_facts, select=lambda run, f: {"position": run.n_tokens - 1}),
    Step("Evicted", "StreamingLLM keeps only {ev_sinks} sink tokens and the most recent ones ({ev_budget} entries in "
         "all) and drops the rest. Re-running the {ev_rows} generation steps with that cache keeps {ev_kept:.0%} of "
         "the entries; the next-token distribution moves by a mean KL of {ev_kl:.3f} nats and the top token "
         "changes at {ev_flips} of {ev_rows} steps. Memory is bounded; the cost is what it forgot.",
         KV_PROMPT, "kv_cache", max_new=KV_NEW, facts=eviction_facts, job=eviction_job, tab="Eviction",
         select=lambda run, f: {"position": run.n_tokens - 1}),
))

TOURS: dict[str, Tour] = {t.key: t for t in (TOKENS, SINK, INDUCTION, PARIS, KV)}
