"""Stop latency during a long prefill's vocabulary scoring (issue 16, item 11) on the default model.

The prefill's last layer is followed by scoring every position over the vocabulary (entropy, top-k,
each token's logprob and rank): about 20 s for 3,000 tokens on 2 busy cores. Stop is pressed at a few
moments into that scoring; the figure is the time from Stop to the run raising Cancelled (the runner
checks the cancel flag between row blocks, so it is bounded by one 512-row lm_head product).

    .venv/bin/python benchmarks/bench_stop.py [--words 770] [--delays 0.05 0.5 1.5] [--model NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from explorer.core.errors import Cancelled  # noqa: E402
from explorer.core.events import GenerationSettings, RunRequest  # noqa: E402
from explorer.core.models import load_model  # noqa: E402
from explorer.core.runner import Session  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--words", type=int, default=770, help="prompt words (770 -> about 3,000 SmolLM2 tokens)")
    p.add_argument("--delays", type=float, nargs="+", default=[0.05, 0.5, 1.5])
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    loaded = load_model(args.model)
    session = Session(loaded)
    head = session.adapter.lm_head(loaded.model)
    prompt = " ".join(f"word{i}" for i in range(args.words))
    print(f"{args.model}: {len(loaded.tokenizer(prompt)['input_ids'])} prompt tokens")
    for delay in args.delays:
        cancel, marks = threading.Event(), {}

        def hook(module, inputs, output, cancel=cancel, marks=marks, delay=delay):
            if "forward" in marks:
                return
            marks["forward"] = time.perf_counter()  # the model's own lm_head call: the last layer is done

            def press_stop():
                time.sleep(delay)
                marks["stop"] = time.perf_counter()
                cancel.set()
            threading.Thread(target=press_stop, daemon=True).start()

        handle = head.register_forward_hook(hook)
        try:
            for _ in session.stream(RunRequest(prompt, settings=GenerationSettings(max_new_tokens=1)), cancel=cancel):
                pass
            print(f"Stop {delay:.2f} s after the last layer: the run had finished "
                  f"({time.perf_counter() - marks['forward']:.2f} s of scoring and one token)")
        except Cancelled:
            print(f"Stop {delay:.2f} s after the last layer: cancelled {time.perf_counter() - marks['stop']:.2f} s "
                  "after Stop")
        finally:
            handle.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
