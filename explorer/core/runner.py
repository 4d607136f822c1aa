"""The instrumented runner: prefill, then a decode loop with a DynamicCache, streaming StepEvents.

    tokens -> embed -> layers (captured) -> final norm + lm_head -> sample -> (feed back)

Every event holds the new positions' captured arrays; the last event has `finish_reason`.
A `Session` keeps the model's cache between runs so a prompt that extends the previous one
reuses its prefix (those tokens become `cached-prefix` and are not recomputed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from transformers import DynamicCache

from . import sampling
from .adapters import adapter_for
from .arrays import ARRAY_FIELDS, TOP_K
from .capture import CaptureContext
from .drafting import make_drafter, speculative_steps
from .errors import Cancelled, PromptTooLongError
from .events import GenerationSettings, RunRequest, StepEvent, Token, TokenChoice, TokenKind
from .interventions import InterventionContext, first_affected
from .models import LoadedModel
from .prompt import Prepared, check_request, new_positions, prepare
from .run import Run
from .step_parts import frozen as _frozen
from .step_parts import row_stats as _row_stats
from .step_parts import stack_record as _stack
from .step_parts import step_timings as _timings
from .token_kinds import tags_for
from .tokens import IncrementalSpans, TokenBytes, readable_piece
from .vocab import readable_vocab

_STATS_CHUNK = 512  # positions per lm_head product when scoring the prompt (smaller re-reads the lm_head weight)
_PASS_ROWS = 16  # rows per softmax/top-k/rank pass: [16, vocab] stays in the CPU cache (2.4x faster)


class Session:
    """A loaded model plus the KV cache of its last run, used from one thread at a time."""

    def __init__(self, loaded: LoadedModel, store_dtype: torch.dtype = torch.float16):
        self.loaded = loaded
        self.adapter = adapter_for(loaded.info.architecture)
        self.store_dtype = store_dtype
        self.token_bytes = TokenBytes(loaded.tokenizer)
        self.kind_tags = tags_for(loaded.tokenizer)  # tool-call / reasoning tags (core/token_kinds.py)
        self._cache: DynamicCache | None = None
        self._cache_ids: list[int] = []  # token ids whose keys/values are in _cache

    @property
    def info(self):
        return self.loaded.info

    def new_run(self, request: RunRequest) -> Run:
        run = Run.start(self.info, request, self.adapter.norm_params(self.loaded.model), self._unembed())
        cores = [self.adapter.attention_core(layer) for layer in self.adapter.layers(self.loaded.model)]
        run.scaling = np.array([float(getattr(c, "scaling", self.info.head_dim ** -0.5)) for c in cores], np.float32)
        run.vocab = self.vocab
        run.kind_tags = self.kind_tags
        return run

    @property
    def vocab(self) -> list[str]:
        """Readable text of every token id (computed once), so panels can name top-k alternatives."""
        if self._vocab is None:
            self._vocab = readable_vocab(self.loaded.tokenizer)
        return self._vocab

    _vocab: list[str] | None = None

    def attach_head(self, run: Run) -> bool:
        """Give a run opened from a file saved without its unembedding this model's own, when it is the
        same model (name and shapes); also its vocabulary texts when the file has none, or only those of the ids
        the run names (runfile.PartialVocab)."""
        from .runfile import attach_head

        if run.info.name != self.info.name:
            return False
        if (run.vocab is None or getattr(run.vocab, "partial", False)) and run.info.vocab_size == self.info.vocab_size:
            run.vocab = self.vocab
        return attach_head(run, self.info, self.adapter.norm_params(self.loaded.model), self._unembed())

    def _unembed(self) -> np.ndarray | None:
        """[vocab, hidden] the lm_head weight (shares its memory); one object per session, so it crosses to
        the window's process once (core/transport.py) however many runs refer to it."""
        if self._unembed_view is None:
            head = self.adapter.lm_head(self.loaded.model)
            self._unembed_view = None if head is None else head.weight.detach().numpy()  # [vocab, hidden]
        return self._unembed_view

    _unembed_view: np.ndarray | None = None

    def forget_cache(self) -> None:
        self._cache, self._cache_ids = None, []

    def prepare(self, request: RunRequest, budget: int | None = None) -> Prepared:
        """Check and tokenize a request (InputError, PromptTooLongError); with a `budget`, plan its capture.

        The session keeps the result, so a `stream` of the same prompt does not tokenize it again.
        """
        prepared = prepare(self.loaded.tokenizer, self.info, request, self.token_bytes, budget)
        self._prepared = prepared
        return prepared

    _prepared: Prepared | None = None

    def stream(self, request: RunRequest, previous: Run | None = None,
               cancel: threading.Event | None = None) -> Iterator[StepEvent]:
        """Run a request, yielding the prefill event and one event per decoded token.

        prepare (checked, tokenized once) -> prefill -> decode steps (each: next token, forward, sample)

        Raises InputError for unusable prompts or settings and Cancelled when `cancel` is set.
        """
        prompt = self._prepared_prompt(request, cancel)
        drafter = make_drafter(request, self)  # None: plain decoding
        reuse = self._keep_cache_for(prompt.ids, previous, request)
        gen = _Generation(request.settings, new_positions(self.info, request), self._eos_ids())
        edits = InterventionContext(self.loaded.model, self.adapter, request.interventions, self.info.n_heads,
                                    self.info.head_dim)
        with edits, CaptureContext(self.loaded.model, self.adapter, self.info, self.store_dtype, cancel,
                                   skip=request.skip_arrays) as capture, torch.inference_mode():
            event = self._prefill(capture, prompt, reuse, previous if reuse else None, gen)
            if event.choice is None:
                yield replace(event, finish_reason="prompt_only", routing=self._routing(prompt.ids, capture))
                return
            yield event
            spans, text_len = IncrementalSpans(), len(prompt.tokenized.text)
            while not event.finish_reason:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Run cancelled.")
                token = self._generated_token(event.choice, spans, text_len)
                if drafter is None:
                    event = self._decode_step(capture, token, event.choice, gen)
                else:  # one verification pass: the events of every position it kept
                    *kept, event = speculative_steps(self, capture, token, event.choice, gen, drafter, spans, text_len)
                    yield from kept
                if event.finish_reason:  # a lab model's learned routing rides on the last event
                    event = replace(event, routing=self._routing(self._cache_ids, capture))
                yield event

    def _prepared_prompt(self, request: RunRequest, cancel: threading.Event | None = None) -> Prepared:
        """The request checked and tokenized: the one `prepare` (or `fit_request`) made, else a new one."""
        prepared = self._prepared
        self._prepared = None  # used once: a later run tokenizes afresh
        if prepared is not None and prepared.matches(request):
            check_request(request)  # settings may differ from the prepared request's
            if len(prepared.ids) + new_positions(self.info, request) > self.info.context_length:
                raise PromptTooLongError(len(prepared.ids), self.info.context_length,
                                         max_new=new_positions(self.info, request))
            return prepared
        return prepare(self.loaded.tokenizer, self.info, request, self.token_bytes, cancel=cancel)

    def _keep_cache_for(self, ids: list[int], previous: Run | None, request: RunRequest) -> int:
        """Positions of the KV cache this run reuses; the cache is trimmed to them (or started afresh)."""
        reuse = (self._reusable_prefix(ids, previous, request.interventions, request.skip_arrays)
                 if request.reuse_prefix and self.info.is_causal else 0)
        if reuse == 0:
            self.forget_cache()
            self._cache = DynamicCache(config=self.loaded.model.config) if self.info.is_causal else None
        else:
            surplus = self._cache.get_seq_length() - reuse
            if surplus > 0:
                self._cache.crop(-surplus)  # transformers 5: a negative count of tokens to drop
            self._cache_ids = self._cache_ids[:reuse]
        return reuse

    def _eos_ids(self) -> set[int]:
        eos = set(_as_list(getattr(getattr(self.loaded.model, "generation_config", None), "eos_token_id", None)))
        eos.update(_as_list(self.loaded.tokenizer.eos_token_id))
        return eos

    def _prefill(self, capture: CaptureContext, prompt: Prepared, reuse: int, previous: Run | None,
                 gen: _Generation) -> StepEvent:
        """The prompt's forward pass (only the positions after a reused prefix), its stats and first choice."""
        tokens = list(prompt.tokenized.tokens)
        tokens[:reuse] = [replace(t, kind=TokenKind.CACHED_PREFIX) for t in tokens[:reuse]]
        ids = prompt.ids
        event = self._guarded(self._step, capture, ids[reuse:], reuse, step=0, tokens=tuple(tokens),
                              previous=previous, tokenize_ms=prompt.tokenize_ms, gen=gen,
                              want_choice=gen.max_new > 0)
        self._cache_ids = list(ids)
        return event

    def _generated_token(self, choice: TokenChoice, spans: IncrementalSpans, text_len: int) -> Token:
        """The sampled token with its span in the growing text (a partial byte piece has an empty span)."""
        token_id = choice.token_id
        piece = self.token_bytes(token_id) or b""
        start, end, partial = spans.add(piece)
        return Token(id=token_id, text=readable_piece(spans.parts[-1], piece, partial),
                     start=text_len + start, end=text_len + end, kind=TokenKind.GENERATED,
                     raw_bytes=piece, partial=partial, is_special=token_id in self.token_bytes.special_ids)

    def _decode_step(self, capture: CaptureContext, token: Token, predicted: TokenChoice,
                     gen: _Generation) -> StepEvent:
        """Feed one sampled token; the event carries the next choice, or the finish reason."""
        gen.generated += 1
        reason = gen.finish_reason(token.id)
        event = self._guarded(self._step, capture, [token.id], len(self._cache_ids), step=gen.generated,
                              tokens=(token,), previous=None, tokenize_ms=0.0, gen=gen,
                              want_choice=reason is None, predicted=predicted)
        self._cache_ids.append(token.id)
        return event if reason is None else replace(event, finish_reason=reason)

    def _guarded(self, forward_step, *args, **kwargs) -> StepEvent:
        """Run a forward step; if it is cancelled or fails midway the cache may be half-updated: drop it."""
        try:
            return forward_step(*args, **kwargs)
        except BaseException:
            self.forget_cache()
            raise

    def _routing(self, ids: list[int], capture: CaptureContext) -> dict | None:
        """A model that learns its depth routing (the Depth lab's) reports it for the finished run's tokens
        (one more forward pass, which the capture hooks ignore)."""
        routing = getattr(self.loaded.model, "depth_routing", None)
        if routing is None:
            return None
        capture.record = None
        return routing(ids)

    def _reusable_prefix(self, ids: list[int], previous: Run | None, interventions: tuple = (),
                         skip: tuple[str, ...] = ()) -> int:
        if self._cache is None or previous is None or previous.n_tokens < len(self._cache_ids):
            return 0
        if set(previous.request.skip_arrays) - set(skip):  # the prefix lacks arrays this run stores
            return 0
        if list(previous.token_ids[: len(self._cache_ids)]) != self._cache_ids:
            return 0
        common = 0
        for a, b in zip(ids, self._cache_ids, strict=False):
            if a != b:
                break
            common += 1
        differs = first_affected(tuple(previous.request.interventions), tuple(interventions))
        if differs is not None:  # the cache was computed under other interventions: reuse only what they left alone
            common = min(common, differs)
        return min(common, len(ids) - 1)  # at least one new token must run to get a prediction

    def _step(self, capture: CaptureContext, new_ids: list[int], start: int, *, step: int,
              tokens: tuple[Token, ...], previous: Run | None, tokenize_ms: float, gen: _Generation,
              want_choice: bool, predicted: TokenChoice | None = None) -> StepEvent:
        """One forward pass over `new_ids`: the captured arrays, the prediction stats and (maybe) a choice."""
        rec = capture.begin_step(len(new_ids))
        last_logits = self._forward(new_ids)  # [vocab] (None: an encoder)
        forward_end = time.perf_counter()
        arrays = _stack(rec)
        t_stats = time.perf_counter()
        final = rec.final_resid  # [n_new, hidden]
        if previous is not None and start > 0:
            # Reused prefix: copy its arrays and prediction stats (causal: they cannot change); score only the
            # new positions, plus the last cached one whose prediction gives the first new token's logprob.
            arrays = {k: np.concatenate([previous.prefix_array(k, start), v], axis=ARRAY_FIELDS[k])
                      for k, v in arrays.items()}
            last_cached = torch.tensor(previous.prefix_array("final_resid", start)[-1:])  # [1, hidden] one row
            stats = self._prediction_stats(torch.cat([last_cached, final]), tokens[start - 1:],
                                           cancel=capture.cancel)
            stats = {k: np.concatenate([previous.prefix_array(k, start), v[1:]]) for k, v in stats.items()}
        else:
            stats = self._prediction_stats(final, tokens, predicted, last_logits, cancel=capture.cancel)
        t_sample = time.perf_counter()
        choice = self._sample(last_logits.numpy(), stats, gen) if want_choice and last_logits is not None else None
        t_end = time.perf_counter()
        timings = _timings(rec, forward_end, tokenize_ms, stats_ms=(t_sample - t_stats) * 1e3,
                           sample_ms=(t_end - t_sample) * 1e3)
        event_start = 0 if previous is not None else start
        return StepEvent(
            step=step, start=event_start, tokens=tokens,
            arrays={**{k: None for k in rec.skip}, **{k: _frozen(v) for k, v in (arrays | stats).items()}},
            kv_bytes_per_layer=_frozen(self._kv_bytes()), timings_ms=timings, choice=choice,
            cached_prefix=start if previous is not None else 0,
        )

    def _forward(self, new_ids: list[int]) -> torch.Tensor | None:
        """The model on the new positions (the hooks capture); the last position's logits [vocab] float32."""
        input_ids = torch.tensor([new_ids], dtype=torch.long)  # [1, n_new]
        if not self.info.is_causal:
            self.loaded.model(input_ids=input_ids)
            return None
        out = self.loaded.model(input_ids=input_ids, cache=self._cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float()  # [vocab]

    def _sample(self, logits: np.ndarray, stats: dict[str, np.ndarray], gen: _Generation) -> TokenChoice:
        """Draw the next token from the last position's `logits` [vocab], described by its stats."""
        s = gen.settings
        token_id = sampling.sample(logits, s.temperature, s.top_k, s.top_p, gen.rng)
        lse = self._last_lse  # the prediction just scored: same logits as the last row
        return TokenChoice(
            token_id=token_id, logprob=float(logits[token_id]) - lse,
            rank=int((logits > logits[token_id]).sum()), entropy=float(stats["pred_entropy"][-1]),
            top_ids=tuple(int(i) for i in stats["pred_top_ids"][-1]),
            top_logprobs=tuple(float(v) for v in stats["pred_top_logprobs"][-1]),
        )

    def _prediction_stats(self, final: torch.Tensor, tokens: tuple[Token, ...],
                          predicted: TokenChoice | None = None,
                          last_logits: torch.Tensor | None = None,
                          cancel: threading.Event | None = None) -> dict[str, np.ndarray]:
        """Entropy and top-k of each position's prediction, and each token's logprob and rank.

        `cancel` is checked before every block of rows (Stop right after a long prefill's last layer must not
        wait for the whole vocabulary scoring): raises Cancelled.

        A decode step reuses the model's own logits (`last_logits`) and takes its token's logprob and
        rank from the choice that sampled it (`predicted`); a prefill scores its positions in chunks
        (the lm_head work a plain forward does for all positions, without a [n, vocab] tensor).
        """
        n = final.shape[0]
        out = {
            "pred_entropy": np.full(n, np.nan, np.float32), "pred_top_ids": np.zeros((n, TOP_K), np.int32),
            "pred_top_logprobs": np.full((n, TOP_K), np.nan, np.float32),
            "token_logprob": np.full(n, np.nan, np.float32), "token_rank": np.full(n, -1, np.int32),
        }
        norm, head = self.adapter.final_norm(self.loaded.model), self.adapter.lm_head(self.loaded.model)
        if head is None:
            return out
        if predicted is not None:  # the first token was sampled last step from the prediction it was scored by
            out["token_logprob"][0] = predicted.logprob
            out["token_rank"][0] = predicted.rank
        if n == 1 and last_logits is not None:  # a decode step: numpy on one row (no thread-pool round trips)
            row = last_logits.float().numpy()  # [vocab]
            lse, entropy, top = _row_stats(row)
            out["pred_entropy"][0] = entropy
            out["pred_top_ids"][0] = top
            out["pred_top_logprobs"][0] = row[top] - lse
            self._last_lse = lse
            return out
        ids = torch.tensor([t.id for t in tokens])  # [n]
        for chunk_lo in range(0, n, _STATS_CHUNK):
            _check_cancel(cancel)
            block = head(norm(final[chunk_lo:chunk_lo + _STATS_CHUNK])).float()  # [chunk, vocab]
            # the passes over the vocabulary run on small row blocks that stay in the CPU cache
            for sub in range(0, block.shape[0], _PASS_ROWS):
                _check_cancel(cancel)
                lo = chunk_lo + sub
                logits = block[sub:sub + _PASS_ROWS]  # [rows, vocab]
                hi = lo + logits.shape[0]
                top = logits.topk(TOP_K, dim=-1)
                peak = top.values[:, 0]  # [rows] the max logit, for a stable log-sum-exp
                weights = (logits - peak[:, None]).exp_()  # [rows, vocab] unnormalised probabilities
                total = weights.sum(-1)  # [rows]
                lse = peak + total.log()  # [rows]
                # entropy = lse - E_p[logit]; vecdot is ~16x faster than einsum/bmm here
                out["pred_entropy"][lo:hi] = (lse - torch.linalg.vecdot(weights, logits) / total).numpy()
                out["pred_top_ids"][lo:hi] = top.indices.numpy()
                out["pred_top_logprobs"][lo:hi] = (top.values - lse[:, None]).numpy()
                nxt = ids[lo + 1: hi + 1]  # tokens predicted by positions lo .. hi-1
                m = nxt.shape[0]
                if m:
                    chosen = logits[:m].gather(1, nxt[:, None])  # [m, 1]
                    out["token_logprob"][lo + 1: lo + 1 + m] = (chosen[:, 0] - lse[:m]).numpy()
                    out["token_rank"][lo + 1: lo + 1 + m] = (logits[:m] > chosen).sum(-1).numpy()
        self._last_lse = float(lse[-1])
        return out

    _last_lse = 0.0  # log-sum-exp of the last scored prediction (the one a choice is sampled from)

    def _kv_bytes(self) -> np.ndarray:
        n = self.info.n_layers
        if self._cache is None:
            return np.zeros(n, np.int64)
        sizes = []
        for layer in self._cache.layers[:n]:
            k, v = layer.keys, layer.values
            sizes.append(0 if k is None else k.numel() * k.element_size() + v.numel() * v.element_size())
        return np.asarray(sizes, np.int64)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("Run cancelled.")



@dataclass
class _Generation:
    """A run's decoding state: settings, random generator, stop tokens and tokens generated so far."""

    settings: GenerationSettings
    max_new: int
    eos: set[int]
    generated: int = 0
    rng: np.random.Generator = field(init=False)  # seeded from the settings

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(int(self.settings.seed))  # checked by prompt.check_request

    def finish_reason(self, token_id: int) -> str | None:
        """Why the run stops after feeding `token_id` (None: it goes on)."""
        if token_id in self.eos and self.settings.stop_at_eos:
            return "eos"
        return "max_tokens" if self.generated >= self.max_new else None



def _as_list(x) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in x] if isinstance(x, (list, tuple)) else [int(x)]
