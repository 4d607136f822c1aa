"""The trainer: nanoGPT-style loop on the standard library's bytes, with a wall-time budget,
deterministic with a seed (init, batches; the learning rate depends on the step, never on the clock),
progress callbacks, cancel (a threading.Event; the CLI maps Ctrl+C to it) and resume.

Loss is reported in bits per byte (nats / ln 2: the tokenizer is byte-level).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import InputError
from . import checkpoint
from .config import ARCHS, LabConfig
from .data import Corpus, load_corpus, load_tokenizer
from .model import LabForCausalLM

LN2 = math.log(2.0)
LIVE_METRICS = "metrics.live.json"  # written at every evaluation; metrics.json only with a checkpoint

SIZES: dict[str, dict] = {
    "default": {"hidden_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4},
    "small": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4},
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mhc_streams": 2,
             "attnres_block_size": 2, "engram_table_size": 97, "engram_dim": 8},
}


@dataclass
class TrainConfig:
    arch: str = "plain"
    size: str = "default"
    minutes: float = 10.0
    seed: int = 0
    max_steps: int | None = None
    batch: int = 16
    seq: int = 256
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.01
    eval_every: int = 25  # steps
    eval_batches: int = 4
    eval_batch: int = 8
    max_corpus_bytes: int | None = None  # tests: read only part of the standard library
    routing_every: int = 2  # record a routing snapshot every this many evaluations
    device: str = "auto"  # "auto": a CUDA GPU when present, else the CPU (never required)
    tokenizer: str = "bytes"  # or a model whose tokenizer to use, e.g. "smollm2-135m-instruct" (V = 49,152)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise InputError(f"unknown architecture '{self.arch}' (choose from {', '.join(ARCHS)})")
        if self.size not in SIZES:
            raise InputError(f"unknown size '{self.size}' (choose from {', '.join(SIZES)})")
        checks = {"minutes": 0 <= self.minutes <= 24 * 60, "batch": 1 <= self.batch <= 4096,
                  "seq": 8 <= self.seq <= 8192, "eval_every": self.eval_every >= 1,
                  "eval_batches": self.eval_batches >= 1, "max_steps": self.max_steps is None or self.max_steps >= 0,
                  "lr": 0 < self.lr < 1, "warmup": self.warmup >= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InputError(f"unusable training setting(s): {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        if self.minutes == 0 and self.max_steps is None:
            raise InputError("give a time budget (minutes > 0) or a number of steps")


def model_config(arch: str, size: str = "default", max_positions: int = 1024,
                 memory_share: float = 0.25, vocab_size: int = 256) -> LabConfig:
    """The variant's config. Engram is matched to plain's parameter count, as the paper compares at equal
    parameters: its tables get `memory_share` of plain's MLP parameters (the paper's U-shaped law puts the
    best share of sparse parameters in memory near 20-25%; here the trade is against dense MLP width, not
    MoE experts, so it is only an analogy) and the MLP shrinks to pay for the tables and projections."""
    base = dict(SIZES[size], max_position_embeddings=max_positions, vocab_size=vocab_size)
    if arch != "engram":
        return LabConfig(depth=arch, **base)
    plain = LabConfig(depth="plain", **base)
    target = _n_params(plain)
    n_tables = len(plain.engram_orders) * plain.engram_hash_heads
    dim = max(8, plain.hidden_size // 4)
    mlp = 3 * plain.hidden_size * plain.intermediate_size * plain.num_hidden_layers
    table = _prime_at_least(max(31, int(memory_share * mlp / (n_tables * dim))))
    mem = dict(base, engram_table_size=table, engram_dim=dim)
    best = None
    for inter in range(16, plain.intermediate_size + 1, 8):
        cfg = LabConfig(depth="engram", intermediate_size=inter, **mem)
        gap = abs(_n_params(cfg) - target)
        if best is None or gap < best[0]:
            best = (gap, cfg)
    return best[1]


def _prime_at_least(n: int) -> int:
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def _n_params(cfg: LabConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in LabForCausalLM(cfg).parameters())


@dataclass
class Progress:
    step: int
    tokens: int
    elapsed_s: float
    train_bpb: float
    heldout_bpb: float | None
    message: str = ""


@dataclass
class TrainResult:
    out: Path
    metrics: dict = field(default_factory=dict)
    cancelled: bool = False


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant: a step's update never depends on the time budget."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup)


@torch.no_grad()
def evaluate(model: LabForCausalLM, batches: list[torch.Tensor], bytes_per_token: float = 1.0) -> float:
    """Mean held-out loss in bits per byte over fixed windows (bits per token / bytes per token)."""
    model.eval()
    total = 0.0
    for rows in batches:
        total += float(model(rows[:, :-1], labels=rows[:, 1:], use_cache=False).loss)
    model.train()
    return total / len(batches) / LN2 / bytes_per_token


def train(cfg: TrainConfig, out: Path, *, resume: bool = False, corpus: Corpus | None = None,
          on_progress: Callable[[Progress], None] | None = None,
          cancel: threading.Event | None = None) -> TrainResult:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(cfg.tokenizer)
    corpus = corpus or load_corpus(max_bytes=cfg.max_corpus_bytes, tokenizer=tokenizer)
    vocab = len(tokenizer) if tokenizer is not None else 256
    torch.manual_seed(cfg.seed)
    if resume and (out / "train_state.json").is_file():
        model = checkpoint.load_lab_model(out)
        model.train().requires_grad_(True)
    else:
        resume = False
        model = LabForCausalLM(model_config(cfg.arch, cfg.size, max(1024, cfg.seq), vocab_size=vocab))
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    model.to(device).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "tables" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "tables" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(cfg.seed)
    metrics = {"arch": cfg.arch, "params": sum(p.numel() for p in model.parameters()), "tokens_per_s": 0.0,
               "heldout_bpb": [], "train_bpb": [], "heldout_bpb_time": [], "routing": [],
               "seed": cfg.seed, "train_config": asdict(cfg), "n_layers": model.config.num_hidden_layers}
    step, tokens, elapsed = 0, 0, 0.0
    if resume:
        meta = checkpoint.load_train_state(out, opt)
        step, tokens, elapsed = meta["step"], meta["tokens"], meta["elapsed_s"]
        rng.bit_generator.state = meta["rng"]
        metrics = checkpoint.read_json(out / "metrics.json")
    held = [b.to(device) for b in corpus.heldout_batches(cfg.eval_batch, cfg.seq, cfg.eval_batches)]
    budget = cfg.minutes * 60.0
    per_step = cfg.batch * cfg.seq
    running, n_running, n_evals = 0.0, 0, len(metrics["heldout_bpb"])
    train_time = elapsed  # seconds spent in training steps (evaluations excluded), cumulated over resumes
    if not resume:
        _record_eval(model, held, metrics, tokens, train_time, None, corpus.heldout_bytes_per_token)
    started = time.perf_counter() - elapsed
    cancelled = False
    while True:
        if cancel is not None and cancel.is_set():
            cancelled = True
            break
        if (cfg.max_steps is not None and step >= cfg.max_steps) or (cfg.minutes > 0 and train_time >= budget):
            break
        t0 = time.perf_counter()
        rows = corpus.batch(rng, cfg.batch, cfg.seq).to(device)  # [B, seq + 1]
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss = model(rows[:, :-1], labels=rows[:, 1:], use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += per_step
        train_time += time.perf_counter() - t0
        running += loss.item() / LN2 / corpus.train_bytes_per_token
        n_running += 1
        if step % cfg.eval_every == 0:
            metrics["train_bpb"].append([tokens, running / n_running])
            running, n_running = 0.0, 0
            n_evals += 1
            bpb = _record_eval(model, held, metrics, tokens, train_time,
                               routing=n_evals % cfg.routing_every == 0, bytes_per_token=corpus.heldout_bytes_per_token)
            metrics["tokens_per_s"] = tokens / max(train_time, 1e-9)
            checkpoint.write_json(out / LIVE_METRICS, metrics)  # the panel's live curves and routing snapshots
            if on_progress is not None:
                on_progress(Progress(step, tokens, train_time, metrics["train_bpb"][-1][1], bpb))
    if n_running:
        metrics["train_bpb"].append([tokens, running / n_running])
    if not metrics["heldout_bpb"] or metrics["heldout_bpb"][-1][0] != tokens:
        _record_eval(model, held, metrics, tokens, train_time, routing=True,
                     bytes_per_token=corpus.heldout_bytes_per_token)
    metrics["tokens_per_s"] = tokens / max(train_time, 1e-9)
    metrics.update(steps=step, tokens_seen=tokens, train_seconds=train_time,
                   wall_seconds=time.perf_counter() - started, cancelled=cancelled)
    save(model, opt, out, metrics, step, tokens, train_time, rng, tokenizer)
    metrics["device"] = str(device)
    if on_progress is not None:
        on_progress(Progress(step, tokens, train_time, metrics["train_bpb"][-1][1] if metrics["train_bpb"] else
                             float("nan"), metrics["heldout_bpb"][-1][1], "saved"))
    return TrainResult(out, metrics, cancelled)


def _record_eval(model, held, metrics, tokens, train_time, routing, bytes_per_token=1.0) -> float:
    bpb = evaluate(model, held, bytes_per_token)
    metrics["heldout_bpb"].append([tokens, bpb])
    metrics["heldout_bpb_time"].append([train_time, bpb])
    if routing or routing is None:
        from .routing import routing_summary

        metrics["routing"].append({"tokens": tokens, **routing_summary(model, held[0][:2, :-1])})
    return bpb


def save(model, opt, out: Path, metrics: dict, step: int, tokens: int, train_time: float, rng,
         tokenizer=None) -> None:
    checkpoint.save_model(model, out, tokenizer)
    checkpoint.write_json(out / "metrics.json", metrics)
    checkpoint.save_train_state(out, opt, {"step": step, "tokens": tokens, "elapsed_s": train_time,
                                           "rng": rng.bit_generator.state})
