"""The built-in model catalogue (models/catalogue.toml): data, not code."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any


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
    sha256: str | None = None  # of `file`
    files: dict[str, str] = field(default_factory=dict)  # other files of an hf-folder model: name -> sha256
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        return self.format == "tiny"

    @property
    def pip_requirement(self) -> str | None:
        return f"{self.package}=={self.version}" if self.package else None


def catalogue_path() -> Path:
    """models/catalogue.toml, reached through the package's data folder (a link in the source tree)."""
    from ..resources import data_path

    return data_path("catalogue.toml")


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
