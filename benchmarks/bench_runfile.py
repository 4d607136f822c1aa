"""What a saved run costs, array by array (issue 18, item 6), on the default model.

Captures a 45-token run of SmolLM2-135M-Instruct (the prompt below, 36 new tokens, greedy), saves it
as the app does (no vocabulary matrix) twice: as before (every array as captured in float16, every
vocabulary text in the header) and as now (activations encoded, core/runfile_codec.py; the texts of
the ids the run names). Prints each array's raw and stored bytes in both files, and the decoded
arrays' largest error: element-wise relative to the row's largest magnitude, and the row's L2 error
relative to its norm (the stated bound is 2.5%).

    .venv/bin/python benchmarks/bench_runfile.py [--new 36] [--model NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper."


def member_sizes(path: Path) -> dict[str, tuple[int, int]]:
    """array name -> (raw bytes, stored bytes), an encoded array's parts summed under its name."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy").split(".")[0]
            out[name][0] += info.file_size
            out[name][1] += info.compress_size
    return {k: (v[0], v[1]) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    import torch

    from explorer.core.api import run_request
    from explorer.core.arrays import ACTIVATIONS
    from explorer.core.events import GenerationSettings, RunRequest
    from explorer.core.models import load_model
    from explorer.core.runfile import load_run, row_errors
    from explorer.core.runfile_write import save_run
    from explorer.core.runner import Session

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--new", type=int, default=36, help="new tokens (36 -> a 45-token run with the prompt)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    run = run_request(Session(load_model(args.model)),
                      RunRequest(PROMPT, settings=GenerationSettings(max_new_tokens=args.new, stop_at_eos=False)))
    with tempfile.TemporaryDirectory() as tmp:
        before, after = Path(tmp) / "exact.npz", Path(tmp) / "compact.npz"
        save_run(run, before, include_head=False, exact=True, all_texts=True)
        run.save(after, include_head=False)
        old, new = member_sizes(before), member_sizes(after)
        loaded = load_run(after)
        totals = before.stat().st_size, after.stat().st_size
    print(f"{args.model}: {run.n_tokens} tokens ({run.n_prompt} prompt), saved without the vocabulary matrix")
    print(f"{'array':18s} {'raw before':>11s} {'stored before':>14s} {'raw after':>10s} {'stored after':>13s} "
          f"{'max err / row max':>18s} {'max row L2 err':>15s}")
    for name in sorted(old, key=lambda k: -old[k][1]):
        err = l2 = ""
        if name in ACTIVATIONS:
            a, b = run.array(name).astype(np.float32), loaded.array(name).astype(np.float32)
            err = f"{(np.abs(a - b).max(-1) / np.abs(a).max(-1).clip(1e-30)).max():.4f}"
            l2 = f"{row_errors(run.array(name), loaded.array(name)).max():.4f}"
        print(f"{name:18s} {old[name][0]:>11,} {old[name][1]:>14,} {new[name][0]:>10,} {new[name][1]:>13,} {err:>18s} "
              f"{l2:>15s}")
    print(f"{'file':18s} {'':>11s} {totals[0]:>14,} {'':>10s} {totals[1]:>13,}   "
          f"({totals[0] / 2**20:.2f} MiB -> {totals[1] / 2**20:.2f} MiB, {totals[0] / totals[1]:.1f}x smaller)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
