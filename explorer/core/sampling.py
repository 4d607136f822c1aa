"""The sampler: one function shapes the distribution for both the runner and the what-if sliders."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Filtered:
    probs: np.ndarray  # [vocab] float64, the distribution the sampler draws from (zeros where filtered)
    kept: np.ndarray  # [vocab] bool, tokens that survive top-k / top-p


def validate(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not np.isfinite(temperature) or temperature < 0:
        raise InputError(f"Temperature must be 0 (greedy) or positive, not {temperature}.")
    if top_k is not None and top_k < 1:
        raise InputError(f"top-k must be at least 1 (or off), not {top_k}.")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise InputError(f"top-p must be above 0 and at most 1, not {top_p}.")


def filter_logits(
    logits: np.ndarray, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> Filtered:
    """Apply temperature, then top-k, then top-p (nucleus), the way transformers' samplers do.

    Temperature 0 means greedy: only the arg-max survives.
    """
    validate(temperature, top_k, top_p)
    logits = np.asarray(logits, dtype=np.float64)  # [vocab]
    vocab = logits.shape[-1]
    if temperature == 0:
        kept = np.zeros(vocab, dtype=bool)
        kept[int(np.argmax(logits))] = True
        return Filtered(kept.astype(np.float64), kept)
    scaled = logits / temperature  # [vocab]
    kept = np.isfinite(scaled)
    if top_k is not None and top_k < vocab:
        threshold = np.partition(scaled, vocab - top_k)[vocab - top_k]
        kept &= scaled >= threshold
    probs = _softmax(np.where(kept, scaled, -np.inf))
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, kind="stable")  # [vocab]
        cumulative = np.cumsum(probs[order])
        # keep the smallest set whose mass reaches top_p (the first token always stays)
        remove_sorted = cumulative - probs[order] >= top_p
        remove_sorted[0] = False
        keep_nucleus = np.ones(vocab, dtype=bool)
        keep_nucleus[order[remove_sorted]] = False
        kept &= keep_nucleus
        probs = _softmax(np.where(kept, scaled, -np.inf))
    return Filtered(probs, kept)


def sample(
    logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None, rng: np.random.Generator
) -> int:
    if temperature == 0:  # greedy: what filter_logits keeps is the arg-max, without its vocab-sized arrays
        validate(temperature, top_k, top_p)
        return int(np.argmax(logits))
    filtered = filter_logits(logits, temperature, top_k, top_p)
    return int(rng.choice(filtered.probs.shape[0], p=filtered.probs))


def _softmax(x: np.ndarray) -> np.ndarray:
    finite = np.isfinite(x)
    if not finite.any():
        raise InputError("Every token was filtered out; loosen top-k / top-p.")
    z = np.where(finite, x - np.max(x[finite]), -np.inf)
    e = np.exp(z)
    return e / e.sum()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)  # [..., vocab]
    m = logits.max(axis=-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def entropy(logprobs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of log-probabilities."""
    p = np.exp(logprobs)
    return -(p * np.where(p > 0, logprobs, 0.0)).sum(axis=-1)
