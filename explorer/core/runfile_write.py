"""Writing a run file: one `.npz` (never pickle) holding a JSON header and the captured arrays.

Below the Run in the layers: it reads a Run's public attributes only, so `Run.save` can call it
(core/runfile.py reads files back into a Run).

Design note: what a run file stores (issue 18, item 6; figures from benchmarks/bench_runfile.py)
------------------------------------------------------------------------------------------------
A 45-token run of SmolLM2-135M-Instruct (30 layers, 9/3 heads of 64, hidden 576), saved as the
window saves it (no vocabulary matrix), was 6.8 MiB: 6.8 MB of float16 activations (resid 1.6 MB,
queries 1.6, attn_out 1.6, mlp_out 1.6, keys 0.5, values 0.5) that deflate by only ~6% (float16
mantissas are noise), a 0.23 MB header (mostly the readable text of all 49,152 vocabulary ids) and
0.1 MB of float32 final residual. It is now 2.67 MiB (2.5x smaller). Options weighed:

- Recompute on open (store ids + request, rerun teacher-forced with the loaded model): the
  smallest file (~0.1 MB), but without the model only tokens and statistics could be shown, runs of
  lab models, interventions and sampling would all have to replay exactly, and the job would cross
  into the engine being moved to its own process this round. Not done; the 2 MB aim would need it
  (or codes coarser than int8: each bit less halves the precision for ~1/8 of the size).
- Lossy but bounded: chosen. Every activation array is stored per-row scaled int8 with exact
  outliers (core/runfile_codec.py: each entry within 1/254 of its row's largest ordinary entry,
  each row within 2.5% of its norm, "massive activations" bit-exact); int8 codes deflate ~15% where
  float16 did not. queries 1.45 -> 0.70 MB, keys and values 0.48 -> 0.25 MB each.
- Derive on open: attention maps already are (from q and k). resid is too, where the model is
  pre-norm (checked on the data when saving: resid[d+1] = resid[d] + attn_out[d] + mlp_out[d] within
  1%): only its depth-0 row is stored and the reader rebuilds the rest as the running sum of the
  decoded blocks (1.49 -> 0.02 MB). That also keeps the opened run additive for the depth panel:
  resid, attn_out and mlp_out rounded independently put the sum off by up to 7% (the panel's check
  is 2%); the last block carries the sum's error and positions where the blocks cancel (attention
  sinks) are stored exactly. BERT-like (post-norm) runs store resid encoded like the rest.
- The prediction statistics, token ids and the final residual (float32, for exact logits) stay
  exact. Without the head the header keeps only the texts of the ids the run names (its tokens and
  their top-k alternatives: 0.23 -> 0.02 MB); the model that gives the head back gives all its texts.
  `exact=True` keeps every array bit for bit (a notebook's choice); `all_texts=True` every text.

The header names each encoded array (`encodings`: name -> codec and dtype). `version` is the
format this writer produced, `requires` the oldest reader format that can open it: a later writer
that only adds optional header fields (issue 20: retrieved chunks, drafts, token kinds) keeps
`requires` and older readers open its files, ignoring fields they do not know. Format 1 files
(before the encoding) still open.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .arrays import ACTIVATIONS, ARRAY_FIELDS
from .events import StepEvent, Token
from .interventions import to_json
from .runfile_check import FORMAT, REQUIRES, VERSION
from .runfile_codec import CODEC, SUM_CODEC, encode_q8, encode_sum, member
from .speculative import drafts_to_json
from .tempname import atomic_write


def save_run(run, path: str | os.PathLike, include_head: bool = True, exact: bool = False,
             all_texts: bool = False) -> None:
    """Write a core.run.Run (read through its public attributes) atomically (a temporary file in the same
    folder, then a rename), every member deflated.

    The unembedding ([vocab, hidden], 57 MB for SmolLM2) is left out with `include_head=False`: then the
    opened run has no full next-token distribution until `runfile.attach_head` gives it the model's own,
    and the header keeps the readable text of only the ids the run names (its tokens, their top-k
    alternatives); with the head, the text of every vocabulary id.

    Activations are stored as bounded int8 (see the design note above) unless `exact`; `all_texts` keeps
    every vocabulary text even without the head (as files did before)."""
    path = Path(path)
    header = {
        "format": FORMAT, "version": VERSION, "requires": REQUIRES, "info": run.info.to_dict(),
        "request": {**asdict(run.request), "settings": asdict(run.request.settings),
                    "interventions": [to_json(iv) for iv in run.request.interventions]},
        "text": run.text, "n_tokens": run.n_tokens, "n_prompt": run.n_prompt, "finish_reason": run.finish_reason,
        "tokens": [_token_dict(t) for t in run.tokens],
        "steps": [_step_dict(s) for s in run.steps],
        "norm": None if run.norm is None else {"kind": run.norm.kind, "eps": run.norm.eps},
        "drafts": drafts_to_json(run.drafts),  # speculative runs (core/speculative.py)
    }
    head_saved = include_head and run.unembed is not None and run.norm is not None
    if run.vocab is not None and len(run.vocab) == run.info.vocab_size:
        if head_saved or all_texts:  # the logit lens can name any id without a model
            header["vocab"] = list(run.vocab)
        else:  # the texts of the ids the run names; the model that gives the head back gives all its texts
            ids = _named_ids(run)
            header["vocab_subset"] = {"ids": ids, "texts": [run.vocab[i] for i in ids]}
    arrays = {name: np.ascontiguousarray(run.array(name)) for name in ARRAY_FIELDS if run.has_array(name)}
    header["encodings"] = {} if exact else _encode(arrays)
    arrays["kv_bytes"] = np.stack([np.asarray(s.kv_bytes_per_layer) for s in run.steps])  # [steps, layers]
    if run.scaling is not None:
        arrays["scaling"] = np.asarray(run.scaling, np.float32)
    if head_saved:
        with np.errstate(over="ignore"):
            half = run.unembed.astype(np.float16)
        # a weight beyond float16's range stays float32 (never saved as inf)
        arrays["unembed"] = half if np.isfinite(half).all() or not np.isfinite(run.unembed).all() else run.unembed
    if run.norm is not None:  # small; lets a run opened without its head take the model's unembedding later
        arrays["norm_weight"] = run.norm.weight
        if run.norm.bias is not None:
            arrays["norm_bias"] = run.norm.bias
    blob = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    with atomic_write(path) as fh:
        np.savez_compressed(fh, header=blob, **arrays)


def _encode(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
    """Replace the activation arrays in `arrays` by their encoded parts; the header's `encodings`."""
    encodings, parts = {}, {}
    chain = None
    if all(k in arrays for k in _CHAIN):
        chain = encode_sum(*(arrays[k] for k in _CHAIN), final=arrays.get("final_resid"))
    if chain is not None:  # resid stored as the running sum of the blocks (a pre-norm model)
        encodings["resid"] = {"codec": SUM_CODEC, "dtype": arrays["resid"].dtype.name}
        for name in _CHAIN[1:]:
            encodings[name] = {"codec": CODEC, "dtype": arrays[name].dtype.name}
        parts.update(chain)
    for name in ACTIVATIONS:
        if name in arrays and name not in encodings:
            encodings[name] = {"codec": CODEC, "dtype": arrays[name].dtype.name}
            parts[name] = encode_q8(arrays[name])
    for name, members in parts.items():
        del arrays[name]
        arrays.update({member(name, part): value for part, value in members.items()})
    return encodings


_CHAIN = ("resid", "attn_out", "mlp_out")  # resid[d + 1] = resid[d] + attn_out[d] + mlp_out[d] (pre-norm)


def _named_ids(run) -> list[int]:
    """Every token id the run shows by name: its tokens, each position's top-k alternatives, each step's choice."""
    ids = {t.id for t in run.tokens}
    if run.has_array("pred_top_ids"):
        ids.update(np.unique(run.array("pred_top_ids")).tolist())
    for s in run.steps:
        if s.choice is not None:
            ids.update((s.choice.token_id, *s.choice.top_ids))
    return sorted(int(i) for i in ids if 0 <= i < run.info.vocab_size)


def _token_dict(t: Token) -> dict:
    return {"id": t.id, "text": t.text, "start": t.start, "end": t.end, "kind": t.kind.value,
            "bytes": t.raw_bytes.hex(), "partial": t.partial, "injected": t.injected, "special": t.is_special}


def _step_dict(s: StepEvent) -> dict:
    return {"step": s.step, "start": s.start, "n_new": s.n_new, "timings_ms": [list(t) for t in s.timings_ms],
            "choice": None if s.choice is None else asdict(s.choice), "cached_prefix": s.cached_prefix,
            "finish_reason": s.finish_reason}
