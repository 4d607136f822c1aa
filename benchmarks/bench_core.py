"""Core benchmark: instrumented capture vs plain transformers on the default model (prints a table).

    .venv/bin/python benchmarks/bench_core.py [--model NAME] [--repeats 3] [--quick] [--json out.json]

Targets: instrumented decode >= 0.85x plain `generate`, prefill <= 1.15x a plain sdpa forward,
capture memory <= 25% of eager output_attentions + output_hidden_states at 2,048 tokens.
The measuring functions live in explorer/core/benchmarks.py (shared with `lm-explorer bench`).
"""

from __future__ import annotations

import argparse
import json
import sys

from explorer.core.benchmarks import run_core, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smaller sizes, one repetition")
    p.add_argument("--json")
    args = p.parse_args(argv)
    sizes, new_tokens, repeats = ((128, 512), 16, 1) if args.quick else ((512, 2048), 64, args.repeats)
    results = run_core(args.model, sizes=sizes, new_tokens=new_tokens, repeats=repeats,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return 0 if all(c["ok"] for c in results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
