"""Checks on untrusted model folders and GGUF files, made before anything is allocated or parsed.

A model folder is data from strangers. Before transformers sees it:
- every entry that resolves outside the folder (a link to /etc/passwd, to another folder) is refused;
- only known files are read: config, weights and tokenizer files of fixed names, each a regular file
  under a size cap; transformers is handed a staging folder of links to exactly those files, so
  nothing else in the folder (adapters, code, a second index) can be picked up;
- the weight files are chosen here, not by an index: every shard an index names must be a plain
  name in the folder, a real safetensors file (or, with the pickle opt-in, a .bin checkpoint);
- the config's sizes are capped and the parameters it declares are compared with the tensors the
  weight files hold, before the model is built; after loading, missing or extra tensors are errors.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

MiB = 1 << 20
# Sane upper bounds for a model this app can show (the largest real models are well inside them).
CONFIG_CAPS = {
    "layers": ((("num_hidden_layers", "n_layer", "num_layers"), 512)),
    "vocabulary": ((("vocab_size",), 1 << 20)),
    "hidden size": ((("hidden_size", "n_embd", "d_model"), 65_536)),
    "feed-forward size": ((("intermediate_size", "n_inner"), 1 << 19)),
    "attention heads": ((("num_attention_heads", "n_head", "num_key_value_heads"), 1024)),
    "head size": ((("head_dim",), 4096)),
    "context length": ((("max_position_embeddings", "n_positions", "n_ctx"), 1 << 24)),
    "token types": ((("type_vocab_size",), 1024)),
}
# Files transformers reads from a folder for the families we support, with their size caps (bytes).
READ_FILES = {
    "config.json": 4 * MiB,
    "generation_config.json": 4 * MiB,
    "tokenizer.json": 64 * MiB,
    "tokenizer_config.json": 16 * MiB,
    "special_tokens_map.json": 4 * MiB,
    "added_tokens.json": 16 * MiB,
    "vocab.txt": 64 * MiB,
    "vocab.json": 64 * MiB,
    "merges.txt": 64 * MiB,
    "tokenizer.model": 64 * MiB,
    "chat_template.jinja": 1 * MiB,
    "chat_template.json": 1 * MiB,
}
TEMPLATE_FOLDER = "additional_chat_templates"  # *.jinja, each capped like chat_template.jinja
INDEX_CAP = 64 * MiB
SAFETENSORS_HEADER_CAP = 100 * MiB  # the safetensors format's own limit
MAX_ENTRIES = 10_000  # a model folder with more entries than this is not a model folder
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_SAFE_SHARD = re.compile(r"^[\w.\-]+\.safetensors$")
_PICKLE_SHARD = re.compile(r"^[\w.\-]+\.bin$")


@dataclass
class FolderPlan:
    """What will be read from a model folder: resolved real paths of vetted files, by the name transformers expects."""

    folder: Path
    config: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)  # staged name -> real path (config is rewritten)
    weights: list[str] = field(default_factory=list)  # the weight files, in the folder
    index: dict[str, Any] | None = None  # the validated index written into the staging folder
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)  # from the safetensors headers
    pickle: bool = False
    names: list[str] = field(default_factory=list)  # every entry of the folder

    @property
    def n_stored(self) -> int:
        return sum(math.prod(shape) for shape in self.tensors.values())


def allowed_roots(folder: Path) -> list[Path]:
    """The folder, and for a Hugging Face hub snapshot (models--x/snapshots/rev) its blob store."""
    roots = [folder]
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        roots.append(folder.parent.parent / "blobs")
    return roots


def _inside(real: Path, roots: list[Path]) -> bool:
    return any(real == root or real.is_relative_to(root) for root in roots)


def inspect_folder(path: Path, *, allow_pickle: bool = False, need_weights: bool = True,
                   trust_remote_code: bool = False) -> FolderPlan:
    """Vet a model folder; raise ModelLoadError naming the first thing that is refused.

    With `trust_remote_code` (the user's explicit opt-in) the folder's *.py files are staged too.
    """
    folder = _real(Path(path), Path(path).name)
    roots = allowed_roots(folder)
    try:
        names = []
        with os.scandir(folder) as it:
            for entry in it:
                names.append(entry.name)
                if len(names) > MAX_ENTRIES:
                    raise ModelLoadError(f"{folder.name} holds more than {MAX_ENTRIES:,} entries: "
                                         "it is not a model folder.")
    except OSError as exc:
        raise ModelLoadError(f"The folder {folder} cannot be read ({exc.strerror or exc}).") from exc
    for name in sorted(names):  # the whole folder: no entry may lead outside it
        real = _real(folder / name, f"{folder.name}/{name}")
        if not _inside(real, roots):
            raise ModelLoadError(
                f"{folder.name}/{name} is a link that leads outside the model folder (to {real}). "
                "Files outside a model folder are never read: copy the file into the folder instead."
            )
    config_path = _vetted(folder, "config.json", READ_FILES["config.json"], roots, required=True,
                          missing=f"{folder} has no config.json: it is not a Hugging Face model folder.")
    config = read_json(config_path, f"{folder.name}/config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"{folder.name}/config.json is not a JSON object.")
    plan = FolderPlan(folder=folder, config=config, names=sorted(names))
    for name, cap in READ_FILES.items():
        if name != "config.json" and (real := _vetted(folder, name, cap, roots)) is not None:
            plan.files[name] = real
    templates = folder / TEMPLATE_FOLDER
    if templates.is_dir():
        for child in sorted(templates.iterdir())[:MAX_ENTRIES]:
            rel = f"{TEMPLATE_FOLDER}/{child.name}"
            if child.suffix == ".jinja" and (real := _vetted(folder, rel, READ_FILES["chat_template.jinja"], roots)):
                plan.files[rel] = real
    if trust_remote_code:
        for name in names:
            if name.endswith(".py") and (real := _vetted(folder, name, 16 * MiB, roots)) is not None:
                plan.files[name] = real
    if need_weights:
        plan_weights(plan, allow_pickle)
    return plan


def _real(path: Path, what: str) -> Path:
    """The path with every link followed; a link loop or an unreadable link is a clear error."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ModelLoadError(f"{what} cannot be followed ({first_line(exc)}): it is refused.") from exc


def _vetted(folder: Path, name: str, cap: int, roots: list[Path], required: bool = False,
            missing: str = "") -> Path | None:
    """The real path of `folder/name` if it exists: a regular file inside the folder, under `cap` bytes."""
    path = folder / name
    if not os.path.lexists(path):
        if required:
            raise ModelLoadError(missing or f"{folder.name} has no {name}.")
        return None
    real = _real(path, f"{folder.name}/{name}")
    if not _inside(real, roots):
        raise ModelLoadError(f"{folder.name}/{name} leads outside the model folder (to {real}): it is refused.")
    try:
        info = real.stat()
    except OSError as exc:
        raise ModelLoadError(f"{folder.name}/{name} cannot be read ({exc.strerror or exc}).") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{folder.name}/{name} is not a regular file (a device, pipe or folder): it is refused.")
    if info.st_size > cap:
        raise ModelLoadError(
            f"{folder.name}/{name} is {info.st_size / MiB:,.0f} MiB, more than the {cap / MiB:,.0f} MiB such a "
            "file can sensibly hold: it is refused."
        )
    return real


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ModelLoadError(f"{what} is not valid JSON ({first_line(exc)}).") from exc


def sentence(exc: BaseException) -> str:
    """The first line of an exception's message, as the end of a sentence."""
    line = first_line(exc).rstrip(" :")
    return line if line.endswith((".", ")", "!", "?")) else line + "."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def plan_weights(plan: FolderPlan, allow_pickle: bool) -> None:
    """Choose the weight files (never trusting an index's names) and read their headers."""
    folder, names = plan.folder, plan.names
    roots = allowed_roots(folder)
    chosen = next((n for n in WEIGHT_NAMES if n in names), None)
    if chosen is None:
        has_pickle = any(n.endswith((".bin", ".pt", ".pth")) or n in PICKLE_NAMES for n in names)
        if not has_pickle:
            raise ModelLoadError(f"{folder.name} has no weights (model.safetensors) next to its config.json.")
        if not allow_pickle:
            raise ModelLoadError(
                f"{folder.name} only has pickle checkpoints (*.bin/*.pt), which can execute code when loaded. "
                "They are refused unless you opt in to loading pickle weights.",
                needs="allow_pickle",
            )
        chosen = next((n for n in PICKLE_NAMES if n in names), None)
        if chosen is None:
            raise ModelLoadError(f"{folder.name} has no pytorch_model.bin (or its index) to load.")
        plan.pickle = True
    shard_pattern = _PICKLE_SHARD if plan.pickle else _SAFE_SHARD
    if chosen.endswith(".index.json"):
        real = _vetted(folder, chosen, INDEX_CAP, roots, required=True)
        index = read_json(real, f"{folder.name}/{chosen}")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{folder.name}/{chosen} has no weight_map.")
        shards = sorted({str(v) for v in weight_map.values()})
        for shard in shards:
            if not isinstance(shard, str) or not shard_pattern.match(shard) or shard.startswith("."):
                kind = "a .bin checkpoint" if plan.pickle else "a .safetensors file"
                raise ModelLoadError(
                    f"{folder.name}/{chosen} names the weight file '{shard[:100]}', which is not {kind} in this "
                    "folder: every weight file must be a plain file name next to config.json. It is refused."
                )
        plan.index = {"metadata": {}, "weight_map": {str(k): str(v) for k, v in weight_map.items()}}
        plan.weights = shards
    else:
        plan.weights = [chosen]
    cap = 1 << 50  # weights are as big as they are; their headers are checked instead
    for name in plan.weights:
        real = _vetted(folder, name, cap, roots, required=True,
                       missing=f"{folder.name} lists the weight file {name}, which is not in the folder.")
        plan.files[name] = real
        if not plan.pickle:
            for key, shape in safetensors_header(real, f"{folder.name}/{name}").items():
                plan.tensors[key] = shape


def safetensors_header(path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, checked against the file size (nothing else is read)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if length > min(SAFETENSORS_HEADER_CAP, size - 8):
                raise ValueError(f"header of {length:,} bytes in a file of {size:,}")
            header = json.loads(fh.read(length))
    except (OSError, ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{what} is not a safetensors file ({first_line(exc)}).") from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{what} is not a safetensors file (its header is not a JSON object).")
    tensors: dict[str, tuple[int, ...]] = {}
    data_size = size - 8 - length
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(d) for d in meta["shape"])
            start, end = (int(x) for x in meta["data_offsets"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"{what}: the entry for {name[:80]} is malformed.") from exc
        if any(d < 0 for d in shape) or not 0 <= start <= end <= data_size:
            raise ModelLoadError(f"{what}: the tensor {name[:80]} points past the end of the file (damaged).")
        tensors[name] = shape
    return tensors


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse declared sizes beyond sane caps, before anything is built from them."""
    for what, (keys, cap) in CONFIG_CAPS.items():
        for key in keys:
            if key not in config or config[key] is None:
                continue
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ModelLoadError(f"{where} sets {key} to {str(value)[:40]!s}, which is not a whole number.")
            if value > cap:
                raise ModelLoadError(
                    f"{where} declares {value:,} {what} ({key}), more than the {cap:,} this app accepts: "
                    "the file is damaged or crafted, and it is refused before any memory is set aside."
                )


def check_declared_size(config: Any, factory: Any, plan: FolderPlan) -> None:
    """Build the model on the meta device (no memory) and compare its parameters with the tensors stored."""
    if plan.pickle or not plan.tensors:
        if not plan.pickle:
            raise ModelLoadError(f"{plan.folder.name}'s weight files hold no tensors: there is nothing to load.")
        return
    import torch

    with torch.device("meta"):
        shell = factory.from_config(config)
    declared = sum(p.numel() for p in shell.parameters())
    stored = plan.n_stored
    if declared > stored * 1.02 + 65_536:
        raise ModelLoadError(
            f"{plan.folder.name}/config.json declares a model of {declared:,} parameters, but its weight files "
            f"hold {stored:,}: the config does not match the weights. Nothing was loaded."
        )


def check_loading_info(info: dict[str, Any], name: str, ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Missing, extra or mis-shaped tensors are errors: a model is never left with random weights."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(k for k in info.get("unexpected_keys") or () if not k.startswith(ignore_unexpected))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    errors = [str(e) for e in info.get("error_msgs") or ()]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("with the wrong shape", mismatched)):
        if keys:
            shown = ", ".join(k[:80] for k in keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            problems.append(f"{len(keys)} tensors {label} ({shown})")
    if errors:
        problems.append(first_line(Exception(errors[0])))
    if problems:
        raise ModelLoadError(
            f"The weights of {name} do not match its config: {'; '.join(problems)}. "
            "A model with missing or extra tensors would compute with random numbers, so it is refused."
        )


def check_tokenizer_vocab(tokenizer: Any, n_rows: int, name: str) -> None:
    """Every id the tokenizer can produce must have a row in the model's embedding table."""
    ids = list(tokenizer.get_vocab().values())
    ids += [i for i in getattr(tokenizer, "all_special_ids", []) or [] if isinstance(i, int)]
    top = max(ids, default=-1)
    if top >= n_rows or min(ids, default=0) < 0:
        raise ModelLoadError(
            f"The tokenizer of {name} produces token ids up to {top:,}, but the model's vocabulary has "
            f"{n_rows:,} rows: the tokenizer does not belong to these weights. It is refused."
        )


@contextlib.contextmanager
def staged(plan: FolderPlan) -> Iterator[Path]:
    """A temporary folder of links to exactly the vetted files (config and index rewritten): what transformers sees."""
    stage = Path(tempfile.mkdtemp(prefix="lm-explorer-stage-"))
    try:
        config = {k: v for k, v in plan.config.items() if k != "transformers_weights"}
        (stage / "config.json").write_text(json.dumps(config), encoding="utf-8")
        if plan.index is not None:
            index_name = "pytorch_model.bin.index.json" if plan.pickle else "model.safetensors.index.json"
            (stage / index_name).write_text(json.dumps(plan.index), encoding="utf-8")
        for name, real in plan.files.items():
            target = stage / name
            target.parent.mkdir(exist_ok=True)
            try:
                os.symlink(real, target)
            except OSError:  # no symlinks (Windows without the privilege): a hard link, or a copy of small files
                try:
                    os.link(real, target)
                except OSError:
                    if real.stat().st_size > 64 * MiB:
                        raise
                    shutil.copyfile(real, target)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)

