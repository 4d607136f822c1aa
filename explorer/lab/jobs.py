"""What the GUI (or a notebook) needs around the trainer, without Qt: the checkpoints trained so far,
a training job in a process of its own (progress, cancel), and a probe that reads a checkpoint's
learned routing and the ablation-measured importance of each source as numpy arrays."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .train import Progress, TrainConfig, TrainResult

log = logging.getLogger(__name__)

PROBE_TEXT = ("def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
              "    return a\n\n\nclass Stack:\n    def __init__(self):\n        self.items = []\n")


def lab_root() -> Path:
    from ..core.models import cache_root

    return cache_root() / "lab"


@dataclass
class LabEntry:
    folder: Path
    arch: str
    seed: int
    metrics: dict

    @property
    def label(self) -> str:
        return f"{self.arch} (seed {self.seed})"


_READ: dict[Path, tuple[tuple[int, int], LabEntry]] = {}  # metrics file -> ((mtime, size), entry) already read


def list_checkpoints(root: Path | None = None) -> list[LabEntry]:
    """Every folder under `root` with a readable metrics.json (damaged ones are skipped and logged)."""
    from ..core.errors import ModelLoadError
    from .checkpoint import read_json

    root = Path(root or lab_root())
    entries = []
    for metrics_file in sorted(root.glob("*/metrics.json")):
        try:
            st = metrics_file.stat()
            key = (st.st_mtime_ns, st.st_size)
            cached = _READ.get(metrics_file)
            if cached is not None and cached[0] == key:  # the panel polls while training: read a file once
                entries.append(cached[1])
                continue
            m = read_json(metrics_file)
            if not isinstance(m, dict) or not isinstance(m.get("heldout_bpb"), list):
                raise ModelLoadError(f"{metrics_file} has no held-out curve")
            entry = LabEntry(metrics_file.parent, str(m.get("arch", "?")), int(m.get("seed", 0)), m)
            _READ[metrics_file] = (key, entry)
            entries.append(entry)
        except (OSError, ModelLoadError, ValueError, TypeError) as exc:
            log.warning("skipping lab folder %s: %s", metrics_file.parent, exc)
    return entries


@dataclass
class TrainJob:
    """One training run in a process of its own (core/side_jobs.py: the window's process never runs torch).
    Poll `progress` / `done`; `cancel()` stops after the current step and saves a checkpoint."""

    config: TrainConfig
    out: Path
    resume: bool = False
    progress: Progress | None = None
    history: list[Progress] = field(default_factory=list)
    result: TrainResult | None = None
    error: str | None = None
    _side: object | None = None

    def start(self) -> TrainJob:
        from ..core.side_jobs import SideJob
        from .engine_jobs import TrainLab

        self._side = SideJob(TrainLab(self.config, str(self.out), self.resume), self._event,
                             name=f"lab-train-{self.config.arch}")
        return self

    def _event(self, event) -> None:  # on the side process' reader thread
        from ..core import engine as eng

        if isinstance(event, eng.Progress) and isinstance(event.detail, Progress):
            self.progress = event.detail
            self.history.append(event.detail)
        elif isinstance(event, eng.Done):
            self.result = event.result
        elif isinstance(event, eng.Failed):
            log.warning("lab training failed: %s", event.message)
            self.error = event.message.split("\n\n")[0]
        elif isinstance(event, eng.JobCancelled):
            self.error = "cancelled before it started"

    def cancel(self) -> None:
        if self._side is not None:
            self._side.cancel()

    @property
    def done(self) -> bool:
        return self._side is not None and self._side.done

    def join(self, timeout: float | None = None) -> None:
        if self._side is not None:
            self._side.wait(timeout)


@dataclass
class Probe:
    arch: str
    tokens: list[str]  # readable byte per position
    routing: dict[str, np.ndarray]
    ablation: dict[str, np.ndarray]
    n_layers: int


def probe_in_process(folder: Path) -> Probe:
    """`probe` in a side process (core/side_jobs.py), so the window's process never runs the lab model."""
    from ..core.side_jobs import run_side
    from .engine_jobs import ProbeLab

    return run_side(ProbeLab(str(folder)), timeout=600)


def probe(folder: Path, text: str = PROBE_TEXT) -> Probe:
    """Load a checkpoint, record its routing over `text` and measure each source's importance."""
    import torch
    from transformers import AutoTokenizer

    from ..core.labels import readable_label
    from .checkpoint import load_lab_model
    from .routing import ablation, record

    model = load_lab_model(Path(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)  # bytes, or what it trained on
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:512], dtype=torch.long)  # [T]
    routing = record(model, ids)
    abl = ablation(model, ids.reshape(1, -1))
    tokens = [readable_label(tokenizer.decode([int(i)]), width=None) or f"<{int(i)}>" for i in ids]
    return Probe(model.config.depth, tokens, routing, abl, model.config.num_hidden_layers)
