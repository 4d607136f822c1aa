"""The Run record: everything captured for one prompt, grown step by step from StepEvents.

Attention weights are not stored; `attention(layer, head)` recomputes the map from the
captured post-RoPE queries and keys: softmax(q k^T * scaling + causal mask).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .adapters import NormParams
from .arrays import ACTIVATIONS, ARRAY_FIELDS
from .events import RunRequest, StepEvent, Token
from .models import ModelInfo
from .numeric import attention_rows
from .runfile_write import save_run
from .sampling import log_softmax
from .speculative import DraftStep
from .token_kinds import DEFAULT_TAGS, mark

__all__ = ["ARRAY_FIELDS", "NotCaptured", "Run"]  # ARRAY_FIELDS: name -> position axis (core/arrays.py)


class NotCaptured(KeyError):  # noqa: N818 - a KeyError, as before, with a sentence
    """The run did not store this array (left out to fit the capture memory budget)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return (f"This run did not store '{self.name}' (left out to fit the capture memory budget), so this "
                "view cannot be drawn. Raise the budget (Run > Capture memory budget) and run again.")


@dataclass
class Run:
    info: ModelInfo
    request: RunRequest
    norm: NormParams | None = None  # the final norm, as numpy
    unembed: np.ndarray | None = None  # [vocab, hidden] the lm_head weight (shared, not copied)
    text: str = ""
    tokens: list[Token] = field(default_factory=list)
    steps: list[StepEvent] = field(default_factory=list)
    n_prompt: int = 0
    finish_reason: str | None = None
    scaling: np.ndarray | None = None  # [layers] attention scaling per layer
    vocab: list[str] | None = None  # readable text of every token id (set by Session.new_run; None when loaded)
    lens: Any = None  # analysis.depth.LensColumns over every depth and position, from capture(..., lens=...)
    routing: dict | None = None  # learned depth routing of a Depth lab model (explorer.lab.routing.record)
    kind_tags: tuple = DEFAULT_TAGS  # tag pairs that mark tool calls and reasoning in model text (core/token_kinds)
    drafts: list[DraftStep] = field(default_factory=list)  # speculative runs: one per verification pass
    _buffers: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _n: int = 0
    _planned: int | None = field(default=None, repr=False)  # positions after the first step (None: max_new_tokens)
    _cache: dict = field(default_factory=dict, repr=False)
    _kind_scan: int = field(default=0, repr=False)  # where core/token_kinds.mark resumes (spans before: final)

    @classmethod
    def start(cls, info: ModelInfo, request: RunRequest, norm: NormParams | None,
              unembed: np.ndarray | None, planned: int | None = None) -> Run:
        """`planned`: positions that will follow the first step (default: the request's max_new_tokens)."""
        return cls(info=info, request=request, norm=norm, unembed=unembed, _planned=planned)

    # --- growth -------------------------------------------------------------------------------
    def apply(self, event: StepEvent) -> None:
        """Append a step's positions (a prefill that reuses a prefix replaces everything)."""
        if event.start != self._n:
            raise ValueError(f"step {event.step} starts at {event.start}, run has {self._n} positions")
        for name, axis in ARRAY_FIELDS.items():
            chunk = event.arrays[name]
            if chunk is not None:  # None: not stored (RunRequest.skip_arrays)
                self._append(name, chunk, axis)
        self._n += event.n_new
        self.tokens.extend(event.tokens)
        # spans tile the text and a non-empty span's token text is exactly that span
        self.text += "".join(t.text for t in event.tokens if t.end > t.start)
        if event.is_prefill:
            self.n_prompt = event.n_new
        self._kind_scan = mark(self.tokens, self.text, self.kind_tags, len(self.tokens) - event.n_new,
                               0 if event.is_prefill else self.n_prompt,
                               0 if event.is_prefill else self._kind_scan)  # tool calls, reasoning in model text
        self.steps.append(event)
        if event.routing is not None:
            self.routing = event.routing
        if event.draft is not None:
            self.drafts.append(event.draft)
        if event.finish_reason:
            self.finish_reason = event.finish_reason
        self._cache.clear()

    def _room(self) -> int:
        """Positions planned after the first step: its buffers are made this much longer, so they never double."""
        if self._planned is not None:
            return self._planned
        return self.request.settings.max_new_tokens if self.info.is_causal else 0

    def with_room(self, event: StepEvent) -> StepEvent:
        """`event`, the first step of this (still empty) run, with each array copied into a buffer that has room
        for the positions planned after it; `apply` then keeps those buffers instead of copying into new ones.
        The engine client's reader thread calls it: a 1,000-token prefill's arrays are hundreds of MB, and
        copying them on the GUI thread blocked it for 170-350 ms."""
        planned = self._room()
        if self._buffers or self._n or planned == 0:
            return event
        arrays = dict(event.arrays)
        for name, axis in ARRAY_FIELDS.items():
            chunk = arrays.get(name)
            if chunk is None:
                continue
            shape = list(chunk.shape)
            shape[axis] += planned
            buf = np.empty(shape, chunk.dtype)  # [... n_new + planned ...]
            view = _view(buf, axis, 0, chunk.shape[axis])  # [... n_new ...]
            view[...] = chunk
            view.flags.writeable = False  # (a step's arrays are read-only; the run writes later steps after them)
            arrays[name] = view
        return replace(event, arrays=arrays)

    def _append(self, name: str, chunk: np.ndarray, axis: int) -> None:
        buf = self._buffers.get(name)
        n_new = chunk.shape[axis]
        if buf is None:  # room for the prompt and the planned generation, so buffers never double
            planned = self._room()
            if planned and _has_room(chunk, axis, n_new + planned):  # made by `with_room`: keep its buffer
                self._buffers[name] = chunk.base
                return
            if planned == 0 and not chunk.flags.writeable:
                # nothing will be appended: keep the event's read-only array itself (a later append, if any,
                # grows into a new buffer and never writes into it)
                self._buffers[name] = chunk
                return
            shape = list(chunk.shape)
            shape[axis] = max(1, n_new + planned)
            buf = np.empty(shape, chunk.dtype)
            self._buffers[name] = buf
        if chunk.dtype != buf.dtype and np.result_type(buf.dtype, chunk.dtype) != buf.dtype:
            # a step stored this array wider (float16 overflow, see core/capture.py): widen the whole buffer
            buf = buf.astype(np.result_type(buf.dtype, chunk.dtype))
            self._buffers[name] = buf
        cap = buf.shape[axis]
        if self._n + n_new > cap:
            shape = list(buf.shape)
            shape[axis] = max(cap * 2, self._n + n_new)
            grown = np.empty(shape, buf.dtype)
            _view(grown, axis, 0, self._n)[...] = _view(buf, axis, 0, self._n)
            self._buffers[name] = buf = grown
        _view(buf, axis, self._n, self._n + n_new)[...] = chunk

    def array(self, name: str) -> np.ndarray:
        """A captured array over all positions so far (a read-only view)."""
        buf = self._buffers.get(name)
        if buf is None:
            if name in ARRAY_FIELDS:
                raise NotCaptured(name)
            raise KeyError(name)
        view = _view(buf, ARRAY_FIELDS[name], 0, self._n)
        view.flags.writeable = False
        return view

    @property
    def widened(self) -> tuple[str, ...]:
        """Arrays stored in float32 because a value overflowed float16 (|x| > 65504); see core/capture.py.

        Read from the dtypes, so it survives a save and load: an array wider than the narrowest
        stored activation array.
        """
        names = [k for k in ACTIVATIONS if k in self._buffers]
        if not names:
            return ()
        narrow = min(self._buffers[k].dtype.itemsize for k in names)
        return tuple(k for k in names if self._buffers[k].dtype.itemsize > narrow)

    def has_array(self, name: str) -> bool:
        """Whether the run stored this array (see RunRequest.skip_arrays)."""
        return name in self._buffers

    def prefix_array(self, name: str, n: int) -> np.ndarray:
        """The first `n` positions of a captured array (a view: callers copy by concatenating)."""
        return _view(self._buffers[name], ARRAY_FIELDS[name], 0, n)

    # --- public API -----------------------------------------------------------------------------
    @property
    def retrieved(self) -> tuple:
        """The chunks retrieval inserted into the prompt (core.retrieval.RetrievedChunk: source, text, score)."""
        return self.request.retrieval.chunks if self.request.retrieval is not None else ()

    @property
    def n_tokens(self) -> int:
        return self._n

    @property
    def token_ids(self) -> np.ndarray:
        return np.array([t.id for t in self.tokens], dtype=np.int64)

    @property
    def n_generated(self) -> int:
        return self._n - self.n_prompt if self.steps else 0  # every position after the prompt was generated

    @property
    def generated_text(self) -> str:
        return self.text[self.tokens[self.n_prompt].start:] if self._n > self.n_prompt else ""

    def attention(self, layer: int, head: int, rows: slice | None = None) -> np.ndarray:
        """[N, N] float32 attention of block `layer`'s head `head` (blocks from 0; core/naming.py): query rows
        over key columns (or only `rows`)."""
        q = self.array("queries")[layer, head]  # [N, head_dim]
        k = self.array("keys")[layer, head // self.info.group_size]  # [N, head_dim]
        return attention_rows(q, k, self.layer_scaling(layer), rows or slice(0, self._n), self.info.is_causal)

    def layer_scaling(self, layer: int) -> float:
        if self.scaling is not None:
            return float(self.scaling[layer])
        return self.info.head_dim ** -0.5

    def hidden_states(self, depth: int | None = None, *, layer: int | None = None) -> np.ndarray:
        """[N, hidden] residual stream at a depth (core/naming.py): 0 = the embeddings, d = after block d - 1,
        L = after the last block, before the final norm. `layer=` is the old name of `depth=`."""
        if (depth is None) == (layer is None):
            raise TypeError("hidden_states takes one residual depth: hidden_states(depth)")
        return self.array("resid")[depth if depth is not None else layer]

    def next_token_logprobs(self, position: int) -> np.ndarray:
        """[vocab] log-softmax of the prediction the model made at `position`."""
        if self.unembed is None or self.norm is None:
            raise ValueError("This model has no language-model head (an encoder): no next-token prediction.")
        key = ("logprobs", position)
        if key not in self._cache:
            h = self.norm.apply(self.array("final_resid")[position])  # [hidden]
            logits = self.unembed.astype(np.float32, copy=False) @ h  # [vocab]
            self._cache[key] = log_softmax(logits).astype(np.float32)
        return self._cache[key]

    def kv_bytes_per_layer(self, step: int) -> np.ndarray:
        return np.asarray(self.steps[step].kv_bytes_per_layer)

    def timings(self, step: int) -> dict[str, float]:
        return dict(self.steps[step].timings_ms)

    def upto(self, step: int) -> Run:
        """The run as it was after `step` (0 = the prompt): what the model had seen and predicted then.

        A read-only view for replay: it shares the captured buffers (no copy) and must not be `apply`-ed.
        """
        step = max(0, min(int(step), len(self.steps) - 1))
        if step >= len(self.steps) - 1:
            return self
        steps = self.steps[: step + 1]
        n = steps[-1].start + steps[-1].n_new
        tokens = self.tokens[:n]
        text = "".join(t.text for t in tokens if t.end > t.start)  # as `apply` builds it
        return replace(self, tokens=list(tokens), steps=list(steps), text=text, finish_reason=None,
                       drafts=[d for d in self.drafts if d.position + d.accepted <= n],
                       _buffers=dict(self._buffers), _n=n, _cache={})

    def snapshot(self) -> Run:
        """The run as it is now, frozen: a view sharing the captured buffers (no copy) that later steps do not
        change, for analyses off the GUI thread while the run streams. Must not be `apply`-ed."""
        return replace(self, tokens=list(self.tokens), steps=list(self.steps), _buffers=dict(self._buffers),
                       drafts=list(self.drafts), _cache={})

    def save(self, path, include_head: bool = True, exact: bool = False) -> None:
        """Save as one compressed .npz with a JSON header (no pickle); `include_head=False` leaves out the
        unembedding, most of the file; activations are stored as bounded int8 unless `exact` (see
        core/runfile_write.py; core/runfile.py loads)."""
        save_run(self, path, include_head=include_head, exact=exact)

    def capture_bytes(self) -> int:
        """Memory held by the captured arrays (the buffers, including spare capacity)."""
        return int(sum(b.nbytes for b in self._buffers.values()))

    def prefill_tokens_per_s(self) -> float:
        step = self.steps[0]
        ms = sum(v for k, v in step.timings_ms if k != "tokenize")
        return (step.n_new - step.cached_prefix) / (ms / 1e3) if ms else 0.0

    def decode_tokens_per_s(self) -> float:
        decode = self.steps[1:]
        ms = sum(v for s in decode for _k, v in s.timings_ms)
        return len(decode) / (ms / 1e3) if ms else 0.0


def _has_room(chunk: np.ndarray, axis: int, need: int) -> bool:
    """`chunk` is the start (along `axis`) of a writable buffer of at least `need` positions (see Run.with_room)."""
    base = chunk.base
    if not isinstance(base, np.ndarray) or not base.flags.writeable or base.dtype != chunk.dtype:
        return False
    if base.ndim != chunk.ndim or base.shape[axis] < need:
        return False
    start = _view(base, axis, 0, chunk.shape[axis])
    return (start.shape == chunk.shape and start.strides == chunk.strides
            and start.__array_interface__["data"][0] == chunk.__array_interface__["data"][0])


def _view(a: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(lo, hi)
    return a[tuple(index)]
