"""Core performance measurements: instrumented capture against plain transformers, same model, one process.

    measure_load      first load (GGUF dequantise into an empty temporary cache) vs cached load
    measure_prefill   plain sdpa forward (logits for every position) vs instrumented prefill
    measure_decode    plain greedy `model.generate` vs the instrumented runner streaming every step
    measure_memory    captured arrays vs eager output_attentions + output_hidden_states (from shapes)

Every figure is a median after a warm-up; plain and instrumented repetitions alternate so both
see the same machine noise. No Qt here: `benchmarks/bench_core.py` and `explorer/bench.py` print them.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .arrays import ARRAY_FIELDS
from .capture import prepare_model
from .models import ModelInfo, load_model
from .run import Run
from .runner import Session

TARGETS = {"decode_ratio": (">=", 0.85), "prefill_ratio": ("<=", 1.15), "memory_ratio": ("<=", 0.25)}
_TEXT = ("the model reads every token of the prompt once and then writes its answer one token at a time while the "
         "cache keeps the keys and values of everything it has already seen so far")
_WORDS = tuple(_TEXT.split())


def median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=float)))


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@contextlib.contextmanager
def temporary_env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def plain_attention(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model with transformers' stock "sdpa" attention; the capture function is restored afterwards."""
    model.set_attn_implementation("sdpa")
    try:
        yield model
    finally:
        prepare_model(model)


def prompt_of(tokenizer: Any, n_tokens: int) -> tuple[str, list[int]]:
    """A plain prompt of at most (and close to) `n_tokens` tokens, and its ids."""
    from .tokens import tokenize

    def build(k: int) -> str:
        return " ".join(_WORDS[i % len(_WORDS)] for i in range(k))

    lo, hi = 1, n_tokens * 2 + 8
    while lo < hi:  # the largest word count whose token count is <= n_tokens
        mid = (lo + hi + 1) // 2
        if len(tokenize(tokenizer, build(mid)).ids) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    text = build(lo)
    return text, list(tokenize(tokenizer, text).ids)


def measure_load(name: str, repeats: int = 3) -> dict:
    """First load into an empty temporary cache (for a GGUF: dequantise + write), then cached loads."""
    with tempfile.TemporaryDirectory(prefix="lm-explorer-bench-") as tmp, temporary_env("LM_EXPLORER_CACHE", tmp):
        first = timed(lambda: load_model(name))
        gc.collect()
        cached = [timed(lambda: load_model(name)) for _ in range(max(2, repeats))]
        gc.collect()
    return {"first_s": first, "cached_s": median(cached), "speedup": first / max(median(cached), 1e-9)}


def plain_forward(model: torch.nn.Module, ids: list[int], all_logits: bool = True) -> None:
    """What a plain user of transformers runs: one forward with a cache, logits for every position."""
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=0 if all_logits else 1)


def measure_prefill(session: Session, sizes: tuple[int, ...] = (512, 2048), repeats: int = 3
                    ) -> tuple[dict, dict[int, Run]]:
    """Plain sdpa forward vs instrumented prefill (tokenize + capture + per-position stats + Run)."""
    from .api import run_request
    from .events import GenerationSettings, RunRequest

    model, out, runs = session.loaded.model, {}, {}
    for n in sizes:
        prompt, ids = prompt_of(session.loaded.tokenizer, n)
        request = RunRequest(prompt=prompt, settings=GenerationSettings(max_new_tokens=0), reuse_prefix=False)
        plain, plain_last, instrumented = [], [], []
        for rep in range(repeats + 1):  # rep 0 warms up
            with plain_attention(model):
                t_plain = timed(lambda ids=ids: plain_forward(model, ids))
                t_last = timed(lambda ids=ids: plain_forward(model, ids, all_logits=False))
            session.forget_cache()
            holder: dict[str, Run] = {}
            t_instr = timed(lambda request=request, holder=holder: holder.setdefault(
                "run", run_request(session, request)))
            runs[n] = holder["run"]
            if rep:
                plain.append(t_plain * 1e3)
                plain_last.append(t_last * 1e3)
                instrumented.append(t_instr * 1e3)
            del holder
            gc.collect()
        out[str(n)] = {"tokens": len(ids), "plain_ms": median(plain), "plain_last_logits_ms": median(plain_last),
                       "instrumented_ms": median(instrumented),
                       "ratio": median(instrumented) / max(median(plain), 1e-9),
                       "ratio_vs_last_logits": median(instrumented) / max(median(plain_last), 1e-9)}
    return {"sizes": out, "ratio_max": max(v["ratio"] for v in out.values())}, runs


def measure_decode(session: Session, new_tokens: int = 64, repeats: int = 3, prompt_tokens: int = 32) -> dict:
    """Decode tokens/s, greedy: plain `generate` (cache on) vs the instrumented runner, every step streamed."""
    from .events import GenerationSettings, RunRequest

    model, tok = session.loaded.model, session.loaded.tokenizer
    prompt, ids = prompt_of(tok, prompt_tokens)
    input_ids = torch.tensor([ids])
    pad = tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id

    def generate(n: int) -> float:
        with torch.inference_mode():
            return timed(lambda: model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                                max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                use_cache=True, pad_token_id=pad))

    request = RunRequest(prompt=prompt, settings=GenerationSettings(max_new_tokens=new_tokens, stop_at_eos=False),
                         reuse_prefix=False)

    def instrumented() -> float:
        session.forget_cache()
        run = session.new_run(request)
        stamps = []
        for event in session.stream(request):
            run.apply(event)
            stamps.append(time.perf_counter())
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])  # decode forwards after the prefill event

    plain_rates, instr_rates = [], []
    for rep in range(repeats + 1):
        with plain_attention(model):
            t_one, t_all = generate(1), generate(new_tokens)
        rate = instrumented()
        if rep:
            plain_rates.append((new_tokens - 1) / max(t_all - t_one, 1e-9))
            instr_rates.append(rate)
    plain, instr = median(plain_rates), median(instr_rates)
    return {"new_tokens": new_tokens, "prompt_tokens": len(ids), "plain_tokens_per_s": plain,
            "instrumented_tokens_per_s": instr, "ratio": instr / max(plain, 1e-9)}


def eager_bytes(info: ModelInfo, n: int) -> int:
    """What eager output_attentions + output_hidden_states hold for n tokens (float32, from shapes)."""
    attentions = info.n_layers * info.n_heads * n * n * 4  # [layers, heads, n, n]
    hidden = (info.n_layers + 1) * n * info.hidden_size * 4  # [layers + 1, n, hidden]
    return attentions + hidden


def measure_memory(run: Run) -> dict:
    used = sum(run.array(name).nbytes for name in ARRAY_FIELDS)
    eager = eager_bytes(run.info, run.n_tokens)
    return {"tokens": run.n_tokens, "capture_bytes": run.capture_bytes(), "capture_used_bytes": int(used),
            "eager_bytes": eager, "ratio": run.capture_bytes() / eager, "used_ratio": used / eager}


def run_core(model: str | None = None, sizes: tuple[int, ...] = (512, 2048), new_tokens: int = 64,
             repeats: int = 3, log: Callable[[str], None] = print) -> dict:
    """Every core measurement on one model, in one process."""
    log("load ...")
    load = measure_load(model or "smollm2-135m-instruct") if model is None or not model.startswith("tiny") else {}
    session = Session(load_model(model or "smollm2-135m-instruct"))
    room = session.info.context_length - new_tokens - 8
    sizes = tuple(sorted({min(s, room) for s in sizes}))
    log("decode ...")
    decode = measure_decode(session, new_tokens, repeats)
    log("prefill ...")
    prefill, runs = measure_prefill(session, sizes, repeats)
    memory = measure_memory(runs[max(sizes)])
    results = {"model": session.info.name, "torch_threads": torch.get_num_threads(), "load": load,
               "decode": decode, "prefill": prefill, "memory": memory}
    results["checks"] = checks(results)
    return results


def checks(results: dict) -> dict:
    values = {"decode_ratio": results["decode"]["ratio"], "prefill_ratio": results["prefill"]["ratio_max"],
              "memory_ratio": results["memory"]["ratio"]}
    out = {}
    for name, (op, target) in TARGETS.items():
        value = values[name]
        out[name] = {"value": value, "target": f"{op} {target:g}",
                     "ok": value >= target if op == ">=" else value <= target}
    return out


def table(results: dict) -> str:
    rows = [("figure", "plain", "instrumented", "ratio")]
    load = results.get("load") or {}
    if load:
        rows.append(("load, s (first GGUF / cached)", f"{load['first_s']:.2f}", f"{load['cached_s']:.2f}",
                     f"{load['speedup']:.0f}x faster"))
    d = results["decode"]
    rows.append((f"decode {d['new_tokens']} tokens, tokens/s", f"{d['plain_tokens_per_s']:.1f}",
                 f"{d['instrumented_tokens_per_s']:.1f}", f"{d['ratio']:.2f}x"))
    for v in results["prefill"]["sizes"].values():
        rows.append((f"prefill {v['tokens']} tokens, ms (plain: all logits)", f"{v['plain_ms']:.0f}",
                     f"{v['instrumented_ms']:.0f}", f"{v['ratio']:.2f}x"))
        rows.append((f"prefill {v['tokens']} tokens, ms (plain: last logits)", f"{v['plain_last_logits_ms']:.0f}",
                     f"{v['instrumented_ms']:.0f}", f"{v['ratio_vs_last_logits']:.2f}x"))
    m = results["memory"]
    rows.append((f"memory at {m['tokens']} tokens, MiB (eager / capture)", f"{m['eager_bytes'] / 2**20:,.0f}",
                 f"{m['capture_bytes'] / 2**20:,.0f}", f"{m['ratio']:.1%}"))
    lines = markdown_table(rows) + [""]
    target_rows = [("target", "measured", "target", "met")]
    for name, c in results["checks"].items():
        target_rows.append((name, f"{c['value']:.3g}", c["target"], "yes" if c["ok"] else "NO"))
    return "\n".join(lines + markdown_table(target_rows))


def markdown_table(rows) -> list[str]:
    """Rows (first = header) as the lines of a markdown table with aligned columns."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    fmt = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return [fmt[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *fmt[1:]]
