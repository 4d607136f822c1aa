"""Panel registry: name -> panel class. Adding a panel is one new module and one line here."""

from __future__ import annotations

from importlib import import_module

from .base import Panel

# name -> "module:Class" (imported lazily so one panel's import error cannot stop the others)
REGISTRY: dict[str, str] = {
    "kv_cache": "explorer.ui.panels.kv_cache:KVCachePanel",
    "depth": "explorer.ui.panels.depth:DepthPanel",
    "tokens": "explorer.ui.panels.tokens:TokensPanel",
    "next_token": "explorer.ui.panels.next_token:NextTokenPanel",
    "pipeline": "explorer.ui.panels.pipeline:PipelinePanel",
    "embeddings": "explorer.ui.panels.embeddings:EmbeddingsPanel",
    "attention": "explorer.ui.panels.attention:AttentionPanel",
    "interventions": "explorer.ui.panels.interventions:InterventionsPanel",
    "head_sweep": "explorer.ui.panels.head_sweep:HeadSweepPanel",
    "compare": "explorer.ui.panels.compare:ComparePanel",
    "depth_lab": "explorer.ui.panels.depth_lab:DepthLabPanel",
    "runtime": "explorer.ui.panels.runtime:RuntimePanel",
    "economics": "explorer.ui.panels.economics:EconomicsPanel",
    "retrieval": "explorer.ui.panels.retrieval:RetrievalPanel",
}


def panel_class(name: str) -> type[Panel]:
    module, cls = REGISTRY[name].split(":")
    return getattr(import_module(module), cls)


__all__ = ["REGISTRY", "Panel", "panel_class"]
