"""Checkpoints: safetensors weights + JSON config (the Hugging Face folder layout), never pickle.

    DIR/config.json, DIR/model.safetensors, DIR/tokenizer.json (+ tokenizer_config.json)
    DIR/metrics.json                        loss curves and routing snapshots
    DIR/train_state.safetensors + .json     optimizer moments, step, RNG state (for --resume)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from ..core.errors import ModelLoadError
from ..core.tempname import atomic_write
from .config import LabConfig
from .model import LabForCausalLM

MAX_JSON_BYTES = 50_000_000


def write_json(path: Path, data: Any) -> None:
    with atomic_write(path, "w") as fh:  # the project's one atomic save
        fh.write(json.dumps(data, indent=1))


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing.")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ModelLoadError(f"{path} is too large to be a lab file ({path.stat().st_size:,} bytes).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}).") from exc


def save_model(model: LabForCausalLM, folder: Path, tokenizer=None) -> None:
    """Weights + config, and the tokenizer (the byte-level one unless the model was trained on another)."""
    from .data import save_byte_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    elif not (folder / "tokenizer.json").is_file():
        save_byte_tokenizer(folder)


def load_lab_model(folder: Path) -> LabForCausalLM:
    """The model alone (training/resume); the app loads the folder with explorer.load_model."""
    config = LabConfig.from_pretrained(str(folder))
    return LabForCausalLM.from_pretrained(str(folder), config=config, dtype=torch.float32, use_safetensors=True)


def save_train_state(folder: Path, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    tensors, layout = {}, {}
    for idx, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                key = f"{idx}.{name}"
                tensors[key] = value.detach().contiguous().clone()
                layout[key] = True
    with atomic_write(folder / "train_state.safetensors") as fh:
        fh.write(save(tensors))
    write_json(folder / "train_state.json", {**meta, "param_groups": optimizer.state_dict()["param_groups"]})


def load_train_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict:
    meta = read_json(folder / "train_state.json")
    tensors = load_file(str(folder / "train_state.safetensors"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta
