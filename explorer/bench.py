"""`lm-explorer bench [--quick] [--json out.json] [--model NAME]`: the performance suite.

Measures, in one process, instrumented capture against plain transformers on the same model:
    1. load: first load (GGUF dequantise, into a temporary cache) vs cached load
    2. prefill at 128 / 512 / 2,048 tokens: plain sdpa forward vs instrumented capture
    3. decode: plain `model.generate` (greedy, cache) vs the instrumented runner streaming every step
    4. capture memory at 2,048 tokens vs eager output_attentions + output_hidden_states (from shapes)
    5. GUI (offscreen): per-step redraw of every registered panel; head selection
    6. memory stability: resident memory before and after many consecutive runs
Each figure is the median of several repetitions after a warm-up. Prints a table with the
targets, writes JSON (and a copy in the user cache folder that the Pipeline panel reads).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .core import catalogue
from .core.benchmarks import (
    markdown_table,
    measure_decode,
    measure_load,
    measure_memory,
    measure_prefill,
    prompt_of,
)
from .core.models import cache_root, load_model

BENCH_FILE = "bench-latest.json"
# figure -> (JSON path, comparison, target, unit)
TARGETS = {
    "decode speed vs plain": (("decode", "ratio"), ">=", 0.85, "x"),
    "prefill time vs plain (max)": (("prefill", "ratio_max"), "<=", 1.15, "x"),
    "capture memory vs eager": (("memory", "ratio"), "<=", 0.25, "x"),
    "redraw p95 at 1,024 tokens": (("gui", "redraw_p95_ms_at_1024"), "<=", 16.0, "ms"),
    "head selection (4,096 tokens; 1,024 in --quick)": (("gui", "head_select", "median_ms"), "<=", 100.0, "ms"),
    "longest GUI-thread stall while streaming": (("gui", "stalls", "longest_ms"), "<=", 50.0, "ms"),
    "memory growth over the runs": (("stability", "growth_mb"), "<=", 50.0, "MB"),
    "window vs headless, short prompt (engine process)": (("live", "worst", "short"), ">=", 0.8, "x"),
    "window vs headless, 1,000-token prompt (engine process)": (("live", "worst", "long"), ">=", 0.8, "x"),
}


@dataclass(frozen=True)
class BenchConfig:
    model: str
    quick: bool
    repeats: int = 3
    prefill_sizes: tuple[int, ...] = (128, 512, 2048)
    decode_tokens: int = 64
    memory_tokens: int = 2048
    gui_sizes: tuple[int, ...] = (256, 1024, 4096)
    gui_steps: int = 16
    head_tokens: int = 4096
    stability_runs: int = 100


def config_for(model: str, quick: bool) -> BenchConfig:
    if quick:
        return BenchConfig(model=model, quick=True, repeats=2, prefill_sizes=(128, 512), decode_tokens=16,
                           memory_tokens=512, gui_sizes=(256, 1024), gui_steps=6, head_tokens=1024,
                           stability_runs=10)
    return BenchConfig(model=model, quick=False)


def fit_to_context(config: BenchConfig, context: int) -> BenchConfig:
    """Shrink sizes that do not fit the model's context (tiny test models have 512 positions)."""
    room = context - max(config.decode_tokens, config.gui_steps) - 8

    def fit(sizes):
        return tuple(sorted({min(s, room) for s in sizes}))

    return replace(config, prefill_sizes=fit(config.prefill_sizes), gui_sizes=fit(config.gui_sizes),
                   memory_tokens=min(config.memory_tokens, room), head_tokens=min(config.head_tokens, room))


# --- helpers -------------------------------------------------------------------------------------
def rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing: Linux fallback
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")


_TOPICS = ("cats", "rivers", "the moon", "bread", "trains", "music", "glaciers")


def measure_stability(session, runs: int) -> dict:
    """Resident memory before and after `runs` consecutive short runs (the last run kept, as the app does)."""
    from .core.api import run_request
    from .core.events import GenerationSettings, RunRequest

    def one(i: int):
        request = RunRequest(prompt=f"Run number {i}: tell me something about {_TOPICS[i % len(_TOPICS)]}.",
                             settings=GenerationSettings(max_new_tokens=4, stop_at_eos=False))
        return run_request(session, request)

    last = one(-1)  # warm-up
    gc.collect()
    start = rss_bytes()
    for i in range(runs):
        last = one(i)
    del last
    gc.collect()
    end = rss_bytes()
    return {"runs": runs, "rss_start_mb": start / 1e6, "rss_end_mb": end / 1e6, "growth_mb": (end - start) / 1e6}


# --- report ------------------------------------------------------------------------------------------
def machine() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def machine_line(results: dict) -> str:
    meta, m = results["meta"], results["meta"]["machine"]
    return (f"{meta['model']}{' (--quick)' if meta['quick'] else ''}, {meta['date']}: {m['cpu']}, {m['cores']} cores "
            f"({m['torch_threads']} torch threads), {m['platform']}, Python {m['python']}, torch {m['torch']}, "
            f"transformers {m['transformers']}; suite took {meta['duration_s']:.0f} s.")


def lookup(results: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def checks(results: dict) -> dict:
    out = {}
    for name, (path, op, target, unit) in TARGETS.items():
        value = lookup(results, path)
        ok = None if value is None else (value >= target if op == ">=" else value <= target)
        out[name] = {"value": value, "target": f"{op} {target:g}{' ' + unit if unit != 'x' else 'x'}", "ok": ok}
    return out


def table(results: dict) -> str:
    """The results as a markdown table (figures, then the targets)."""
    rows = [("figure", "plain", "instrumented", "ratio")]
    load = results["load"]
    rows.append(("load (first / cached), s", f"{load['first_s']:.2f}", f"{load['cached_s']:.2f}",
                 f"{load['speedup']:.0f}x faster"))
    for v in results["prefill"]["sizes"].values():
        rows.append((f"prefill {v['tokens']} tokens, ms (plain: logits at every position)", f"{v['plain_ms']:.0f}",
                     f"{v['instrumented_ms']:.0f}", f"{v['ratio']:.2f}x"))
        rows.append((f"prefill {v['tokens']} tokens, ms (plain: last logits only)",
                     f"{v['plain_last_logits_ms']:.0f}", f"{v['instrumented_ms']:.0f}",
                     f"{v['ratio_vs_last_logits']:.2f}x"))
    d = results["decode"]
    rows.append((f"decode {d['new_tokens']} tokens, tokens/s", f"{d['plain_tokens_per_s']:.1f}",
                 f"{d['instrumented_tokens_per_s']:.1f}", f"{d['ratio']:.2f}x"))
    m = results["memory"]
    rows.append((f"memory at {m['tokens']} tokens, MiB (eager / capture)", f"{m['eager_bytes'] / 2**20:,.0f}",
                 f"{m['capture_bytes'] / 2**20:,.0f}", f"{m['ratio']:.1%}"))
    gui = results["gui"]
    for v in gui.get("sizes", {}).values():
        rows.append((f"GUI redraw per step at {v['tokens']} tokens, ms (median / p95)", f"{v['median_ms']:.1f}",
                     f"{v['p95_ms']:.1f}", ""))
    head = gui.get("head_select")
    if head:
        rows.append((f"select a head at {head['tokens']} tokens, ms (median / max)", f"{head['median_ms']:.0f}",
                     f"{head['max_ms']:.0f}", ""))
    streaming = gui.get("redraw_streaming")
    if streaming:
        rows.append((f"GUI redraw per frame at {streaming['tokens']} tokens, engine streaming, ms (median / p95)",
                     f"{streaming['median_ms']:.1f}", f"{streaming['p95_ms']:.1f}", ""))
        first = streaming.get("first_run")
        if first:
            rows.append((f"... the first run at {streaming['tokens']} tokens (token texts measured, glyphs drawn "
                         "for the first time), ms (median / p95)", f"{first['median_ms']:.1f}",
                         f"{first['p95_ms']:.1f}", ""))
        if "lag_median_ms" in streaming:
            rows.append((f"a streamed step on every visible panel at {streaming['tokens']} tokens, ms after it arrived "
                         "(median / p95)", f"{streaming['lag_median_ms']:.0f}", f"{streaming['lag_p95_ms']:.0f}", ""))
    stalls, replay = gui.get("stalls") or {}, (gui.get("stalls_replay") or {}).get("per_view_ms", {})
    for view in dict.fromkeys([*replay, *stalls.get("per_view_ms", {})]):  # panels alone | engine streaming
        alone, live = replay.get(view), stalls.get("per_view_ms", {}).get(view)
        rows.append((f"longest GUI stall with {view} showing, ms (panels alone / engine streaming)",
                     "-" if alone is None else f"{alone:.0f}", "-" if live is None else f"{live:.0f}", ""))
    s = results["stability"]
    rows.append((f"RSS over {s['runs']} runs, MB (start / end)", f"{s['rss_start_mb']:.0f}",
                 f"{s['rss_end_mb']:.0f}", f"{s['growth_mb']:+.1f} MB"))
    lines = markdown_table(rows)
    if results.get("live"):
        from .ui.bench_live import rows as live_rows

        lines += ["", *markdown_table([("window vs headless (engine process, best of rounds)", "headless", "window",
                                        "window / headless"), *live_rows(results["live"])])]
    lines.append("")
    target_rows = [("target", "measured", "target", "met")]
    for name, c in results["checks"].items():
        value = "-" if c["value"] is None else f"{c['value']:.3g}"
        target_rows.append((name, value, c["target"], {True: "yes", False: "NO", None: "-"}[c["ok"]]))
    lines += markdown_table(target_rows)
    if gui.get("errors"):
        lines += ["", "Panels skipped or failing: " + "; ".join(f"{k}: {v}" for k, v in gui["errors"].items())]
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------------
def run_suite(config: BenchConfig, log=print) -> dict:
    from .core.runner import Session
    from .ui.bench_gui import measure_gui

    started = time.perf_counter()
    log(f"loading {config.model}")
    session = Session(load_model(config.model))
    config = fit_to_context(config, session.info.context_length)
    results: dict = {"meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                              "model": config.model, "quick": config.quick, "config": asdict(config),
                              "machine": machine()}}
    log("1/7 load: first (temporary cache) vs cached")
    results["load"] = measure_load(config.model, config.repeats)
    log(f"2/7 prefill at {config.prefill_sizes} tokens")
    results["prefill"], runs = measure_prefill(session, config.prefill_sizes, config.repeats)
    log(f"3/7 decode {config.decode_tokens} tokens")
    results["decode"] = measure_decode(session, config.decode_tokens, config.repeats)
    log(f"4/7 capture memory at {config.memory_tokens} tokens")
    run = runs.get(config.memory_tokens)
    if run is None:
        from .core.api import run_request
        from .core.events import RunRequest

        run = run_request(session, RunRequest(prompt=prompt_of(session.loaded.tokenizer, config.memory_tokens)[0]))
    results["memory"] = measure_memory(run)
    del run, runs
    gc.collect()
    log(f"5/7 GUI redraw at {config.gui_sizes} tokens, head selection at {config.head_tokens}")
    results["gui"] = measure_gui(session, config.gui_sizes, config.gui_steps, config.head_tokens, prompt_of, log=log)
    gc.collect()
    log(f"6/7 memory over {config.stability_runs} runs")
    results["stability"] = measure_stability(session, config.stability_runs)
    log("7/7 the window against the headless API, both on the engine process")
    from .ui.bench_live import measure_live, worst_ratios

    del session
    gc.collect()
    results["live"] = measure_live(config.model, rounds=1 if config.quick else 3, log=log)
    results["live"]["worst"] = worst_ratios(results["live"])
    results["checks"] = checks(results)
    results["meta"]["duration_s"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lm-explorer bench", description="Measure capture overhead and GUI speed.")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (under 2 minutes)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--model", default=catalogue.default_model_name())
    p.add_argument("--markdown", help="write the table (with the machine it ran on) to this markdown file")
    p.add_argument("--no-save", action="store_true", help="do not update the copy the Pipeline panel reads")
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")  # offscreen plugin chatter
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the table

    def log(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    results = run_suite(config_for(args.model, args.quick), log=log)
    text = json.dumps(results, indent=1)
    print(table(results))
    print("\n" + machine_line(results))
    if args.markdown:
        Path(args.markdown).write_text(f"{table(results)}\n\n{machine_line(results)}\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    if not args.no_save:
        with contextlib.suppress(OSError):
            cache_root().mkdir(parents=True, exist_ok=True)
            (cache_root() / BENCH_FILE).write_text(text, encoding="utf-8")
    return 0
