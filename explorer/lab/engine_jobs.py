"""The Depth lab's engine jobs (training, probing a checkpoint), run in a side process (core/side_jobs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.engine import JobContext, handles
from .train import TrainConfig, TrainResult


@dataclass(frozen=True)
class TrainLab:
    config: TrainConfig
    out: str
    resume: bool = False


@dataclass(frozen=True)
class ProbeLab:
    """A checkpoint's routing over the probe text and each source's ablation importance (lab/jobs.py:probe)."""
    folder: str


@handles(TrainLab)
def _train(ctx: JobContext, req: TrainLab) -> TrainResult:
    from .train import train

    return train(req.config, Path(req.out), resume=req.resume, cancel=ctx.cancel,
                 on_progress=lambda p: ctx.progress(0.0, "", detail=p))


@handles(ProbeLab)
def _probe(ctx: JobContext, req: ProbeLab):
    from .jobs import probe

    return probe(Path(req.folder))
