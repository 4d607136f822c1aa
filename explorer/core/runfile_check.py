"""The run file's JSON header, checked for types and sane ranges before any size is derived from it.

Every number that decides an allocation (layers, heads, dims, vocabulary, token count, steps,
planned generation) must be an integer in a range no real model exceeds; everything else must
have the type the loader expects. Raises RunFileError with a sentence.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from .arrays import ACTIVATIONS
from .errors import RunFileError
from .events import GenerationSettings
from .models import ModelInfo

FORMAT = "lm-explorer-run"
VERSION = 2  # the format this code writes and the newest it reads (1: every array as captured; 2: encodings)
REQUIRES = 2  # the oldest reader format that can open what this code writes (written as "requires")
# the codecs this reader decodes (core/runfile_codec.py) and the dtypes an encoded array may decode to
CODECS = {"q8": ACTIVATIONS, "q8sum": ("resid",)}  # codec -> the arrays it may encode
ENCODED_DTYPES = ("float16", "float32")

# ModelInfo integers: (lowest, highest) a real model has (the largest published ones are far inside)
INFO_LIMITS = {
    "n_layers": (1, 1024), "n_heads": (1, 1024), "n_kv_heads": (1, 1024), "head_dim": (1, 4096),
    "hidden_size": (1, 65536), "vocab_size": (1, 2**22), "context_length": (1, 2**24), "n_params": (0, 2**50),
}
MAX_TOKENS = 2**22  # positions in one run
MAX_STRING = 2**26


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise RunFileError(f"{what} is {str(value)[:40]!s}, not a whole number from {lo:,} to {hi:,}")
    return value


def _num(value: Any, what: str, lo: float = float("-inf")) -> float:
    if type(value) not in (int, float) or not value >= lo:
        raise RunFileError(f"{what} is {str(value)[:40]}, not a number of at least {lo}")
    return float(value)


def _type(value: Any, kinds: tuple, what: str) -> Any:
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise RunFileError(f"{what} has the wrong type ({type(value).__name__})")
    return value


def check_header(header: Any, name: str) -> tuple[ModelInfo, int]:
    """The model description and token count, after checking the header's shape, types and ranges."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RunFileError(f"{name} is not an LM Explorer run.")
    # "requires": the oldest reader that can open the file (a newer writer that only adds optional fields keeps
    # it, so this reader opens its files and ignores what it does not know); files before it: the version
    version = header.get("version")
    requires = header.get("requires", version)
    if type(version) is not int or type(requires) is not int or version < 1 or requires < 1:
        raise RunFileError(f"{name}: the run's format version ({str(version)[:20]}) is garbled; it was not loaded.")
    if requires > VERSION:
        raise RunFileError(f"{name} was saved by a newer LM Explorer (format {str(requires)[:20]}); update to open it.")
    try:
        return _check(header)
    except RunFileError as exc:
        raise RunFileError(f"{name}: {exc}; the file was not loaded.") from None
    except (KeyError, TypeError) as exc:
        raise RunFileError(f"{name}: the run's header lacks or garbles {str(exc)[:80]}; the file was not loaded.") \
            from None


def _check(header: dict) -> tuple[ModelInfo, int]:
    raw = _type(header["info"], (dict,), "the model description")
    known = {f.name for f in fields(ModelInfo)}
    required = {f.name for f in fields(ModelInfo) if f.default is MISSING and f.default_factory is MISSING}
    if not required <= set(raw) <= known:
        raise RunFileError("the model description's fields do not match this version")
    values = {key: _int(raw[key], *INFO_LIMITS[key], f"the model's {key}") for key in INFO_LIMITS}
    if values["n_heads"] % values["n_kv_heads"]:
        raise RunFileError("the model's query heads are not a multiple of its KV heads")
    for key in ("d_ff", "mlp_matrices"):  # optional (older files lack them)
        if key in raw:
            _int(raw[key], 0, 2**24, f"the model's {key}")
    for key in ("name", "architecture", "kind", "dtype"):
        if key in raw:
            _type(raw[key], (str,), f"the model's {key}")
    if raw["kind"] not in ("causal", "encoder"):
        raise RunFileError(f"the model kind '{raw['kind'][:20]}' is unknown")
    if raw["rope_theta"] is not None:
        _num(raw["rope_theta"], "the model's rope_theta", 0.0)
    _type(raw["has_chat_template"], (bool,), "has_chat_template")
    info = ModelInfo(**raw)
    n = _int(header["n_tokens"], 1, min(MAX_TOKENS, info.context_length), "the token count")
    _int(header["n_prompt"], 0, n, "the prompt length")
    _type(header["text"], (str,), "the text")
    tokens = _type(header["tokens"], (list,), "the token list")
    if len(tokens) != n:
        raise RunFileError(f"{len(tokens)} tokens in the header but {n} positions of data")
    for i, t in enumerate(tokens):
        _type(t, (dict,), f"token {i}")
        _int(t["id"], 0, info.vocab_size - 1, f"token {i}'s id")
        _int(t["start"], 0, len(header["text"]), f"token {i}'s start")
        _int(t["end"], 0, len(header["text"]), f"token {i}'s end")
        for key in ("text", "kind", "bytes"):
            _type(t[key], (str,), f"token {i}'s {key}")
        for key in ("partial", "injected", "special"):
            _type(t[key], (bool,), f"token {i}'s {key}")
    steps = _type(header["steps"], (list,), "the step list")
    if not 1 <= len(steps) <= n:
        raise RunFileError(f"{len(steps)} steps for {n} positions")
    for i, s in enumerate(steps):
        _type(s, (dict,), f"step {i}")
        _int(s["step"], 0, n, f"step {i}'s number")
        _int(s["start"], 0, n - 1, f"step {i}'s start")
        _int(s["n_new"], 1, n, f"step {i}'s token count")
        _int(s.get("cached_prefix", 0), 0, n, f"step {i}'s cached prefix")
        for stage in _type(s["timings_ms"], (list,), f"step {i}'s timings"):
            if not isinstance(stage, list) or len(stage) != 2:
                raise RunFileError(f"step {i}'s timings are garbled")
            _type(stage[0], (str,), "a stage name")
            _num(stage[1], "a stage time")
        if s.get("choice") is not None:
            _check_choice(_type(s["choice"], (dict,), f"step {i}'s choice"), info, i)
    _check_request(_type(header["request"], (dict,), "the request"), info)
    if header.get("norm") is not None:
        norm = _type(header["norm"], (dict,), "the final norm")
        _type(norm["kind"], (str,), "the final norm's kind")
        _num(norm["eps"], "the final norm's eps", 0.0)
    check_encodings(header.get("encodings", {}))
    return info, n


def check_encodings(encodings: Any) -> dict[str, dict]:
    """name -> {"codec", "dtype"} for each activation array stored encoded (core/runfile_codec.py)."""
    _type(encodings, (dict,), "the list of encoded arrays")
    for key, spec in encodings.items():
        if key not in ACTIVATIONS:
            raise RunFileError(f"'{str(key)[:40]}' is not an array that may be stored encoded")
        _type(spec, (dict,), f"the encoding of '{key}'")
        if spec.get("codec") not in CODECS:
            raise RunFileError(f"'{key}' is stored with the encoding '{str(spec.get('codec'))[:20]}', which this "
                               "version cannot read (update LM Explorer)")
        if key not in CODECS[spec["codec"]]:
            raise RunFileError(f"'{key}' cannot be stored with the encoding '{spec['codec']}'")
        if spec.get("dtype") not in ENCODED_DTYPES:
            raise RunFileError(f"'{key}' decodes to '{str(spec.get('dtype'))[:20]}', not float16 or float32")
    return encodings


def _check_choice(c: dict, info: ModelInfo, i: int) -> None:
    _int(c["token_id"], 0, info.vocab_size - 1, f"step {i}'s chosen token")
    _int(c["rank"], 0, info.vocab_size - 1, f"step {i}'s chosen rank")
    _num(c["entropy"], f"step {i}'s entropy")
    _num(c["logprob"], f"step {i}'s logprob")
    ids, logprobs = _type(c["top_ids"], (list,), "top ids"), _type(c["top_logprobs"], (list,), "top logprobs")
    if len(ids) != len(logprobs) or len(ids) > 1024:
        raise RunFileError(f"step {i}'s top-k lists are garbled")
    for t in ids:
        _int(t, 0, info.vocab_size - 1, f"step {i}'s top-k id")
    for v in logprobs:
        _num(v, f"step {i}'s top-k logprob")


def _check_request(r: dict, info: ModelInfo) -> None:
    _type(r["prompt"], (str,), "the prompt")
    if r.get("system") is not None:
        _type(r["system"], (str,), "the system message")
    for key in ("chat", "allow_special_in_text", "reuse_prefix"):
        if key in r:
            _type(r[key], (bool,), f"the request's {key}")
    s = _type(r["settings"], (dict,), "the generation settings")
    if not set(s) <= {f.name for f in fields(GenerationSettings)}:
        raise RunFileError("the generation settings hold unknown fields")
    _int(s.get("max_new_tokens", 0), 0, info.context_length, "max new tokens")
    _num(s.get("temperature", 0.0), "the temperature", 0.0)
    if s.get("top_k") is not None:
        _int(s["top_k"], 1, info.vocab_size, "top-k")
    if s.get("top_p") is not None and not 0.0 < _num(s["top_p"], "top-p") <= 1.0:
        raise RunFileError("top-p is outside (0, 1]")
    _int(s.get("seed", 0), -(2**63), 2**64 - 1, "the seed")
    _type(s.get("stop_at_eos", True), (bool,), "stop at EOS")
    _type(r.get("interventions", []), (list,), "the interventions")
    _type(r.get("skip_arrays", []), (list,), "the arrays left out")
    if r.get("tools") is not None:
        _type(r["tools"], (str,), "the tool definitions")
    for turn in _type(r.get("turns", []), (list,), "the conversation turns"):
        if not isinstance(turn, list) or len(turn) != 2 or not all(isinstance(x, str) for x in turn):
            raise RunFileError("a conversation turn is not a (role, text) pair")
