"""The benchmark table (issue 19 section 5): per variant, parameters, training tokens/s, held-out bits per
byte at equal tokens and at equal training time, the direction its paper claims and whether this run
reproduces it. Pure functions over metrics.json dicts, so the table's logic is tested."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLAIMS = {
    "plain": ("baseline", None),
    "attnres": ("below plain at equal tokens (AttnRes: lower loss at every scale tried)", "below"),
    "attnres-block": ("near full AttnRes, below plain at equal tokens", "below"),
    "moda": ("below plain at equal tokens, for ~4% more FLOPs (MoDA at 1.5B)", "below"),
    "mhc": ("at or below plain; mostly stabler training of deep stacks", "below"),
    "engram": ("below plain at equal parameters (memory instead of dense width: only an analogy of the "
               "paper's MoE trade, whose U-shaped law needs an MoE baseline)", "below"),
}


@dataclass
class Row:
    arch: str
    seeds: int
    params: int
    tokens_per_s: float
    bpb_equal_tokens: float
    spread_equal_tokens: float  # max - min over seeds (0 with one seed)
    bpb_equal_time: float
    claim: str
    verdict: str


def at(curve, x: float) -> float:
    """Linear interpolation of a [[x, y], ...] curve at x (x inside the curve's range)."""
    a = np.asarray(curve, dtype=np.float64).reshape(-1, 2)
    if not len(a) or x > a[-1, 0] + 1e-9 or x < a[0, 0] - 1e-9:
        raise ValueError(f"{x} is outside the curve's range")
    return float(np.interp(x, a[:, 0], a[:, 1]))


def table(runs: list[dict]) -> tuple[list[Row], float, float]:
    """Rows per architecture (seeds averaged) and the shared token count and training time they are read at."""
    if not runs:
        raise ValueError("no runs")
    tokens = min(m["heldout_bpb"][-1][0] for m in runs)  # the slowest run's tokens: everyone reached it
    seconds = min(m["heldout_bpb_time"][-1][0] for m in runs)
    by_arch: dict[str, list[dict]] = {}
    for m in runs:
        by_arch.setdefault(m["arch"], []).append(m)
    eq_tok = {a: [at(m["heldout_bpb"], tokens) for m in ms] for a, ms in by_arch.items()}
    rows = []
    for arch, ms in by_arch.items():
        vals = eq_tok[arch]
        claim, direction = CLAIMS.get(arch, ("?", None))
        rows.append(Row(
            arch=arch, seeds=len(ms), params=int(ms[0]["params"]),
            tokens_per_s=float(np.mean([m["tokens_per_s"] for m in ms])),
            bpb_equal_tokens=float(np.mean(vals)), spread_equal_tokens=float(np.ptp(vals)),
            bpb_equal_time=float(np.mean([at(m["heldout_bpb_time"], seconds) for m in ms])),
            claim=claim, verdict=verdict(vals, eq_tok.get("plain"), direction)))
    order = {a: i for i, a in enumerate(CLAIMS)}
    rows.sort(key=lambda r: order.get(r.arch, 99))
    return rows, tokens, seconds


def verdict(values: list[float], plain: list[float] | None, direction: str | None) -> str:
    """Whether `values` are below plain's at equal tokens, judged against the seed spread when there is one."""
    if direction is None:
        return "-"
    if not plain:
        return "no plain run to compare"
    diff = float(np.mean(values) - np.mean(plain))
    if len(values) > 1 and len(plain) > 1:
        noise = max(float(np.ptp(values)), float(np.ptp(plain)))
        if abs(diff) <= noise:
            return f"within seed noise ({diff:+.3f} vs spread {noise:.3f})"
        return f"yes ({diff:+.3f})" if diff < 0 else f"no ({diff:+.3f})"
    return (f"lower by {-diff:.3f}, one seed: noise unmeasured" if diff < 0
            else f"no ({diff:+.3f}, one seed)")


def markdown(rows: list[Row], tokens: float, seconds: float) -> str:
    lines = [f"| variant | seeds | params | train tokens/s | held-out bits/byte at {tokens:,.0f} tokens | "
             f"held-out bits/byte at {seconds:.0f} s of training | paper's claimed direction | reproduced here? |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f" (±{r.spread_equal_tokens / 2:.3f})" if r.seeds > 1 else ""
        lines.append(f"| {r.arch} | {r.seeds} | {r.params:,} | {r.tokens_per_s:,.0f} | "
                     f"{r.bpb_equal_tokens:.3f}{spread} | {r.bpb_equal_time:.3f} | {r.claim} | {r.verdict} |")
    return "\n".join(lines)
