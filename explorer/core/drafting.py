"""The runner's speculative decode step: draft, verify in one forward pass, keep, crop the KV cache.

    pending token t + drafts d1..dk -> model([t, d1..dk]) with the KV cache, hooks capturing  (one pass)
    -> keep t, d1..da (the prefix the model agrees with; see core/speculative.py) -> crop the cache
    -> one StepEvent per kept position, exactly as plain decoding would have emitted them

The kept positions' arrays and prediction statistics come from the verification pass, so a
speculative Run holds the same arrays per token as a plain one (to float tolerance). Step timings
are the pass's (and the draft's) time shared equally among the positions it produced.

A companion of core/runner.py: it drives the Session's cache and step helpers the way `_decode_step` does
(`session` is a core.runner.Session and `gen` its _Generation, typed Any: this module must not import the runner,
which imports it).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import sampling
from .arrays import ARRAY_FIELDS
from .errors import InputError
from .events import RunRequest, StepEvent, Token, TokenChoice, TokenKind
from .speculative import DraftConfig, DraftStep, accept_greedy, accept_sampled, parse_speculative, prompt_lookup
from .step_parts import frozen as _frozen
from .step_parts import row_stats as _row_stats
from .step_parts import stack_record as _stack
from .step_parts import step_timings as _timings

if TYPE_CHECKING:
    from .capture import CaptureContext
    from .tokens import IncrementalSpans


class Drafter:
    """Draft length by transformers' "heuristic" schedule: +2 after a pass that accepts every draft, -1 after
    one that rejects some (from `config.k`, between 1 and `config.k`), so a drafter that keeps missing costs
    little and one that keeps hitting drafts long."""

    config: DraftConfig

    @property
    def k_now(self) -> int:
        return getattr(self, "_k", self.config.k)

    def update(self, step: DraftStep) -> None:
        if step.proposed:
            grow = step.accepted == len(step.proposed)
            self._k = min(self.config.k, self.k_now + 2) if grow else max(1, self.k_now - 1)


class LookupDrafter(Drafter):
    """Prompt lookup: the tokens that followed the text's last n-gram earlier on (no model)."""

    def __init__(self, config: DraftConfig, session: Any):
        self.config = config

    def propose(self, session: Any, capture: CaptureContext, ids: list[int], k: int,
                gen: Any) -> tuple[list[int], np.ndarray | None]:
        return prompt_lookup(np.asarray(ids, np.int64), k, self.config.ngram, self.config.min), None


class LayerDrafter(Drafter):
    """The model's first `n` blocks with its final norm and head, on the model's own KV cache.

    Those blocks compute exactly what the full model computes for them, so the draft extends their cache
    layers and crops them back afterwards; no weights are copied."""

    def __init__(self, config: DraftConfig, session: Any):
        from .adapters import LlamaAdapter

        base = getattr(session.loaded.model, "model", None)
        if not isinstance(session.adapter, LlamaAdapter) or not isinstance(getattr(base, "layers", None),
                                                                              torch.nn.ModuleList):
            raise InputError(f"The layers draft needs a Llama-like model; {session.info.name} is not. "
                             "Use speculative=\"prompt-lookup\".")
        total = session.info.n_layers
        n = config.n or max(1, total * 3 // 4)  # SmolLM2 was not trained to exit early: half its blocks agree ~never
        if not 1 <= n < total:
            raise InputError(f"The layers draft runs the first n blocks of {total}: n must be from 1 to {total - 1}, "
                             f"not {n}.")
        self.config, self.n, self.base = config, n, base

    def propose(self, session: Any, capture: CaptureContext, ids: list[int], k: int,
                gen: Any) -> tuple[list[int], np.ndarray | None]:
        capture.record = None  # the hooks ignore the draft's passes
        model, cache, config = session.loaded.model, session._cache, self.base.config
        settings, full = gen.settings, config.num_hidden_layers
        drafts, q_rows, fed, token = [], [], 0, ids[-1]
        try:
            config.num_hidden_layers = self.n  # the decoder runs self.layers[: config.num_hidden_layers]
            for _ in range(k):
                out = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True, logits_to_keep=1)
                fed += 1
                row = out.logits[0, -1].float().numpy()  # [vocab]
                if settings.temperature == 0:
                    token = int(np.argmax(row))
                else:
                    probs = sampling.filter_logits(row, settings.temperature, settings.top_k, settings.top_p).probs
                    q_rows.append(probs)  # [vocab]
                    token = int(gen.rng.choice(probs.shape[0], p=probs))
                drafts.append(token)
                if token in gen.eos and settings.stop_at_eos:
                    break
        finally:
            config.num_hidden_layers = full
            for layer in cache.layers[: self.n]:
                layer.crop(-fed)  # transformers 5: a negative count of positions to drop
        return drafts, (np.stack(q_rows) if q_rows else None)


DRAFTER_CLASSES = {"prompt-lookup": LookupDrafter, "layers": LayerDrafter}


def make_drafter(request: RunRequest, session: Any):
    """The drafter a request asks for (None: plain decoding); InputError when this model cannot do it."""
    config = parse_speculative(request.speculative)
    if config is None:
        return None
    if not session.info.is_causal:
        raise InputError(f"{session.info.name} is an encoder: it generates nothing, so there is nothing to speculate.")
    return DRAFTER_CLASSES[config.method](config, session)


def speculative_steps(session: Any, capture: CaptureContext, token: Token, predicted: TokenChoice,
                      gen: Any, drafter, spans: IncrementalSpans, text_len: int) -> list[StepEvent]:
    """Feed the pending `token` and whatever the drafter proposes after it: the events of every kept position
    (the last carries the DraftStep)."""
    start = len(session._cache_ids)
    budget = gen.max_new - gen.generated - 1  # positions that may follow the pending token
    ends_here = token.id in gen.eos and gen.settings.stop_at_eos
    t0 = time.perf_counter()
    drafts, q_rows = [], None
    if budget > 0 and not ends_here:
        drafts, q_rows = session._guarded(drafter.propose, session, capture, [*session._cache_ids, token.id],
                                          min(budget, drafter.k_now), gen)
    draft_ms = (time.perf_counter() - t0) * 1e3
    if not drafts:
        event = session._decode_step(capture, token, predicted, gen)
        verify_ms = sum(ms for _s, ms in event.timings_ms)
        step = DraftStep(position=start + 1, proposed=(), accepted=0,
                         target_token=None if event.choice is None else event.choice.token_id,
                         draft_ms=draft_ms, verify_ms=verify_ms)
        return [replace(event, timings_ms=(*event.timings_ms, ("draft", draft_ms)), draft=step)]
    events = session._guarded(_verify, session, capture, token, predicted, gen, drafts, q_rows, spans, text_len,
                              start, draft_ms)
    drafter.update(events[-1].draft)
    return events


def _verify(session: Any, capture: CaptureContext, token: Token, predicted: TokenChoice, gen: Any,
            drafts: list[int], q_rows: np.ndarray | None, spans: IncrementalSpans, text_len: int, start: int,
            draft_ms: float) -> list[StepEvent]:
    ids = [token.id, *drafts]
    rec = capture.begin_step(len(ids))
    t_forward = time.perf_counter()
    out = session.loaded.model(input_ids=torch.tensor([ids]), cache=session._cache, use_cache=True,
                               logits_to_keep=len(ids))
    rows = out.logits[0].float().numpy()  # [k + 1, vocab]: row j predicts position j + 1
    forward_end = time.perf_counter()
    arrays = _stack(rec)
    t_stats = time.perf_counter()
    s = gen.settings
    if s.temperature == 0:
        accepted = accept_greedy(rows, drafts)
        own = sampling.sample(rows[accepted], 0.0, s.top_k, s.top_p, gen.rng)
    else:
        p_rows = np.stack([sampling.filter_logits(r, s.temperature, s.top_k, s.top_p).probs for r in rows])
        accepted, own = accept_sampled(p_rows, drafts, q_rows, gen.rng)
    row_stats = [_row_stats(r) for r in rows[: accepted + 1]]  # (lse, entropy, top ids) per kept row
    tokens, choices, reason = [token], [], None
    for j in range(accepted + 1):  # feed the kept tokens in order, as plain decoding would
        gen.generated += 1
        reason = gen.finish_reason(tokens[j].id)
        if reason is not None:
            break
        choices.append(_choice(rows[j], drafts[j] if j < accepted else own, row_stats[j]))
        if j < accepted:
            tokens.append(replace(session._generated_token(choices[-1], spans, text_len), kind=TokenKind.SPECULATIVE))
    kept = len(tokens) if reason is None else len(choices) + 1
    tokens = tokens[:kept]
    if len(ids) > kept:
        session._cache.crop(-(len(ids) - kept))  # drop the rejected drafts' keys/values (a negative count)
    session._cache_ids.extend(ids[:kept])
    t_end = time.perf_counter()
    verify_ms = (t_end - t_forward) * 1e3
    timings = (*_timings(rec, forward_end, 0.0, stats_ms=(t_end - t_stats) * 1e3, sample_ms=0.0), ("draft", draft_ms))
    shared = tuple((name, ms / kept) for name, ms in timings)
    kv_per_position = session._kv_bytes() // (start + kept)  # [layers] every position adds the same bytes
    stats = _stats(rows, row_stats, predicted, choices, kept)
    step = DraftStep(position=start + 1, proposed=tuple(drafts), accepted=kept - 1,
                     target_token=own if reason is None else None, draft_ms=draft_ms, verify_ms=verify_ms)
    events = []
    for j in range(kept):
        last = j == kept - 1
        chunk = {k: _frozen(_position(v, k, j)) for k, v in (arrays | stats).items()}
        events.append(StepEvent(
            step=gen.generated - kept + 1 + j, start=start + j, tokens=(tokens[j],),
            arrays={**{k: None for k in rec.skip}, **chunk},
            kv_bytes_per_layer=_frozen(kv_per_position * (start + j + 1)), timings_ms=shared,
            choice=choices[j] if j < len(choices) else None,
            finish_reason=reason if last else None, draft=step if last else None,
        ))
    return events


def _choice(row: np.ndarray, token_id: int, stats: tuple[float, float, np.ndarray]) -> TokenChoice:
    """The choice of `token_id` from one row of logits [vocab], as Session._sample describes it."""
    lse, entropy, top = stats
    return TokenChoice(token_id=token_id, logprob=float(row[token_id]) - lse, rank=int((row > row[token_id]).sum()),
                       entropy=entropy, top_ids=tuple(int(i) for i in top),
                       top_logprobs=tuple(float(row[i]) - lse for i in top))


def _stats(rows: np.ndarray, row_stats: list, predicted: TokenChoice, choices: list[TokenChoice],
           kept: int) -> dict[str, np.ndarray]:
    """core/arrays.py's prediction statistics of the kept positions (each token scored by the row before it)."""
    tops = np.stack([row_stats[j][2] for j in range(kept)]).astype(np.int32)  # [kept, K]
    lses = np.array([row_stats[j][0] for j in range(kept)], np.float64)  # [kept]
    return {
        "pred_entropy": np.array([row_stats[j][1] for j in range(kept)], np.float32),
        "pred_top_ids": tops,
        "pred_top_logprobs": (np.take_along_axis(rows[:kept], tops, axis=1) - lses[:, None]).astype(np.float32),
        "token_logprob": np.array([predicted.logprob] + [c.logprob for c in choices[: kept - 1]], np.float32),
        "token_rank": np.array([predicted.rank] + [c.rank for c in choices[: kept - 1]], np.int32),
    }


def _position(a: np.ndarray, name: str, j: int) -> np.ndarray:
    """Position j of an array of the verification pass (its position axis from core/arrays.py)."""
    axis = ARRAY_FIELDS[name]
    index = [slice(None)] * a.ndim
    index[axis] = slice(j, j + 1)
    return a[tuple(index)]
