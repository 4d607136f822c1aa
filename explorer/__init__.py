"""LM Explorer: watch a small language model work, live.

    import explorer
    run = explorer.capture("The capital of France is", max_new_tokens=5)
    run.attention(layer=3, head=0)   # [N, N]

    with explorer.EngineClient() as engine:   # the engine process the window uses: identical Runs
        run = explorer.capture("The capital of France is", engine=engine, max_new_tokens=5)

Names are imported lazily so that `lm-explorer --version` and `fetch` start without torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "capture": "explorer.core.api",
    "capture_batch": "explorer.core.analysis.batching",
    "EngineClient": "explorer.core.engine_client",
    "load_model": "explorer.core.models",
    "LoadedModel": "explorer.core.models",
    "ModelInfo": "explorer.core.models",
    "Run": "explorer.core.run",
    "load_run": "explorer.core.runfile",
    "ModelLoadError": "explorer.core.errors",
    "InputError": "explorer.core.errors",
    "RunFileError": "explorer.core.errors",
    "ToolError": "explorer.core.errors",
    "economics": "explorer.core.economics",
    "follow_up": "explorer.core.tools",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'explorer' has no attribute {name!r}")
