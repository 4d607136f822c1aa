"""`lm-explorer lab train --arch A --minutes M --seed S --out DIR [--resume] [--max-steps N] [--size S]`."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from .config import ARCHS


def default_out(arch: str, size: str, seed: int) -> Path:
    from ..core.models import cache_root

    return cache_root() / "lab" / f"{arch}-{size}-seed{seed}"  # where the Depth lab panel looks


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lm-explorer lab", description="Depth lab: train small depth-addressable "
                                "Transformers on the Python standard library's source (offline).")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one variant; writes model.safetensors, config.json, metrics.json")
    t.add_argument("--arch", choices=ARCHS, default="plain")
    t.add_argument("--minutes", type=float, default=10.0, help="training wall time (evaluations excluded)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, help="output folder (default: the user cache's lab/ARCH-seedS)")
    t.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--size", choices=("default", "small", "tiny"), default="default")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--seq", type=int, default=256)
    t.add_argument("--eval-every", type=int, default=25)
    t.add_argument("--threads", type=int, default=1, help="torch threads (one often beats two here)")
    t.add_argument("--corpus-bytes", type=int, help="read only this many bytes of the standard library")
    t.add_argument("--tokenizer", default="bytes", help="bytes (V = 256, default) or a model whose tokenizer "
                   "to use, e.g. smollm2-135m-instruct (V = 49,152: the embedding dwarfs the body, ~24x slower)")
    t.add_argument("--device", default="auto", help="auto (a CUDA GPU when present, else the CPU), cpu, cuda")
    args = p.parse_args(argv)
    return cmd_train(args)


def cmd_train(args) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from .train import TrainConfig, train

    torch.set_num_threads(max(1, args.threads))
    cfg = TrainConfig(arch=args.arch, size=args.size, minutes=args.minutes, seed=args.seed,
                      max_steps=args.max_steps, batch=args.batch, seq=args.seq, eval_every=args.eval_every,
                      max_corpus_bytes=args.corpus_bytes, device=args.device,
                      tokenizer=args.tokenizer)
    out = args.out or default_out(args.arch, args.size, args.seed)
    cancel = threading.Event()

    def show(p) -> None:
        held = "" if p.heldout_bpb is None else f"  held-out {p.heldout_bpb:.3f} bpb"
        print(f"\r{args.arch}: step {p.step}  {p.tokens:,} tokens  {p.elapsed_s:6.1f} s  "
              f"train {p.train_bpb:.3f} bpb{held} {p.message}", end="", file=sys.stderr, flush=True)

    # Ctrl+C sets the cancel flag: the step in flight finishes, then the checkpoint is saved
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    try:
        result = train(cfg, out, resume=args.resume, on_progress=show, cancel=cancel)
    finally:
        signal.signal(signal.SIGINT, previous)
    print(file=sys.stderr)
    m = result.metrics
    state = "cancelled, checkpoint saved" if result.cancelled else "done"
    print(f"{args.arch}: {state}: {m['steps']} steps, {m['tokens_seen']:,} tokens, {m['tokens_per_s']:,.0f} tokens/s, "
          f"held-out {m['heldout_bpb'][0][1]:.3f} -> {m['heldout_bpb'][-1][1]:.3f} bits/byte, {m['params']:,} params")
    print(f"saved to {out}")
    return 0
