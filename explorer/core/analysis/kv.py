"""KV-cache arithmetic: the size formula, MHA / GQA / MQA comparison and a what-if catalogue.

    bytes = 2 (K and V) x layers x KV heads x head_dim x tokens x bytes per element x batch

The catalogue of well-known configurations is data (models/kv_configs.toml), each entry citing its source.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..models import ModelInfo

_REPO_FILE = Path(__file__).resolve().parents[3] / "models" / "kv_configs.toml"

# bytes per stored element of the cache
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int4": 0.5}
_TORCH_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8"}


@dataclass(frozen=True)
class KVConfig:
    """The attention shape that decides a model's KV-cache size."""

    name: str
    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int
    context: int
    label: str = ""
    source: str = ""
    sliding_window: int | None = None  # every layer attends to (and caches) at most this many recent tokens

    def cached_tokens(self, tokens: int | np.ndarray) -> int | np.ndarray:
        """Tokens the cache holds for a context of `tokens`: capped at the sliding window (a rolling cache)."""
        if self.sliding_window is None:
            return tokens
        return np.minimum(tokens, self.sliding_window) if isinstance(tokens, np.ndarray) else min(
            tokens, self.sliding_window)

    @property
    def variant(self) -> str:
        if self.kv_heads == self.query_heads:
            return "MHA"
        return "MQA" if self.kv_heads == 1 else "GQA"

    def with_kv_heads(self, kv_heads: int) -> KVConfig:
        return replace(self, kv_heads=kv_heads)

    def bytes_per_token(self, dtype: str = "fp32", batch: int = 1) -> float:
        return kv_bytes(self.layers, self.kv_heads, self.head_dim, 1, DTYPE_BYTES[dtype], batch)

    def bytes(self, tokens: int | np.ndarray, dtype: str = "fp32", batch: int = 1) -> float | np.ndarray:
        """Cache bytes at a context of `tokens` (only the sliding window's worth, if the model has one)."""
        return kv_bytes(self.layers, self.kv_heads, self.head_dim, self.cached_tokens(tokens), DTYPE_BYTES[dtype],
                        batch)


def kv_bytes(layers: int, kv_heads: int, head_dim: int, tokens: int | np.ndarray, bytes_per_elem: float,
             batch: int = 1) -> float | np.ndarray:
    """2 (K and V) x layers x KV heads x head_dim x tokens x bytes/element x batch."""
    per_token = 2 * layers * kv_heads * head_dim * bytes_per_elem * batch
    if isinstance(tokens, np.ndarray):
        return per_token * tokens.astype(np.float64)
    return float(per_token * tokens)


def dtype_key(torch_dtype: str) -> str:
    """"float32" -> "fp32" (the model's weights dtype names the cache's dtype)."""
    return _TORCH_DTYPES.get(torch_dtype, "fp32")


def config_from_info(info: ModelInfo) -> KVConfig:
    return KVConfig(name=info.name, layers=info.n_layers, query_heads=info.n_heads, kv_heads=info.n_kv_heads,
                    head_dim=info.head_dim, context=info.context_length, label=f"{info.name} (loaded)",
                    source="the loaded model's config")


def variants(cfg: KVConfig) -> dict[str, KVConfig]:
    """The same model with multi-head (KV heads = query heads), its own, and multi-query (1) attention."""
    return {"MHA": cfg.with_kv_heads(cfg.query_heads), cfg.variant: cfg, "MQA": cfg.with_kv_heads(1)}


@dataclass(frozen=True)
class Formula:
    """The formula with numbers filled in, and what MHA / MQA would need for the same tokens."""

    cfg: KVConfig
    tokens: int
    bytes_per_elem: float
    total: float
    mha: float
    mqa: float

    @property
    def saved_vs_mha(self) -> float:
        return self.mha - self.total

    @property
    def saved_fraction(self) -> float:
        return self.saved_vs_mha / self.mha if self.mha else 0.0

    @property
    def cached(self) -> int:
        """Tokens actually in the cache (the context, or the sliding window when that is smaller)."""
        return int(self.cfg.cached_tokens(self.tokens))

    def text(self) -> str:
        c = self.cfg
        tokens = f"{self.tokens:,} tokens" if self.cached == self.tokens else \
            f"{self.cached:,} tokens (sliding window; context {self.tokens:,})"
        return (f"2 \u00d7 {c.layers} layers \u00d7 {c.kv_heads} KV heads \u00d7 {c.head_dim} head dim \u00d7 "
                f"{tokens} \u00d7 {_num(self.bytes_per_elem)} bytes = {self.total:,.0f} B "
                f"= {format_bytes(self.total)}")

    def window_text(self) -> str:
        """A sentence on the sliding window ("" when the model has none)."""
        w = self.cfg.sliding_window
        if w is None:
            return ""
        return (f"This model attends to the last {w:,} tokens only (sliding-window attention), so a rolling "
                f"cache holds at most {w:,} tokens per layer, whatever the context length.")

    def savings_text(self) -> str:
        c = self.cfg
        if c.kv_heads == c.query_heads:
            saved = self.total - self.mqa
            return (f"Multi-head attention: every query head has its own K and V. Multi-query attention "
                    f"(1 KV head) would need {format_bytes(self.mqa)}, saving {format_bytes(saved)} "
                    f"({saved / self.total if self.total else 0:.0%}).")
        return (f"MHA ({c.query_heads} KV heads) would need {format_bytes(self.mha)}, MQA (1 KV head) "
                f"{format_bytes(self.mqa)}. {c.variant} saves {format_bytes(self.saved_vs_mha)} "
                f"({self.saved_fraction:.0%}) vs MHA.")


def formula(cfg: KVConfig, tokens: int, bytes_per_elem: float, batch: int = 1) -> Formula:
    cached = cfg.cached_tokens(tokens)
    total = kv_bytes(cfg.layers, cfg.kv_heads, cfg.head_dim, cached, bytes_per_elem, batch)
    mha = kv_bytes(cfg.layers, cfg.query_heads, cfg.head_dim, cached, bytes_per_elem, batch)
    mqa = kv_bytes(cfg.layers, 1, cfg.head_dim, cached, bytes_per_elem, batch)
    return Formula(cfg, tokens, bytes_per_elem, total, mha, mqa)


def context_grid(max_context: int, points: int = 64) -> np.ndarray:
    """[points] context lengths from 1 to max_context (inclusive), for a bytes-vs-context curve."""
    return np.unique(np.linspace(1, max_context, points).round().astype(np.int64))


# --- the catalogue file -------------------------------------------------------------------------------


def catalogue_path() -> Path:
    """models/kv_configs.toml in a source tree, else the copy packaged as explorer/data/kv_configs.toml."""
    if _REPO_FILE.is_file():
        return _REPO_FILE
    return Path(str(resources.files("explorer") / "data" / "kv_configs.toml"))


@cache
def _catalogue() -> tuple[KVConfig, ...]:
    data = tomllib.loads(catalogue_path().read_text(encoding="utf-8"))
    return tuple(KVConfig(name=name, **fields) for name, fields in data["models"].items())


def catalogue() -> list[KVConfig]:
    """The what-if catalogue, in file order."""
    return list(_catalogue())


def catalogue_entry(name: str) -> KVConfig:
    for cfg in _catalogue():
        if cfg.name == name:
            return cfg
    raise KeyError(name)


# --- formatting ------------------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """Binary units: 46,080 -> "45.0 KiB"."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _num(x: float) -> str:
    return f"{x:g}"
