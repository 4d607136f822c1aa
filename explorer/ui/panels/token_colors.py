"""Colours, legend and hover text for the Tokens panel (kept apart from the panel's widgets)."""

from __future__ import annotations

import html

import numpy as np
from PySide6.QtGui import QColor

from ...core.events import Token, TokenKind
from ...core.labels import token_text
from ...core.run import Run
from .. import plot_style

KIND_COLORS = {
    TokenKind.SPECIAL: "#d6d6d6",
    TokenKind.SYSTEM: "#f7d9a8",
    TokenKind.USER: "#bcdcf5",
    TokenKind.PROMPT: "#cde8c1",
    TokenKind.GENERATED: "#e4ccf4",
    TokenKind.CACHED_PREFIX: "#bfe9e4",
    TokenKind.TOOL_CALL: "#f9c89b",
    TokenKind.TOOL_RESULT: "#f3e79b",
    TokenKind.REASONING: "#f4c6dc",
    TokenKind.RETRIEVED: "#c9e4c5",
    TokenKind.SPECULATIVE: "#b990ec",  # a deeper "generated": the model accepted it from a draft
}
KIND_NAMES = {TokenKind.SPECIAL: "special / template", TokenKind.SYSTEM: "system", TokenKind.USER: "user",
              TokenKind.PROMPT: "prompt", TokenKind.GENERATED: "generated", TokenKind.CACHED_PREFIX: "cached prefix",
              TokenKind.TOOL_CALL: "tool call", TokenKind.TOOL_RESULT: "tool result",
              TokenKind.REASONING: "reasoning", TokenKind.RETRIEVED: "retrieved",
              TokenKind.SPECULATIVE: "accepted draft"}
INJECTED_FILL, INJECTED_OUTLINE = QColor("#ffb0b0"), QColor("#d00000")
MISSING = QColor("#e8e8e8")
MODES = ("kind", "logprob", "entropy", "id")
MODE_TITLES = {"kind": "token kind", "logprob": "logprob of the token", "entropy": "entropy of its prediction",
               "id": "token id (frequent → rare)"}
INJECTION_HELP = (
    "Typed text became a control token: characters the user (or a document) typed were turned by the "
    "tokenizer into this special token, so the model reads them as real chat structure, not as text. "
    "That is a prompt-injection path; run with special tokens treated as text to prevent it."
)


def _kind_colors(tokens: list[Token], start: int = 0) -> list[QColor]:
    out = []
    for i, t in enumerate(tokens[start:], start):
        c = INJECTED_FILL if t.injected else QColor(KIND_COLORS.get(t.kind, MISSING))
        out.append(c.darker(108) if i % 2 else c)  # alternate shades so neighbours stay apart
    return out


def _scalar_colors(values: np.ndarray, lo: float, hi: float) -> list[QColor]:
    """Light colours from a perceptual map (text stays readable); NaN -> grey."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    x = np.clip((np.where(finite, values, lo) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    rgb = plot_style.colormap("sequential").map(x, mode="float")[:, :3] * 0.55 + 0.45  # [n, 3] mixed with white
    return [QColor.fromRgbF(*map(float, c)) if f else MISSING for c, f in zip(rgb, finite, strict=True)]


def mode_values(run: Run, mode: str, n: int | None = None) -> tuple[np.ndarray, float, float] | None:
    """The per-token numbers a colour mode maps (and their range), or None for kind mode."""
    n = run.n_tokens if n is None else n
    if mode == "logprob":
        return _array(run, "token_logprob", n), -10.0, 0.0
    if mode == "entropy":
        ent = _array(run, "pred_entropy", n)
        prev = np.concatenate([[np.nan], ent[:-1]])  # token p was picked from the prediction made at p - 1
        return prev, 0.0, float(min(6.0, np.log(max(run.info.vocab_size, 2))))  # fixed scale: stable while streaming
    if mode == "id":
        ids = np.array([t.id for t in run.tokens[:n]], dtype=np.float64)
        return np.log1p(ids), 0.0, float(np.log1p(max(run.info.vocab_size, 2)))
    return None


def _array(run: Run, name: str, n: int) -> np.ndarray:
    try:
        return np.asarray(run.array(name)[:n], dtype=np.float64)
    except KeyError:
        return np.full(n, np.nan)


def token_colors(run: Run, mode: str, start: int = 0) -> tuple[list[QColor], list[QColor | None]]:
    """Fill and outline colours of tokens[start:] (streaming colours only the new tokens)."""
    tokens = run.tokens
    outline = [INJECTED_OUTLINE if t.injected else None for t in tokens[start:]]
    values = mode_values(run, mode)
    if values is None:
        return _kind_colors(tokens, start), outline
    v, lo, hi = values
    return _scalar_colors(v[start:], lo, hi), outline


def kind_counts(tokens: list[Token]) -> dict[str, int]:
    """Tokens per legend entry (kinds, plus 'injected' for typed-in special tokens)."""
    counts = {k.value: 0 for k in TokenKind}
    for t in tokens:
        counts[t.kind.value] += 1
    counts["injected"] = sum(1 for t in tokens if t.injected)
    return counts


def legend_html(run: Run, mode: str) -> str:
    if mode == "kind":
        counts = kind_counts(run.tokens)
        items = [f"<span style='background:{QColor(KIND_COLORS.get(k, MISSING)).name()};'>&nbsp;&nbsp;&nbsp;</span>"
                 f"&nbsp;{KIND_NAMES.get(k, k.value)} "
                 f"<b>{counts[k.value]}</b>" for k in TokenKind if counts[k.value]]
        if counts["injected"]:
            items.append(f"<span style='background:{INJECTED_FILL.name()}; border:1px solid red;'>&nbsp;&nbsp;"
                         f"&nbsp;</span>&nbsp;<span style='color:#d00000'>typed → special (injection)</span> "
                         f"<b>{counts['injected']}</b>")
        return " &nbsp; ".join(items)
    values = mode_values(run, mode)
    lo, hi = (values[1], values[2]) if values else (0, 1)
    cmap = plot_style.colormap("sequential")
    stops = [QColor.fromRgbF(*map(float, cmap.map(x, mode="float")[:3] * 0.55 + 0.45)).name() for x in (0.0, 0.5, 1.0)]
    swatches = "".join(f"<span style='background:{c};'>&nbsp;&nbsp;&nbsp;&nbsp;</span>" for c in stops)
    if mode == "id":
        lo_txt, hi_txt = "id 0 (frequent)", f"id {run.info.vocab_size} (rare)"
    else:
        lo_txt, hi_txt = f"{lo:.1f}", f"{hi:.1f}" + (" nats" if mode == "entropy" else "")
    return f"{MODE_TITLES[mode]}: {lo_txt} {swatches} {hi_txt} &nbsp; <span style='color:gray'>grey = none</span>"


def counts_text(run: Run) -> str:
    n, chars = run.n_tokens, len(run.text)
    ratio = chars / n if n else 0.0
    gen = run.n_generated
    return (f"<b>{n}</b> tokens ({run.n_prompt} prompt, {gen} generated) · <b>{chars}</b> characters · "
            f"<b>{ratio:.2f}</b> characters/token")


piece_name = token_text  # kept for depth.py's import (edited on other branches): the same function


def label_for(run: Run, t: Token) -> str | None:
    """What a token that owns no characters shows: its bytes (byte fallback) or its special piece."""
    if t.end > t.start:
        return None
    if t.partial:
        return t.raw_bytes.hex(" ").upper() if t.raw_bytes else t.text
    return t.text or token_text(run, t.id)


def tooltip_text(run: Run, i: int) -> str:
    """Hover text for token i: position, id, piece, bytes, kind, logprob, rank, entropy, top-5."""
    t = run.tokens[i]
    lp, rank = _at(run, "token_logprob", i), _at(run, "token_rank", i)
    ent_prev = _at(run, "pred_entropy", i - 1) if i > 0 else float("nan")
    ent_here = _at(run, "pred_entropy", i)
    lines = [f"<b>position {i}</b> · id <b>{t.id}</b> · {html.escape(t.kind.value)}"
             + (" · special token" if t.is_special else ""),
             f"piece: <code>{html.escape(repr(t.text))}</code>",
             f"bytes: <code>{t.raw_bytes.hex(' ').upper() or '(none: inserted by the tokenizer)'}</code>"
             + (" · part of a character (byte fallback)" if t.partial else "")]
    if np.isfinite(lp):
        lines.append(f"logprob <b>{lp:.3f}</b> (p = {np.exp(lp):.3f}), rank {int(rank)}")
    else:
        lines.append("logprob: none (nothing predicts the first token)")
    if np.isfinite(ent_prev):
        lines.append(f"entropy of the prediction that chose it: {ent_prev:.2f} nats")
    if np.isfinite(ent_here):
        lines.append(f"entropy of the next-token prediction here: {ent_here:.2f} nats")
    if i > 0:
        try:
            ids, lps = run.array("pred_top_ids")[i - 1][:5], run.array("pred_top_logprobs")[i - 1][:5]
        except KeyError:
            ids, lps = [], []
        alts = [f"{'▶ ' if int(a) == t.id else ''}<code>{html.escape(repr(token_text(run, int(a))))}</code> "
                f"{np.exp(v):.3f}" for a, v in zip(ids, lps, strict=True) if np.isfinite(v)]
        if alts:
            lines.append("top-5 the model expected here:<br>&nbsp;&nbsp;" + "<br>&nbsp;&nbsp;".join(alts))
    if t.injected:
        lines.append(f"<span style='color:#d00000'><b>⚠ {INJECTION_HELP}</b></span>")
    return "<br>".join(lines)


def _at(run: Run, name: str, i: int) -> float:
    try:
        return float(run.array(name)[i])
    except (KeyError, IndexError):
        return float("nan")
