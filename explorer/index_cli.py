"""`lm-explorer index build FOLDER [--out INDEX_DIR]` and `lm-explorer index search INDEX_DIR QUESTION`."""

from __future__ import annotations

import argparse
import sys
import threading


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lm-explorer index", description="Retrieval indexes (MiniLM + LanceDB).")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build or update the index of a folder (only changed files are embedded)")
    b.add_argument("folder", help="a folder of .txt/.md/.rst/.py files, or 'stdlib' for the Python standard "
                                  "library's docstrings")
    b.add_argument("--out", help="the index folder (default: the user cache, named after the folder)")
    b.add_argument("--budget", type=int, default=200, help="word pieces per chunk (at most 256)")
    b.add_argument("--overlap", type=int, default=32, help="word pieces a chunk repeats from the one before")
    s = sub.add_parser("search", help="the chunks closest to a question")
    s.add_argument("index")
    s.add_argument("question")
    s.add_argument("-k", type=int, default=3)
    args = p.parse_args(argv)
    return _build(args) if args.command == "build" else _search(args)


def _build(args) -> int:
    from .cli import _progress_printer
    from .core.errors import InputError
    from .core.retrieval.index import build_index

    if not 16 <= args.budget <= 256 or not 0 <= args.overlap < args.budget:
        raise InputError("--budget must be 16 to 256 word pieces and --overlap from 0 to below the budget.")
    show = _progress_printer("index")

    def skipped(source: str, reason: str) -> None:
        print(f"\nskipped {source}: {reason}", file=sys.stderr)

    cancel = threading.Event()
    try:
        report = build_index(args.folder, args.out, budget=args.budget, overlap=args.overlap, progress=show,
                             cancel=cancel, on_skip=skipped)
    except KeyboardInterrupt:  # what was finished is kept (the manifest lists it)
        print("\nindex: interrupted; the files finished so far are kept", file=sys.stderr)
        return 130
    print(report.summary())
    return 0


def _search(args) -> int:
    from .core.retrieval.index import open_index
    from .core.retrieval.rag import check_k

    for i, chunk in enumerate(open_index(args.index).search(args.question, check_k(args.k)), 1):
        head = chunk.text.strip().splitlines()[0][:100] if chunk.text.strip() else ""
        print(f"{i}. {chunk.score:.3f}  {chunk.source}:{chunk.line}  {head}")
    return 0
