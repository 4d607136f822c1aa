"""Fitting the tuned and Jacobian lenses on text every install has offline: the Python standard library.

Corpus: each stdlib module (tests, idlelib, site-packages left out) gives two documents, its docstrings
as prose and its source; files are split into train and held-out by a hash of their path (1 in 10
held out), so held-out KL is measured on files the fit never saw.

Tuned lens (Belrose et al. 2023): per layer l an affine translator x -> M_l x + b_l of the RMS-normalised
state x = h_l / rms(h_l), identity-initialised (a learned residual correction). Two phases in the time
budget: (1) ridge regression of the final state's normalised form h_L / rms(h_L) on x (sufficient
statistics X^T X, X^T Y accumulated over many positions: cheap, one forward pass per batch), then
(2) Adam steps on KL(final || lens) through the final norm and the unembedding (the costly part:
vocabulary-sized products per layer), for `kl_share` of the budget.

Jacobian lens (Gurnee, Sofroniew, Lindsey et al. 2026): J_l = E_p[d h_L[p] / d h_l[p]] (the per-position
Jacobian, averaged over positions; the reference implementation also sums over later target positions,
"both work as a lens"). Estimator here: Hutchinson probes with an identity control variate. For each
batch, one forward pass and one backward pass with an independent Rademacher cotangent u_p at every
position p gives, at every depth at once, g_p = J_pp^T u_p + (cross-position terms, zero-mean); then
J_l ~ I + mean_p u_p (g_p - u_p)^T, which is unbiased, and its noise scales with |J - I| rather than |J|.
The first `skip_first` positions of each window (attention sinks) are left out of the average.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .adapters import adapter_for
from .errors import Cancelled
from .lens import FITTED_KINDS, Lens, LensError, compute_lens
from .lens_corpus import Windows, documents, split_files, stdlib_files
from .lens_store import save_lens
from .models import LoadedModel
from .naming import depth_label

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class FitConfig:
    kind: str = "tuned"
    minutes: float = 3.0  # fitting budget (the held-out evaluation comes on top)
    seq_len: int = 96  # tokens per window
    batch: int = 4  # windows per step
    eval_windows: int = 6  # held-out windows (eval_windows x seq_len positions)
    kl_share: float = 0.5  # tuned lens: share of the budget for the KL phase
    kl_positions: int = 128  # tuned lens: positions per KL step
    lr: float = 3e-4
    ridge: float = 1e-3  # tuned lens: ridge strength relative to the mean input energy
    skip_first: int = 4  # Jacobian lens: positions left out of each window
    seed: int = 0
    max_steps: int | None = None  # stop after this many steps per phase (tests), whatever the time


# --- residual states through hooks ---------------------------------------------------------------------------------
class _States:
    """Hooks that keep every layer's input (rows 0..L-1) and the last layer's output (row L)."""

    def __init__(self, loaded: LoadedModel, grad: bool = False):
        self.adapter = adapter_for(loaded.info.architecture)
        self.model = loaded.model
        self.layers = self.adapter.layers(self.model)
        self.grad = grad
        self.rows: list[torch.Tensor | None] = []
        self._handles: list = []

    def __enter__(self) -> _States:
        n = len(self.layers)
        self.rows = [None] * (n + 1)
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._pre(i), with_kwargs=True))
        self._handles.append(self.layers[-1].register_forward_hook(self._post(n)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _pre(self, i: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if i == 0 and self.grad:  # the embeddings become a leaf so that every later state carries gradients
                hidden = hidden.detach().requires_grad_(True)
                if args:
                    args = (hidden, *args[1:])
                else:
                    kwargs = {**kwargs, "hidden_states": hidden}
            self.rows[i] = hidden  # [B, n, D]
            return args, kwargs
        return hook

    def _post(self, n: int):
        def hook(_module, _args, output):
            self.rows[n] = output[0] if isinstance(output, tuple) else output  # [B, n, D]
        return hook

    def run(self, ids: torch.Tensor) -> list[torch.Tensor]:
        self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return list(self.rows)  # L+1 tensors [B, n, D]


def _head(loaded: LoadedModel):
    adapter = adapter_for(loaded.info.architecture)
    norm, head = adapter.final_norm(loaded.model), adapter.lm_head(loaded.model)
    if norm is None or head is None or not loaded.info.is_causal:
        raise LensError(f"{loaded.info.name} has no language-model head: a lens needs one.")
    return norm, head


@contextlib.contextmanager
def _frozen(model: torch.nn.Module):
    """No gradients for the model's own weights (the lens' backward passes need none: half the work)."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)  # [..., D] unit RMS


class _Clock:
    def __init__(self, seconds: float, progress: Progress, cancel: threading.Event | None, lo: float, hi: float):
        self.start, self.seconds, self.progress, self.cancel = time.perf_counter(), seconds, progress, cancel
        self.lo, self.hi = lo, hi

    def tick(self, message: str) -> bool:
        """Report progress; False once the time is up. Raises Cancelled when asked to stop."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("Lens fit cancelled.")
        used = time.perf_counter() - self.start
        self.progress(self.lo + (self.hi - self.lo) * min(1.0, used / max(self.seconds, 1e-9)), message)
        return used < self.seconds


# --- tuned lens ----------------------------------------------------------------------------------------------------
def _fit_tuned(loaded: LoadedModel, cfg: FitConfig, windows: Windows, progress: Progress,
               cancel: threading.Event | None) -> tuple[np.ndarray, np.ndarray, dict]:
    L, D = loaded.info.n_layers, loaded.info.hidden_size
    budget = cfg.minutes * 60
    xtx = torch.zeros(L, D + 1, D + 1, dtype=torch.float64)  # [L, D+1, D+1] with a constant input for the bias
    xty = torch.zeros(L, D + 1, D, dtype=torch.float64)  # [L, D+1, D]
    clock = _Clock(budget * (1 - cfg.kl_share), progress, cancel, 0.0, 1 - cfg.kl_share)
    seen, steps = 0, 0
    with _States(loaded) as states, torch.inference_mode():
        while clock.tick(f"tuned lens: regression, {seen:,} positions"):
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
            rows = states.run(windows.sample(cfg.batch))
            y = _unit(rows[-1].reshape(-1, D).double())  # [m, D]
            for layer in range(L):
                x = _unit(rows[layer].reshape(-1, D).double())  # [m, D]
                x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)  # [m, D+1]
                xtx[layer] += x1.T @ x1
                xty[layer] += x1.T @ y
            seen += y.shape[0]
            steps += 1
    eye = torch.eye(D + 1, dtype=torch.float64)
    lam = cfg.ridge * xtx.diagonal(dim1=1, dim2=2).mean(-1)  # [L]
    if seen:
        sol = torch.linalg.solve(xtx + lam[:, None, None] * eye, xty)  # [L, D+1, D]
        matrix, bias = sol[:, :D].transpose(1, 2).float(), sol[:, D].float()  # [L, D, D] out x in, [L, D]
    else:
        matrix, bias = torch.eye(D).repeat(L, 1, 1), torch.zeros(L, D)
    kl_steps = _tuned_kl_phase(loaded, cfg, windows, matrix, bias, progress, cancel) if cfg.kl_share > 0 else 0
    return matrix.numpy(), bias.numpy(), {"regression_positions": seen, "kl_steps": kl_steps}


def _tuned_kl_phase(loaded: LoadedModel, cfg: FitConfig, windows: Windows, matrix: torch.Tensor,
                    bias: torch.Tensor, progress: Progress, cancel: threading.Event | None) -> int:
    """Adam on KL(final || lens), layer by layer per batch (one layer's vocabulary-sized graph at a time)."""
    L, D = loaded.info.n_layers, loaded.info.hidden_size
    norm, head = _head(loaded)
    m = matrix.clone().requires_grad_(True)  # [L, D, D]
    b = bias.clone().requires_grad_(True)  # [L, D]
    opt = torch.optim.Adam([m, b], lr=cfg.lr)
    clock = _Clock(cfg.minutes * 60 * cfg.kl_share, progress, cancel, 1 - cfg.kl_share, 1.0)
    steps = 0
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    with _frozen(loaded.model), _States(loaded) as states:
        while clock.tick(f"tuned lens: KL steps, {steps} done"):
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
            with torch.no_grad():
                rows = states.run(windows.sample(cfg.batch))
                pick = torch.randperm(rows[0].shape[0] * rows[0].shape[1], generator=gen)[:cfg.kl_positions]
                target = torch.log_softmax(head(norm(rows[-1].reshape(-1, D)[pick])), -1)  # [k, vocab]
            opt.zero_grad()
            for layer in range(L):
                with torch.no_grad():
                    x = _unit(rows[layer].reshape(-1, D)[pick])  # [k, D]
                logq = torch.log_softmax(head(norm(x @ m[layer].T + b[layer])), -1)  # [k, vocab]
                loss = torch.nn.functional.kl_div(logq, target, log_target=True, reduction="batchmean")
                loss.backward()
            opt.step()
            steps += 1
    with torch.no_grad():
        matrix.copy_(m)
        bias.copy_(b)
    return steps


# --- Jacobian lens -------------------------------------------------------------------------------------------------
def _fit_jacobian(loaded: LoadedModel, cfg: FitConfig, windows: Windows, progress: Progress,
                  cancel: threading.Event | None) -> tuple[np.ndarray, np.ndarray, dict]:
    L, D = loaded.info.n_layers, loaded.info.hidden_size
    acc = torch.zeros(L, D, D, dtype=torch.float64)  # [L, D, D] sum of u (g - u)^T
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    clock = _Clock(cfg.minutes * 60, progress, cancel, 0.0, 1.0)
    count, steps = 0, 0
    with _frozen(loaded.model), _States(loaded, grad=True) as states, torch.enable_grad():
        while clock.tick(f"Jacobian lens: {count:,} probed positions"):
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
            count += jacobian_probe(states, windows.sample(cfg.batch), acc, gen, cfg.skip_first)
            steps += 1
    matrix = jacobian_from_sums(acc, count)  # [L, D, D]
    return matrix.float().numpy(), np.zeros((L, D), np.float32), {"probed_positions": count, "backward_passes": steps}


def jacobian_probe(states: _States, ids: torch.Tensor, acc: torch.Tensor, gen: torch.Generator,
                   skip_first: int) -> int:
    """One Hutchinson round on windows `ids` [B, n]: adds sum_p u_p (g_p - u_p)^T into acc [L, D, D] for every
    depth at once (states made with grad=True, under enable_grad); returns the positions used."""
    rows = states.run(ids)
    out = rows[-1]  # [B, n, D]
    d = out.shape[-1]
    u = torch.randint(0, 2, out.shape, generator=gen).to(out.dtype) * 2 - 1  # [B, n, D] Rademacher
    grads = torch.autograd.grad(out, rows[:-1], grad_outputs=u)  # L x [B, n, D]: g_p = sum_q J_qp^T u_q
    keep = slice(min(skip_first, out.shape[1] - 1), None)
    uk = u[:, keep].reshape(-1, d).double()  # [m, D]
    for layer, g in enumerate(grads):
        acc[layer] += uk.T @ (g[:, keep].reshape(-1, d).double() - uk)
    return uk.shape[0]


def jacobian_from_sums(acc: torch.Tensor, count: int) -> torch.Tensor:
    """E[u (g - u)^T] = E[u u^T] (J - I) = J - I, as g^T = u^T J: the estimate of J [L, D, D] (out x in)."""
    eye = torch.eye(acc.shape[-1], dtype=acc.dtype)
    return eye + acc / max(count, 1)


# --- evaluation and the whole fit ---------------------------------------------------------------------------------
def evaluate(loaded: LoadedModel, lens: Lens, ids: torch.Tensor, progress: Progress | None = None,
             cancel: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean KL(final || lens) per depth row 0..L-1 over windows `ids` [W, n]: (logit lens, fitted lens)."""
    norm_params = adapter_for(loaded.info.architecture).norm_params(loaded.model)
    unembed = adapter_for(loaded.info.architecture).lm_head(loaded.model).weight.detach().numpy()  # [vocab, D]
    L = loaded.info.n_layers
    sums = np.zeros((2, L), np.float64)
    n = 0
    with _States(loaded) as states, torch.inference_mode():
        for w in range(ids.shape[0]):
            if cancel is not None and cancel.is_set():
                raise Cancelled("Lens fit cancelled.")
            if progress is not None:
                progress(w / ids.shape[0], f"held-out KL: window {w + 1}/{ids.shape[0]}")
            rows = states.run(ids[w:w + 1])
            resid = torch.stack([r[0] for r in rows]).float().numpy()  # [L+1, n, D]
            targets = np.full(resid.shape[1], -1, np.int64)
            for i, readout in enumerate((None, lens)):
                cols = compute_lens(resid, targets, norm_params, unembed, k=1, readout=readout)
                sums[i] += cols.kl[:L].sum(axis=1)
            n += resid.shape[1]
    return sums[0] / max(n, 1), sums[1] / max(n, 1)


def fit_lens(loaded: LoadedModel, config: FitConfig, *, on_progress: Progress | None = None,
             cancel: threading.Event | None = None, files: list[Path] | None = None) -> tuple[Lens, dict]:
    """Fit a lens and measure it on held-out files; returns the lens (with its metrics) and the metrics."""
    if config.kind not in FITTED_KINDS:
        raise LensError(f"Unknown lens kind {config.kind!r}: pick one of {', '.join(FITTED_KINDS)}.")
    if not (0 < config.minutes <= 24 * 60) or config.seq_len < 8 or config.batch < 1:
        raise LensError("Lens fit settings out of range (minutes in (0, 1440], seq_len >= 8, batch >= 1).")
    _head(loaded)
    progress = on_progress or (lambda _f, _m: None)
    files = files if files is not None else stdlib_files()
    train, held = split_files(files)
    windows = Windows(loaded.tokenizer, train, config.seq_len, config.seed)
    started = time.perf_counter()
    fit = _fit_tuned if config.kind == "tuned" else _fit_jacobian
    matrix, bias, detail = fit(loaded, config, windows,
                               lambda f, m: progress(0.85 * f, m), cancel)
    fit_s = time.perf_counter() - started
    lens = Lens(config.kind, loaded.info.name, matrix, bias, normalize_input=config.kind == "tuned")
    eval_ids = Windows(loaded.tokenizer, held, config.seq_len, config.seed + 100).sample(config.eval_windows)
    kl_logit, kl_fit = evaluate(loaded, lens, eval_ids, lambda f, m: progress(0.85 + 0.15 * f, m), cancel)
    metrics = {
        "kind": config.kind, "model": loaded.info.name, "fit_seconds": round(fit_s, 2),
        "held_out_positions": int(eval_ids.numel()), "corpus": "python stdlib docstrings + source",
        "train_files": len(train), "held_out_files": len(held), "config": asdict(config), **detail,
        "layers": [{"layer": layer, "depth": depth_label(layer),
                    "kl_logit_lens": float(kl_logit[layer]), "kl_fitted": float(kl_fit[layer])}
                   for layer in range(loaded.info.n_layers)],
    }
    progress(1.0, f"{config.kind} lens fitted in {fit_s:.0f} s")
    return Lens(lens.kind, lens.model, matrix, bias, lens.normalize_input, metrics), metrics


def fit_and_save(loaded: LoadedModel, config: FitConfig, out: str | Path, **kwargs) -> tuple[Lens, dict]:
    lens, metrics = fit_lens(loaded, config, **kwargs)
    save_lens(lens, out, metrics)
    return lens, metrics


def summary_lines(metrics: dict) -> Iterator[str]:
    rows = metrics["layers"]
    better = sum(r["kl_fitted"] < r["kl_logit_lens"] for r in rows)
    yield (f"{metrics['kind']} lens of {metrics['model']}: fitted in {metrics['fit_seconds']:.1f} s; held-out KL "
           f"below the logit lens at {better} of {len(rows)} depths")
    for r in rows:
        yield f"  {r['depth']:<16} logit {r['kl_logit_lens']:8.3f}   fitted {r['kl_fitted']:8.3f}"


def read_metrics(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8"))


__all__ = ["FitConfig", "Windows", "documents", "evaluate", "fit_and_save", "fit_lens", "split_files", "stdlib_files"]
