"""`lm-explorer lens fit ...` and `lm-explorer lens show ...`: fit a tuned or Jacobian lens, read a prompt through one.

    lm-explorer lens fit --kind tuned --model smollm2-135m-instruct --minutes 3 --out lenses/tuned
    lm-explorer lens show --lens lenses/tuned --prompt "The capital of France is"

`fit` writes DIR/lens.safetensors and DIR/metrics.json (held-out KL per layer for the logit lens and the
fitted lens); Ctrl-C cancels and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import threading

from .cli import _progress_printer
from .core.naming import depth_label


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("fit", "show"):
        print("usage: lm-explorer lens {fit,show} ...  (fit --help / show --help for the options)", file=sys.stderr)
        return 2
    return {"fit": cmd_fit, "show": cmd_show}[argv[0]](argv[1:])


def cmd_fit(argv: list[str]) -> int:
    from .core import catalogue
    from .core.lens_fit import FitConfig

    defaults = FitConfig()
    p = argparse.ArgumentParser(prog="lm-explorer lens fit",
                                description="Fit a tuned or Jacobian lens on the Python standard library's text.")
    p.add_argument("--kind", choices=("tuned", "jacobian"), required=True)
    p.add_argument("--model", default=catalogue.default_model_name())
    p.add_argument("--minutes", type=float, default=defaults.minutes, help="fitting time (evaluation comes on top)")
    p.add_argument("--out", required=True, help="folder for lens.safetensors and metrics.json")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--seq-len", type=int, default=defaults.seq_len)
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--eval-windows", type=int, default=defaults.eval_windows)
    p.add_argument("--seed", type=int, default=defaults.seed)
    args = p.parse_args(argv)
    import torch

    from .core.errors import Cancelled
    from .core.lens_fit import fit_and_save, summary_lines
    from .core.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, on_progress=_progress_printer("load"))
    config = FitConfig(kind=args.kind, minutes=args.minutes, seq_len=args.seq_len, batch=args.batch,
                       eval_windows=args.eval_windows, seed=args.seed)
    cancel = threading.Event()
    try:
        _lens, metrics = fit_and_save(loaded, config, args.out, on_progress=_progress_printer("fit"), cancel=cancel)
    except KeyboardInterrupt:
        cancel.set()
        print("\ncancelled: nothing written", file=sys.stderr)
        return 130
    except Cancelled:
        print("\ncancelled: nothing written", file=sys.stderr)
        return 130
    for line in summary_lines(metrics):
        print(line)
    print(f"wrote {args.out}/lens.safetensors and {args.out}/metrics.json")
    return 0


def cmd_show(argv: list[str]) -> int:
    from .core import catalogue

    p = argparse.ArgumentParser(prog="lm-explorer lens show",
                                description="Top tokens of a fitted lens at every layer for one position of a prompt.")
    p.add_argument("--lens", required=True, help="a folder written by `lens fit`")
    p.add_argument("--prompt", required=True)
    p.add_argument("--model", default=catalogue.default_model_name())
    p.add_argument("--position", type=int, default=-1, help="token position (default: the last)")
    p.add_argument("--top", type=int, default=3)
    args = p.parse_args(argv)
    from .core.api import capture
    from .core.lens_store import top_tokens

    run = capture(args.prompt, args.model, lens=args.lens, lens_top_k=args.top)
    cols = run.lens
    pos = args.position if args.position >= 0 else run.n_tokens + args.position
    names = top_tokens(run, cols)
    print(f"{cols.label} at position {pos} ({run.tokens[pos].text!r}):")
    for row in range(cols.top_ids.shape[0]):
        depth = depth_label(row)
        tops = "  ".join(f"{t!r} {p:.2f}" for t, p in zip(names[row][pos], cols.top_probs[row, pos], strict=True))
        print(f"  {depth:<16} KL {cols.kl[row, pos]:7.3f}  {tops}")
    return 0
