"""Writing a run file: one `.npz` (never pickle) holding a JSON header and the captured arrays.

Below the Run in the layers: it reads a Run's public attributes only, so `Run.save` can call it
(core/runfile.py reads files back into a Run).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .arrays import ARRAY_FIELDS
from .events import StepEvent, Token
from .interventions import to_json
from .runfile_check import FORMAT, VERSION
from .speculative import drafts_to_json
from .tempname import atomic_write


def save_run(run, path: str | os.PathLike, include_head: bool = True) -> None:
    """Write a core.run.Run (read through its public attributes) atomically (a temporary file in the same
    folder, then a rename), every member deflated.

    The header keeps the readable text of every vocabulary id (the names of top-k alternatives). The
    unembedding ([vocab, hidden], 57 MB for SmolLM2) is left out with `include_head=False`: then the
    opened run has no full next-token distribution until `runfile.attach_head` gives it the model's own."""
    path = Path(path)
    header = {
        "format": FORMAT, "version": VERSION, "info": run.info.to_dict(),
        "request": {**asdict(run.request), "settings": asdict(run.request.settings),
                    "interventions": [to_json(iv) for iv in run.request.interventions]},
        "text": run.text, "n_tokens": run.n_tokens, "n_prompt": run.n_prompt, "finish_reason": run.finish_reason,
        "tokens": [_token_dict(t) for t in run.tokens],
        "steps": [_step_dict(s) for s in run.steps],
        "norm": None if run.norm is None else {"kind": run.norm.kind, "eps": run.norm.eps},
        "drafts": drafts_to_json(run.drafts),  # speculative runs (core/speculative.py)
    }
    if run.vocab is not None and len(run.vocab) == run.info.vocab_size:
        header["vocab"] = list(run.vocab)
    arrays = {name: np.ascontiguousarray(run.array(name)) for name in ARRAY_FIELDS if run.has_array(name)}
    arrays["kv_bytes"] = np.stack([np.asarray(s.kv_bytes_per_layer) for s in run.steps])  # [steps, layers]
    if run.scaling is not None:
        arrays["scaling"] = np.asarray(run.scaling, np.float32)
    if include_head and run.unembed is not None and run.norm is not None:
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


def _token_dict(t: Token) -> dict:
    return {"id": t.id, "text": t.text, "start": t.start, "end": t.end, "kind": t.kind.value,
            "bytes": t.raw_bytes.hex(), "partial": t.partial, "injected": t.injected, "special": t.is_special}


def _step_dict(s: StepEvent) -> dict:
    return {"step": s.step, "start": s.start, "n_new": s.n_new, "timings_ms": [list(t) for t in s.timings_ms],
            "choice": None if s.choice is None else asdict(s.choice), "cached_prefix": s.cached_prefix,
            "finish_reason": s.finish_reason}
