"""The Tokens panel's speculative-decoding strip: each verification pass' draft, accepted or rejected.

Accepted draft tokens are shown on the accepted-draft colour, rejected proposals struck through and
grey after the position where they were proposed, then the token the model chose itself. The
summary gives the acceptance rate, tokens per model pass and, when this panel has seen a plain run of
the same prompt and settings, the measured speed-up (decode milliseconds per token, both runs' own step
timings).
"""

from __future__ import annotations

import html
from dataclasses import replace

from ...core.events import TokenKind
from ...core.labels import token_text
from ...core.run import Run
from ...core.speculative import summarize
from .token_colors import KIND_COLORS

MAX_PASSES = 60  # passes listed (the latest); the summary counts them all


def plain_key(run: Run) -> tuple:
    """What makes a plain run comparable with a speculative one: model, prompt and generation settings."""
    r = run.request
    return (run.info.name, r.prompt, r.chat, r.system, replace(r.settings, seed=0) if r.settings.temperature == 0
            else r.settings)


def decode_ms_per_token(run: Run) -> float | None:
    """Milliseconds per decoded token from the run's own step timings (None: nothing decoded)."""
    steps = run.steps[1:]
    if not steps:
        return None
    return sum(ms for s in steps for _stage, ms in s.timings_ms) / len(steps)


def _piece(run: Run, token_id: int) -> str:
    return html.escape(repr(token_text(run, token_id))[1:-1] or "∅")


def drafts_html(run: Run) -> str:
    """One line per verification pass that had a draft: ✓ kept drafts, struck-through rejected ones, → the
    model's own token."""
    accepted_bg = KIND_COLORS[TokenKind.SPECULATIVE]
    lines = []
    passes = [d for d in run.drafts if d.proposed]
    for d in passes[-MAX_PASSES:]:
        after = _piece(run, run.tokens[d.position - 1].id) if d.position - 1 < run.n_tokens else ""
        kept = "".join(f"<span style='background:{accepted_bg}; color:#1a1a1a'>&nbsp;{_piece(run, t)}&nbsp;</span> "
                       for t in d.proposed[: d.accepted])
        rejected = "".join(f"<s style='color:gray'>{_piece(run, t)}</s> " for t in d.rejected)
        own = "" if d.target_token is None else f"→ <b>{_piece(run, d.target_token)}</b>"
        lines.append(f"<span style='color:gray'>@{d.position} after “{after}”:</span> {kept}{rejected}{own}")
    if len(passes) > MAX_PASSES:
        lines.insert(0, f"<span style='color:gray'>(the last {MAX_PASSES} of {len(passes)} drafts)</span>")
    return "<br>".join(lines)


def summary_html(run: Run, plain_ms: float | None) -> str:
    s = summarize(run.drafts)
    if not s.steps:
        return ""
    draft_ms = sum(d.draft_ms for d in run.drafts) / s.steps
    verify_ms = sum(d.verify_ms for d in run.drafts) / s.steps
    rate = f"{s.acceptance:.0%}" if s.proposed else "—"
    text = (f"<b>{html.escape(run.request.speculative)}</b>: <b>{s.accepted}</b> of {s.proposed} draft tokens "
            f"accepted (<b>{rate}</b>) · <b>{s.tokens_per_step:.2f}</b> tokens per model pass ({s.steps} passes) · "
            f"per pass: draft {draft_ms:.1f} ms + verify {verify_ms:.1f} ms")
    ours = decode_ms_per_token(run)
    if plain_ms and ours:
        text += (f" · speed-up vs plain: <b>{plain_ms / ours:.2f}×</b> ({ours:.1f} vs {plain_ms:.1f} ms/token, "
                 "measured against this prompt's last plain run)")
    else:
        text += " · <span style='color:gray'>run the same prompt without speculation to measure the speed-up</span>"
    return text
