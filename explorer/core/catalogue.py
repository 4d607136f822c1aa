"""The built-in model catalogue (models/catalogue.toml): data, not code."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

_REPO_CATALOGUE = Path(__file__).resolve().parents[2] / "models" / "catalogue.toml"


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    kind: str  # "causal" | "encoder"
    description: str
    licence: str
    format: str  # "gguf" | "hf-folder" | "tiny"
    package: str | None = None
    version: str | None = None
    module: str | None = None
    file: str | None = None
    sha256: str | None = None
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        return self.format == "tiny"

    @property
    def pip_requirement(self) -> str | None:
        return f"{self.package}=={self.version}" if self.package else None


def catalogue_path() -> Path:
    """The catalogue file: the source tree's copy, or the one packaged in the wheel."""
    if _REPO_CATALOGUE.is_file():
        return _REPO_CATALOGUE
    return Path(str(resources.files("explorer") / "data" / "catalogue.toml"))


@cache
def _load() -> tuple[str, dict[str, CatalogueEntry]]:
    data = tomllib.loads(catalogue_path().read_text(encoding="utf-8"))
    entries = {name: CatalogueEntry(name=name, **fields) for name, fields in data["models"].items()}
    return data["default"], entries


def default_model_name() -> str:
    return _load()[0]


def entries() -> dict[str, CatalogueEntry]:
    return dict(_load()[1])


def get(name: str) -> CatalogueEntry | None:
    return _load()[1].get(name)


def builtin_names(include_tiny: bool = True) -> list[str]:
    return [n for n, e in _load()[1].items() if include_tiny or not e.is_tiny]
