"""Package data (catalogue, icons): the same lookup in a source checkout and in an installed wheel.

`explorer/data/` holds links to `models/` and `assets/` in the source tree; building the wheel copies
the files they point to, so an installed package finds them at the same place.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_path(name: str) -> Path:
    """Path of a packaged data file, e.g. data_path("catalogue.toml") or data_path("icon.png")."""
    return Path(str(resources.files("explorer") / "data" / name))
