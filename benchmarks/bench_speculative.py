"""Speculative decoding on the default model: draft acceptance and speed-up against plain decoding.

Each prompt runs plain and with each drafter, interleaved (plain, drafter 1, drafter 2, plain, ...), at
temperature 0 through the instrumented runner (every array captured, as in the app), with 1 torch thread;
the best of `--repeats` decode times counts. Decode time = the run's wall time after the prefill event.
Speed-up = plain decode ms per token / drafted decode ms per token. "same" checks that the tokens equal
plain decoding's (they must, at temperature 0).

    .venv/bin/python benchmarks/bench_speculative.py [--tokens 48] [--repeats 3] [--methods ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from explorer.core.events import GenerationSettings, RunRequest  # noqa: E402
from explorer.core.models import load_model  # noqa: E402
from explorer.core.runner import Session  # noqa: E402
from explorer.core.speculative import summarize  # noqa: E402

PROMPTS = {
    "code rewrite": ("def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + "
                     "fibonacci(n - 2)\n\nRewrite the function above with a loop instead of recursion:\n"),
    "quoted passage": ("Fix the spelling in this passage and write it out again: \"The quick brown fox jumpd over "
                       "the lazy dog. The dog did not notise, because it was sleeping in the warm afternoon sun.\""),
    "free-form": "Write a short story about a robot who learns to paint.",
}
METHODS = ["prompt-lookup", "layers", "layers:n=27,k=3"]


def timed_run(session: Session, prompt: str, tokens: int, spec: str):
    request = RunRequest(prompt, chat=True, settings=GenerationSettings(max_new_tokens=tokens), reuse_prefix=False,
                         speculative=spec)
    run = session.new_run(request)
    t_first = None
    for event in session.stream(request):
        run.apply(event)
        if t_first is None:
            t_first = time.perf_counter()
    return run, time.perf_counter() - t_first


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=METHODS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    session = Session(load_model(args.model))
    print(f"{args.model}, {args.tokens} new tokens, temperature 0, best of {args.repeats}, 1 torch thread")
    print(f"{'prompt':16s} {'method':18s} {'ms/token':>9s} {'speed-up':>8s} {'accepted':>13s} {'rate':>5s} "
          f"{'tok/pass':>8s} {'same':>5s}")
    for label, prompt in PROMPTS.items():
        best: dict[str, float] = {}
        runs = {}
        for _ in range(args.repeats):
            for spec in ["", *args.methods]:
                run, seconds = timed_run(session, prompt, args.tokens, spec)
                per_token = seconds * 1e3 / max(1, run.n_generated - 1)
                best[spec] = min(best.get(spec, float("inf")), per_token)
                runs[spec] = run
        plain = runs[""]
        print(f"{label:16s} {'plain':18s} {best['']:9.1f} {'1.00x':>8s} {'':>13s} {'':>5s} {'1.00':>8s} {'':>5s}")
        for spec in args.methods:
            s = summarize(runs[spec].drafts)
            same = runs[spec].token_ids.tolist() == plain.token_ids.tolist()
            print(f"{label:16s} {spec:18s} {best[spec]:9.1f} {best[''] / best[spec]:7.2f}x "
                  f"{f'{s.accepted}/{s.proposed}':>13s} {s.acceptance:5.2f} {s.tokens_per_step:8.2f} "
                  f"{'yes' if same else 'NO':>5s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
