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
from dataclasses import replace

import numpy as np
import torch
from transformers import DynamicCache

from . import sampling
from .adapters import adapter_for
from .capture import CaptureContext, StepRecord
from .errors import Cancelled, InputError, PromptTooLongError
from .events import RunRequest, StepEvent, Token, TokenChoice, TokenKind
from .interventions import InterventionContext, first_affected
from .models import LoadedModel
from .run import Run
from .tokens import IncrementalSpans, TokenBytes, readable_piece, tokenize

TOP_K = 10  # alternatives kept per position
_STATS_CHUNK = 512  # positions per lm_head product when scoring the prompt (smaller re-reads the lm_head weight)
_PASS_ROWS = 16  # rows per softmax/top-k/rank pass: [16, vocab] stays in the CPU cache (2.4x faster)


class Session:
    """A loaded model plus the KV cache of its last run, used from one thread at a time."""

    def __init__(self, loaded: LoadedModel, store_dtype: torch.dtype = torch.float16):
        self.loaded = loaded
        self.adapter = adapter_for(loaded.info.architecture)
        self.store_dtype = store_dtype
        self.token_bytes = TokenBytes(loaded.tokenizer)
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
        return run

    @property
    def vocab(self) -> list[str]:
        """Readable text of every token id (computed once), so panels can name top-k alternatives."""
        if self._vocab is None:
            from .analysis.tokenizer_compare import readable_vocab

            self._vocab = readable_vocab(self.loaded.tokenizer)
        return self._vocab

    _vocab: list[str] | None = None

    def attach_head(self, run: Run) -> bool:
        """Give a run opened from a file saved without its unembedding this model's own, when it is the
        same model (name and shapes); also its vocabulary texts when the file has none."""
        from .runfile import attach_head

        if run.info.name != self.info.name:
            return False
        if run.vocab is None and run.info.vocab_size == self.info.vocab_size:
            run.vocab = self.vocab
        return attach_head(run, self.info, self.adapter.norm_params(self.loaded.model), self._unembed())

    def _unembed(self) -> np.ndarray | None:
        head = self.adapter.lm_head(self.loaded.model)
        return None if head is None else head.weight.detach().numpy()  # [vocab, hidden] shares memory

    def forget_cache(self) -> None:
        self._cache, self._cache_ids = None, []

    def stream(self, request: RunRequest, previous: Run | None = None,
               cancel: threading.Event | None = None) -> Iterator[StepEvent]:
        """Run a request, yielding the prefill event and one event per decoded token.

        Raises InputError for unusable prompts or settings and Cancelled when `cancel` is set.
        """
        model, info = self.loaded.model, self.info
        settings = request.settings
        sampling.validate(settings.temperature, settings.top_k, settings.top_p)
        if not request.prompt:  # whitespace alone ("\n\n", "\t", a no-break space) is real tokens: valid
            raise InputError("The prompt is empty: type some text to run.")
        if settings.max_new_tokens < 0:
            raise InputError("Max new tokens cannot be negative.")
        t0 = time.perf_counter()
        tokenized = tokenize(self.loaded.tokenizer, request.prompt, chat=request.chat, system=request.system,
                             allow_special_in_text=request.allow_special_in_text, token_bytes=self.token_bytes,
                             cancel=cancel)
        tokenize_ms = (time.perf_counter() - t0) * 1e3
        ids = tokenized.ids
        if not ids:
            raise InputError("The prompt gives no tokens with this model's tokenizer: type some other text.")
        max_new = settings.max_new_tokens if info.is_causal else 0
        if len(ids) + max_new > info.context_length:
            raise PromptTooLongError(len(ids), info.context_length, max_new=max_new)

        reuse = (self._reusable_prefix(ids, previous, request.interventions, request.skip_arrays)
                 if request.reuse_prefix and info.is_causal else 0)
        if reuse == 0:
            self.forget_cache()
            self._cache = DynamicCache(config=model.config) if info.is_causal else None
        else:
            surplus = self._cache.get_seq_length() - reuse
            if surplus > 0:
                self._cache.crop(-surplus)  # transformers 5: a negative count of tokens to drop
            self._cache_ids = self._cache_ids[:reuse]
        tokens = list(tokenized.tokens)
        tokens[:reuse] = [replace(t, kind=TokenKind.CACHED_PREFIX) for t in tokens[:reuse]]
        rng = _rng(settings.seed)
        spans = IncrementalSpans()
        eos = set(_as_list(getattr(getattr(model, "generation_config", None), "eos_token_id", None)))
        eos.update(_as_list(self.loaded.tokenizer.eos_token_id))

        edits = InterventionContext(model, self.adapter, request.interventions, info.n_heads, info.head_dim)
        with edits, CaptureContext(model, self.adapter, info, self.store_dtype, cancel,
                                   skip=request.skip_arrays) as capture, \
                torch.inference_mode():
            try:
                event = self._step(capture, ids[reuse:], reuse, step=0, tokens=tuple(tokens),
                                   previous=previous if reuse else None, tokenize_ms=tokenize_ms,
                                   settings=settings, rng=rng, want_choice=max_new > 0)
            except BaseException:  # cancelled or failed mid-forward: the cache may be half-updated
                self.forget_cache()
                raise
            self._cache_ids = list(ids)
            generated = 0
            if event.choice is None:
                yield replace(event, finish_reason="prompt_only")
                return
            yield event
            text_len = len(tokenized.text)
            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("Run cancelled.")
                token_id = event.choice.token_id
                piece = self.token_bytes(token_id) or b""
                start, end, partial = spans.add(piece)
                token = Token(id=token_id, text=readable_piece(spans.parts[-1], piece, partial),
                              start=text_len + start, end=text_len + end, kind=TokenKind.GENERATED,
                              raw_bytes=piece, partial=partial, is_special=token_id in self.token_bytes.special_ids)
                generated += 1
                finished = (token_id in eos and settings.stop_at_eos) or generated >= max_new
                position = len(self._cache_ids)
                try:
                    event = self._step(capture, [token_id], position, step=generated, tokens=(token,),
                                       previous=None, tokenize_ms=0.0, settings=settings, rng=rng,
                                       want_choice=not finished, predicted=event.choice)
                except BaseException:  # cancelled or failed mid-forward: the cache may be half-updated
                    self.forget_cache()
                    raise
                self._cache_ids.append(token_id)
                if finished:
                    reason = "eos" if token_id in eos and settings.stop_at_eos else "max_tokens"
                    yield replace(event, finish_reason=reason)
                    return
                yield event

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
              tokens: tuple[Token, ...], previous: Run | None, tokenize_ms: float, settings, rng,
              want_choice: bool, predicted: TokenChoice | None = None) -> StepEvent:
        model = self.loaded.model
        rec = capture.begin_step(len(new_ids))
        input_ids = torch.tensor([new_ids], dtype=torch.long)  # [1, n_new]
        if self.info.is_causal:
            out = model(input_ids=input_ids, cache=self._cache, use_cache=True, logits_to_keep=1)
            last_logits = out.logits[0, -1].float()  # [vocab]
        else:
            model(input_ids=input_ids)
            last_logits = None
        forward_end = time.perf_counter()
        arrays = _stack(rec)
        t_stats = time.perf_counter()
        final = rec.final_resid  # [n_new, hidden]
        if previous is not None and start > 0:
            # Reused prefix: copy its arrays and prediction stats (causal: they cannot change); score only the
            # new positions, plus the last cached one whose prediction gives the first new token's logprob.
            arrays = {k: np.concatenate([previous.prefix_array(k, start), v], axis=-2 if k != "final_resid"
                                        else 0) for k, v in arrays.items()}
            last_cached = torch.tensor(previous.prefix_array("final_resid", start)[-1:])  # [1, hidden] one row
            stats = self._prediction_stats(torch.cat([last_cached, final]), tokens[start - 1:],
                                           cancel=capture.cancel)
            stats = {k: np.concatenate([previous.prefix_array(k, start), v[1:]]) for k, v in stats.items()}
        else:
            stats = self._prediction_stats(final, tokens, predicted, last_logits, cancel=capture.cancel)
        choice = None
        t_sample = time.perf_counter()
        if want_choice and last_logits is not None:
            logits = last_logits.numpy()  # [vocab]
            token_id = sampling.sample(logits, settings.temperature, settings.top_k, settings.top_p, rng)
            lse = self._last_lse  # the prediction just scored: same logits as the last row
            choice = TokenChoice(
                token_id=token_id, logprob=float(logits[token_id]) - lse,
                rank=int((logits > logits[token_id]).sum()), entropy=float(stats["pred_entropy"][-1]),
                top_ids=tuple(int(i) for i in stats["pred_top_ids"][-1]),
                top_logprobs=tuple(float(v) for v in stats["pred_top_logprobs"][-1]),
            )
        t_end = time.perf_counter()
        timings = _timings(rec, forward_end, tokenize_ms, stats_ms=(t_sample - t_stats) * 1e3,
                           sample_ms=(t_end - t_sample) * 1e3)
        event_start = 0 if previous is not None else start
        return StepEvent(
            step=step, start=event_start, tokens=tokens, **{k: None for k in rec.skip},
            **{k: _frozen(v) for k, v in arrays.items()},
            **{k: _frozen(v) for k, v in stats.items()},
            kv_bytes_per_layer=_frozen(self._kv_bytes()), timings_ms=timings, choice=choice,
            cached_prefix=start if previous is not None else 0,
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


def _rng(seed) -> np.random.Generator:
    """The run's random generator; a seed numpy refuses (negative, not an integer) is a clear InputError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"The seed must be a whole number, 0 or more (got {seed!r}).")
    return np.random.default_rng(int(seed))


def _row_stats(logits: np.ndarray) -> tuple[float, float, np.ndarray]:
    """log-sum-exp, entropy (nats) and the top-K ids (best first) of one row of logits [vocab]."""
    m = float(logits.max())
    e = np.exp(logits - m)  # [vocab]
    total = float(e.sum())
    lse = m + float(np.log(total))
    entropy = lse - float(e @ logits) / total
    top = np.argpartition(-logits, TOP_K)[:TOP_K]
    return lse, entropy, top[np.argsort(-logits[top], kind="stable")].astype(np.int32)


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in x] if isinstance(x, (list, tuple)) else [int(x)]


def _stack(rec: StepRecord) -> dict[str, np.ndarray]:
    """The step's recorded tensors as numpy (views, no copy)."""
    rec.finish()
    out = {
        "queries": rec.queries.numpy(),  # [layers, heads, n_new, head_dim]
        "keys": rec.keys.numpy(),  # [layers, kv_heads, n_new, head_dim]
        "values": rec.values.numpy(),  # [layers, kv_heads, n_new, head_dim]
        "resid": rec.resid.numpy(),  # [layers + 1, n_new, hidden]
        "attn_out": rec.attn_out.numpy(),  # [layers, n_new, hidden]
        "mlp_out": rec.mlp_out.numpy(),  # [layers, n_new, hidden]
        "final_resid": rec.final_resid.numpy(),  # [n_new, hidden] float32
    }
    for name in rec.skip:  # not stored (memory budget)
        del out[name]
    return out


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _timings(rec: StepRecord, forward_end: float, tokenize_ms: float, stats_ms: float,
             sample_ms: float) -> tuple[tuple[str, float], ...]:
    marks = rec.marks
    out: list[tuple[str, float]] = []
    if tokenize_ms:
        out.append(("tokenize", tokenize_ms))
    if "embed_start" in marks and "embed_end" in marks:
        out.append(("embed", (marks["embed_end"] - marks["embed_start"]) * 1e3))
    out += [(f"layer.{i}", ms) for i, ms in enumerate(rec.layer_ms)]
    if "final_resid" in marks:
        out.append(("lm_head", (forward_end - marks["final_resid"]) * 1e3))
    out.append(("capture", stats_ms))
    out.append(("sample", sample_ms))
    return tuple(out)
