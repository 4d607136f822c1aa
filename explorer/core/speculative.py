"""Speculative decoding: cheap drafts of the next few tokens, checked by the real model in one pass.

    drafter proposes d1..dk -> the model runs [last token, d1..dk] once (KV cache) -> keep the longest
    prefix the model agrees with, plus the model's own next token -> crop the cache back to what was kept

Drafters (a registry; `RunRequest.speculative` names one, with options):
- "prompt-lookup" (Saxena 2023, "Prompt Lookup Decoding"; transformers' `prompt_lookup_num_tokens`):
  the last n-gram of the text so far (n = `ngram` down to 1) is looked up earlier in the text and the
  tokens that followed it are proposed. No model at all: it shines when the answer copies the prompt.
- "layers": the model itself truncated to its first `n` blocks, with the shared final norm and head
  (self-speculation, as in LayerSkip / Draft & Verify; no second copy of the weights). It reuses the
  model's own KV cache for those blocks.

Acceptance: at temperature 0 a draft token is kept when it equals the model's greedy choice, so the
output equals plain decoding token for token. At temperature > 0, speculative sampling (Leviathan et
al. 2023; Chen et al. 2023): keep draft x with probability min(1, p(x) / q(x)), else draw from
norm(max(p - q, 0)); the output is distributed exactly as the model's own samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import InputError, RunFileError

MAX_DRAFT = 32  # tokens proposed per step at most
MAX_NGRAM = 8


@dataclass(frozen=True)
class DraftConfig:
    """A parsed `speculative` option."""

    method: str  # a key of DRAFTERS
    k: int  # tokens proposed per verification step (at most)
    ngram: int = 3  # prompt-lookup: the longest n-gram matched (then shorter ones, down to `min`)
    min: int = 2  # prompt-lookup: the shortest n-gram matched (1 drafts after any repeated token: mostly wrong)
    n: int = 0  # layers: blocks the draft runs (0: three quarters of the model's)


@dataclass(frozen=True)
class DraftStep:
    """One verification pass of the model: what was proposed and what came of it (plain data)."""

    position: int  # run position of the first proposed token (the token the pass started from is position - 1)
    proposed: tuple[int, ...]  # draft token ids (empty: no draft this step, a plain decode step)
    accepted: int  # how many of them the run kept (a prefix)
    target_token: int | None  # the model's own token after the kept drafts (None: the run ended in this pass)
    draft_ms: float = 0.0
    verify_ms: float = 0.0

    @property
    def rejected(self) -> tuple[int, ...]:
        return self.proposed[self.accepted:]


# method -> (default options, option -> (lowest, highest) allowed)
DRAFTERS: dict[str, tuple[dict[str, int], dict[str, tuple[int, int]]]] = {
    "prompt-lookup": ({"k": 8, "ngram": 3, "min": 2},
                      {"k": (1, MAX_DRAFT), "ngram": (1, MAX_NGRAM), "min": (1, MAX_NGRAM)}),
    "layers": ({"k": 4, "n": 0}, {"k": (1, MAX_DRAFT), "n": (0, 4096)}),
}
HELP = ('Speculative decoding takes "prompt-lookup" (options k=tokens per draft, ngram=longest match, min=shortest '
        'match), or '
        '"layers" (the model\'s first n blocks as the draft; options n, k), e.g. "prompt-lookup:k=6,ngram=2" '
        'or "layers:n=12,k=4".')


def parse_speculative(spec: str | None) -> DraftConfig | None:
    """"" / None: off. Raises InputError with the valid forms for anything else it cannot read."""
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str) or len(spec) > 200:
        raise InputError(f"The speculative option must be a short text. {HELP}")
    method, _, rest = spec.strip().partition(":")
    if method not in DRAFTERS:
        raise InputError(f"Unknown speculative method '{method[:40]}'. {HELP}")
    defaults, limits = DRAFTERS[method]
    options = dict(defaults)
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in limits or not eq:
            raise InputError(f"'{item[:40]}' is not an option of {method} (it takes {', '.join(limits)}). {HELP}")
        try:
            number = int(value)
        except ValueError:
            raise InputError(f"The option {key} of {method} must be a whole number, not '{value[:20]}'.") from None
        lo, hi = limits[key]
        if not lo <= number <= hi:
            raise InputError(f"The option {key} of {method} must be from {lo} to {hi}, not {number}.")
        options[key] = number
    if options.get("min", 0) > options.get("ngram", MAX_NGRAM):
        raise InputError(f"The shortest n-gram (min={options['min']}) is longer than the longest (ngram="
                         f"{options['ngram']}). {HELP}")
    return DraftConfig(method=method, **options)


def prompt_lookup(ids: np.ndarray, k: int, max_ngram: int, min_ngram: int = 1) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the text's last n-gram (n = max_ngram,
    then shorter down to min_ngram); [] when nothing matches. `ids` [n] int64: the whole text so far.

    As transformers' PromptLookupCandidateGenerator, except that the most recent match wins (it follows the
    text the generation is copying right now)."""
    size = ids.shape[0]
    for n in range(min(max_ngram, size - 1), max(1, min_ngram) - 1, -1):
        pattern = ids[size - n:]  # [n]
        windows = np.lib.stride_tricks.sliding_window_view(ids[:size - 1], n)  # [size - n, n] starts 0..size-n-1
        hits = np.flatnonzero((windows == pattern).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n  # hits end before the last token, so this continuation is never empty
            return [int(t) for t in ids[start:start + k]]
    return []


def accept_greedy(target_rows: np.ndarray, drafts: list[int]) -> int:
    """How many drafts equal the model's greedy choice in turn. `target_rows` [k + 1, vocab]: the logits
    predicting each draft (row j predicts draft j) and the token after them."""
    accepted = 0
    for j, token in enumerate(drafts):
        if int(np.argmax(target_rows[j])) != token:
            break
        accepted += 1
    return accepted


def accept_sampled(p_rows: np.ndarray, drafts: list[int], q_rows: np.ndarray | None,
                   rng: np.random.Generator) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023, Chen et al. 2023): drafts kept and the next token.

    `p_rows` [k + 1, vocab] the model's sampling distributions (temperature, top-k, top-p applied);
    `q_rows` [k, vocab] the drafter's, or None for a deterministic drafter (q = one-hot on the draft).
    """
    for j, token in enumerate(drafts):
        p = p_rows[j]  # [vocab]
        q_x = 1.0 if q_rows is None else float(q_rows[j, token])
        if rng.random() * q_x < p[token]:  # u < p(x) / q(x), without dividing by a zero
            continue
        residual = p.copy()  # [vocab] max(p - q, 0)
        if q_rows is None:
            residual[token] = 0.0
        else:
            residual = np.maximum(p - q_rows[j], 0.0)
        total = residual.sum()
        residual = residual / total if total > 0 else p
        return j, int(rng.choice(residual.shape[0], p=residual))
    last = p_rows[len(drafts)]
    return len(drafts), int(rng.choice(last.shape[0], p=last))


@dataclass(frozen=True)
class DraftSummary:
    steps: int  # verification passes of the model
    proposed: int
    accepted: int
    generated: int  # tokens those passes produced (kept drafts + the model's own)

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def tokens_per_step(self) -> float:
        return self.generated / self.steps if self.steps else float("nan")


def summarize(drafts: list[DraftStep]) -> DraftSummary:
    return DraftSummary(steps=len(drafts), proposed=sum(len(d.proposed) for d in drafts),
                        accepted=sum(d.accepted for d in drafts),
                        generated=sum(d.accepted + (d.target_token is not None) for d in drafts))


# --- run files ------------------------------------------------------------------------------------
def drafts_to_json(drafts: list[DraftStep]) -> list[dict]:
    return [{**asdict(d), "proposed": list(d.proposed)} for d in drafts]


_MAX_STEPS = 2**22
_TIMES = ("draft_ms", "verify_ms")


def drafts_from_json(header: dict, vocab_size: int, n_tokens: int, name: str) -> list[DraftStep]:
    """The saved draft outcomes of a run file's header, checked (RunFileError); [] for files without them."""
    spec = header.get("request", {}).get("speculative", "")
    if not isinstance(spec, str):
        raise RunFileError(f"{name}: the run's speculative option is not a text; the file was not loaded.")
    items = header.get("drafts", [])
    if not isinstance(items, list) or len(items) > min(_MAX_STEPS, n_tokens):
        raise RunFileError(f"{name}: the draft list is garbled; the file was not loaded.")
    keys = {f.name for f in fields(DraftStep)}
    out = []
    for i, d in enumerate(items):
        try:
            if not isinstance(d, dict) or set(d) != keys:
                raise TypeError
            proposed = d["proposed"]
            if not isinstance(proposed, list) or len(proposed) > MAX_DRAFT:
                raise TypeError
            target = [] if d["target_token"] is None else [d["target_token"]]
            ints = [d["position"], d["accepted"], *proposed, *target]
            if any(type(v) is not int for v in ints) or any(type(d[k]) not in (int, float) for k in _TIMES):
                raise TypeError
            if not (0 < d["position"] <= n_tokens and 0 <= d["accepted"] <= len(proposed)
                    and all(0 <= t < vocab_size for t in ints[2:])):
                raise TypeError
        except (TypeError, KeyError):
            raise RunFileError(f"{name}: draft step {i} is garbled; the file was not loaded.") from None
        out.append(DraftStep(position=d["position"], proposed=tuple(proposed), accepted=d["accepted"],
                             target_token=d["target_token"], draft_ms=float(d["draft_ms"]),
                             verify_ms=float(d["verify_ms"])))
    return out
