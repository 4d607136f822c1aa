"""Depth lab: small trainable decoders whose depth connection is a registry entry (plain, Attention
Residuals full/block, MoDA, mHC, Engram). Qt-free; checkpoints are safetensors + JSON and load through
`explorer.load_model(DIR)` like any other model."""

from .config import ARCHS, MODEL_TYPE, LabConfig

__all__ = ["ARCHS", "MODEL_TYPE", "LabConfig"]
