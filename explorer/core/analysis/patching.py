"""Patching from a second run, position by position along the prompt A/B alignment.

Run B's values are taken at the B position that the A/B token alignment (analysis/align.py)
pairs with each A position. A positions with no counterpart in B (tokens inserted in A) are not
patched, and the intervention's label says how many; when nothing lines up it is refused. So a
second run with a different number of tokens never leaves positions silently unpatched while
claiming "all positions".
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..interventions import Intervention, head_outputs
from ..run import Run
from .align import align_runs


def patch_from_run_b(run_a: Run, run_b: Run, layer: int, head: int | None = None,
                     positions: tuple[int, ...] | None = None, label: str = "from run B") -> Intervention:
    """A patch_head (head given) or patch_resid (after `layer`) intervention for run A, sourced from run B.

    `positions`: A positions to patch (None: every A position that has a counterpart in B).
    """
    if run_a.info != run_b.info:
        raise InputError(f"Run B was made with another model ({run_b.info.name}); patching needs the same model.")
    if head is not None:
        rows_b = head_outputs(run_b, layer, head)  # [N_b, head_dim]
    else:
        last = layer == run_b.info.n_layers - 1
        rows_b = np.asarray(run_b.array("final_resid") if last else run_b.array("resid")[layer + 1],
                            np.float32)  # [N_b, hidden]
    alignment = align_runs(run_a, run_b)
    b_of = dict(alignment.matched)
    wanted = range(run_a.n_tokens) if positions is None else [p for p in positions if p < run_a.n_tokens]
    kept = [p for p in wanted if p in b_of]
    missing = [p for p in wanted if p not in b_of]
    if not kept:
        where = "any position" if positions is None else f"position(s) {', '.join(map(str, positions))}"
        raise InputError(f"No token of this run at {where} lines up with a token of run B, so nothing can be "
                         "patched: pin a run B whose prompt shares tokens with this one.")
    source = np.zeros((run_a.n_tokens, rows_b.shape[1]), np.float32)  # [N_a, width] indexed by A position
    source[kept] = rows_b[[b_of[p] for p in kept]]
    shifted = any(b_of[p] != p for p in kept)
    notes = [label]
    if shifted or run_a.n_tokens != run_b.n_tokens:
        notes.append(f"aligned by tokens: A has {run_a.n_tokens}, B {run_b.n_tokens}")
    if missing:
        notes.append(f"{len(missing)} position(s) with no counterpart in B left unpatched")
    kind = "patch_head" if head is not None else "patch_resid"
    return Intervention(kind, layer, head, tuple(kept), source=source, label="; ".join(notes))
