"""Several prompts as one padded batch: left padding, an attention mask, position ids from the mask, greedy decode.

    prompts -> tokenize each -> left-pad to the longest [B, P] + mask (0 = padding)
            -> prefill: one forward of [B, P] (position ids = cumsum(mask) - 1)
            -> decode: each step one forward of [B, 1]; a finished row is fed padding (mask 0) until all finish

Decoder-only models continue from the last column, so padding goes on the left: every row's last prompt token sits
in the same column. The mask hides the padding from attention and the position ids start at 0 at each row's first
real token, so each row computes what it would alone (up to floating-point order: `tests/test_batching.py`).

Everything here is plain data (numpy arrays, tuples, numbers), so the engine job (`BatchRun`, `analysis.batch_jobs`)
can return it across a process boundary. The model is run with transformers' own forward (no capture), greedy only
(temperature 0): a batch is a runtime view, the single-prompt run is where every internal is captured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from ..errors import Cancelled, InputError, PromptTooLongError
from ..models import LoadedModel

MAX_BATCH = 16  # prompts per batch (the UI's and the job's limit)
MAX_NEW = 256  # new tokens per batch run
MAX_PROMPT_CHARS = 100_000  # per prompt, checked before tokenizing


@dataclass(frozen=True)
class BatchResult:
    """A finished batch, as plain data. Row b holds prompt b; columns are [padded prompt | decode steps]."""
    model: str
    input_ids: np.ndarray  # [B, T] int64: left-padded prompt ids, then each step's token (pad_id where finished)
    attention_mask: np.ndarray  # [B, T] int8: 1 = a real token the model attended to, 0 = padding
    prompt_lengths: tuple[int, ...]  # real prompt tokens per row
    n_prompt: int  # P, the padded prompt width (the longest prompt)
    generated: tuple[tuple[int, ...], ...]  # per row: greedy tokens (an end-of-text token included)
    finish: tuple[str, ...]  # per row: "eos" or "max_tokens"
    pad_id: int
    pieces: dict[int, str]  # readable text of every id in input_ids
    prefill_ms: float
    step_ms: tuple[float, ...]  # one forward of [B, 1] per decode step
    kv_bytes_per_token: int  # layers x kv heads x head_dim x 2 (K and V) x dtype bytes
    logits: np.ndarray | None = None  # [steps, B, vocab] float32: each step's last-column logits (when asked)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    def row_tokens(self, b: int) -> list[int]:
        """Row b's real tokens (prompt + generated), padding dropped."""
        return [int(t) for t, m in zip(self.input_ids[b], self.attention_mask[b], strict=True) if m]

    @property
    def padded_slots(self) -> int:
        """Cache slots holding padding (the batch's cache is one [B, T] block per layer)."""
        return int(self.attention_mask.size - self.attention_mask.sum())


def kv_bytes_per_token(info: Any) -> int:
    """Bytes one token's keys and values take in every layer: layers x kv heads x head_dim x 2 x dtype bytes
    (the KV cache panel's one formula, `analysis.kv`)."""
    from .kv import config_from_info, dtype_key

    return int(config_from_info(info).bytes_per_token(dtype_key(info.dtype)))


def check_prompts(prompts: Any, max_new_tokens: int) -> tuple[str, ...]:
    """The user's prompt list checked for count, type and size (InputError with a sentence), before any work."""
    if not isinstance(prompts, list | tuple):
        raise InputError("A batch is a list of prompts.")
    if len(prompts) == 0:
        raise InputError("The batch is empty: give at least one prompt (one per line).")
    if len(prompts) > MAX_BATCH:
        raise InputError(f"A batch holds at most {MAX_BATCH} prompts; {len(prompts)} were given.")
    for i, p in enumerate(prompts, 1):
        if not isinstance(p, str):
            raise InputError(f"Prompt {i} is not text ({type(p).__name__}).")
        if not p:
            raise InputError(f"Prompt {i} is empty: every row of a batch needs some text.")
        if len(p) > MAX_PROMPT_CHARS:
            raise InputError(f"Prompt {i} is {len(p):,} characters long; a batch prompt holds at most "
                             f"{MAX_PROMPT_CHARS:,}.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 0 <= max_new_tokens <= MAX_NEW:
        raise InputError(f"Max new tokens for a batch must be a whole number from 0 to {MAX_NEW} "
                         f"(got {max_new_tokens!r}).")
    return tuple(prompts)


def encode_prompts(loaded: LoadedModel, prompts: Any, max_new_tokens: int, *, chat: bool = False,
                   system: str | None = None) -> list[list[int]]:
    """Each prompt's ids (plain or chat template), checked against the model's context (PromptTooLongError)."""
    from ..tokens import encode

    if not loaded.info.is_causal:
        raise InputError(f"{loaded.info.name} is an encoder: batched generation needs a decoder model.")
    prompts = check_prompts(prompts, max_new_tokens)
    out = []
    for i, p in enumerate(prompts, 1):
        ids = list(encode(loaded.tokenizer, p, chat=chat, system=system).ids)
        if not ids:
            raise InputError(f"Prompt {i} gives no tokens with this model's tokenizer.")
        if len(ids) + max_new_tokens > loaded.info.context_length:
            err = PromptTooLongError(len(ids), loaded.info.context_length, max_new=max_new_tokens)
            err.args = (f"Prompt {i}: {err.args[0]}",)
            raise err
        out.append(ids)
    return out


def pad_left(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id lists to the longest: ids [B, P] and mask [B, P] (1 = real token)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int64)  # [B, P]
    mask = np.zeros((len(rows), width), np.int8)  # [B, P]
    for b, r in enumerate(rows):
        if r:
            ids[b, width - len(r):] = r
            mask[b, width - len(r):] = 1
    return ids, mask


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position ids [B, T]: each row counts 0, 1, ... from its first real token; padding gets 1 (never read)."""
    pos = np.cumsum(mask, axis=-1, dtype=np.int64) - 1  # [B, T]
    return np.where(mask == 0, 1, pos)


def pad_token_id(loaded: LoadedModel) -> int:
    """The tokenizer's pad token, else its end-of-text token, else 0 (padding is masked: its id never matters)."""
    tok = loaded.tokenizer
    for candidate in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return 0


def eos_ids(loaded: LoadedModel) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None),
                   getattr(loaded.tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(x) for x in source)
    return ids


def capture_batch(prompts: list[str], model: Any = "smollm2-135m-instruct", *, max_new_tokens: int = 16,
                  chat: bool = False, system: str | None = None, stop_at_eos: bool = True) -> BatchResult:
    """The Python API: greedy-decode `prompts` as one padded batch (`explorer.capture_batch`).

        res = explorer.capture_batch(["The capital of France is", "Water boils at"], max_new_tokens=5)
        res.generated            # per prompt: the new token ids (each equals capture(prompt)'s at temperature 0)
        res.attention_mask       # [B, T] 1 = real token, 0 = padding
        paged_kv.from_batch(res, max_length=2048)   # the batch's cache in blocks of 16
    """
    from ..api import session_for

    loaded = session_for(model).loaded
    rows = encode_prompts(loaded, prompts, max_new_tokens, chat=chat, system=system)
    return run_batch(loaded, rows, max_new_tokens, stop_at_eos=stop_at_eos)


def run_batch(loaded: LoadedModel, rows: list[list[int]], max_new_tokens: int, *, stop_at_eos: bool = True,
              keep_logits: bool = False, cancel: threading.Event | None = None,
              progress: Callable[[float, str], None] | None = None) -> BatchResult:
    """Greedy-decode token-id rows as one left-padded batch (see the module's diagram); `progress(fraction,
    message)` after each decode step; Cancelled when `cancel` is set (checked before every step)."""
    model, info = loaded.model, loaded.info
    pad, eos = pad_token_id(loaded), (eos_ids(loaded) if stop_at_eos else set())
    ids, mask = pad_left(rows, pad)  # [B, P], [B, P]
    n_rows, width = ids.shape
    cache = DynamicCache(config=model.config)
    ids_cols, mask_cols = [ids], [mask]
    generated: list[list[int]] = [[] for _ in range(n_rows)]
    finish = ["max_tokens"] * n_rows
    done = np.zeros(n_rows, bool)
    step_ms, kept_logits = [], []
    full_mask = mask
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(full_mask.astype(np.int64)),
                    position_ids=torch.from_numpy(positions_from_mask(full_mask)), cache=cache, use_cache=True,
                    logits_to_keep=1)
        logits = out.logits[:, -1].float().numpy()  # [B, vocab]
        prefill_ms = (time.perf_counter() - t0) * 1e3
        for step in range(max_new_tokens):
            if cancel is not None and cancel.is_set():
                raise Cancelled("Batch run cancelled.")
            if keep_logits:
                kept_logits.append(logits.copy())
            nxt = np.argmax(logits, axis=-1).astype(np.int64)  # [B] greedy, as the runner's temperature 0
            col_mask = (~done).astype(np.int8)  # [B] finished rows get padding
            nxt = np.where(done, pad, nxt)
            for b in np.flatnonzero(~done):
                generated[b].append(int(nxt[b]))
                if int(nxt[b]) in eos:
                    done[b], finish[b] = True, "eos"
            ids_cols.append(nxt[:, None])
            mask_cols.append(col_mask[:, None])
            if done.all() or step == max_new_tokens - 1:
                break  # the last token is chosen: no forward needed (as the runner's last step)
            full_mask = np.concatenate([full_mask, col_mask[:, None]], axis=1)  # [B, T]
            pos = full_mask.sum(-1, dtype=np.int64)[:, None] - 1  # [B, 1] the new token's position
            t0 = time.perf_counter()
            out = model(input_ids=torch.from_numpy(nxt[:, None]),
                        attention_mask=torch.from_numpy(full_mask.astype(np.int64)),
                        position_ids=torch.from_numpy(np.maximum(pos, 0)), cache=cache, use_cache=True)
            logits = out.logits[:, -1].float().numpy()  # [B, vocab]
            step_ms.append((time.perf_counter() - t0) * 1e3)
            if progress is not None:
                progress((step + 1) / max_new_tokens, f"decode step {step + 1}/{max_new_tokens}")
    all_ids = np.concatenate(ids_cols, axis=1)  # [B, T]
    all_mask = np.concatenate(mask_cols, axis=1)  # [B, T]
    return BatchResult(
        model=info.name, input_ids=all_ids, attention_mask=all_mask, prompt_lengths=tuple(len(r) for r in rows),
        n_prompt=width, generated=tuple(tuple(g) for g in generated), finish=tuple(finish), pad_id=pad,
        pieces=_pieces(loaded, all_ids), prefill_ms=prefill_ms, step_ms=tuple(step_ms),
        kv_bytes_per_token=kv_bytes_per_token(info),
        logits=np.stack(kept_logits) if kept_logits else None,
    )


def _pieces(loaded: LoadedModel, ids: np.ndarray) -> dict[int, str]:
    """Readable text of each id: its bytes as UTF-8, or <0xNN> bytes for a piece of a split character."""
    from ..tokens import TokenBytes

    token_bytes = TokenBytes(loaded.tokenizer)
    out = {}
    for i in np.unique(ids):
        piece = token_bytes(int(i))
        if piece is None:
            out[int(i)] = str(loaded.tokenizer.convert_ids_to_tokens(int(i)))
            continue
        try:
            out[int(i)] = piece.decode("utf-8")
        except UnicodeDecodeError:
            out[int(i)] = "".join(f"<0x{b:02X}>" for b in piece)
    return out
