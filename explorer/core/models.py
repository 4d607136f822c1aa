"""Model loading: catalogue names, local HF folders, GGUF files and (opt-in) hub ids.

The default model ships as a quantised GGUF inside a PyPI wheel; it is dequantised once and
cached as safetensors + config + tokenizer in a per-user folder (model_cache: keyed by content,
every file checksummed), so later loads take well under a second. Folders and GGUF files are
untrusted: model_checks vets them before anything is read or allocated.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import catalogue, gguf_model, model_cache
from . import model_checks as checks
from .adapters import adapter_for
from .errors import ModelLoadError
from .model_cache import cache_root, sha256_file  # noqa: F401 - re-exported (callers import them from here)

log = logging.getLogger(__name__)
ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str  # transformers model_type, e.g. "llama"
    kind: str  # "causal" | "encoder"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    context_length: int
    rope_theta: float | None
    n_params: int
    has_chat_template: bool
    dtype: str = "float32"
    d_ff: int = 0  # the MLP's inner width (0: unknown, e.g. a run file from before it was recorded)
    mlp_matrices: int = 0  # d_model x d_ff weight matrices per MLP: 3 gated (SwiGLU), 2 plain (0: unknown)

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 = MHA, n_heads = MQA)."""
        return self.n_heads // self.n_kv_heads

    @property
    def is_causal(self) -> bool:
        return self.kind == "causal"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    info: ModelInfo
    source: str  # where it came from, for the status bar and diagnostics
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. the cache is not writable)


def _noop(_fraction: float, _message: str) -> None:
    pass


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    allow_hub: bool | None = None,
) -> LoadedModel:
    """Load a catalogue model, a local HF folder, a `.gguf` file or (when allowed) a hub id."""
    progress = on_progress or _noop
    spec = str(name_or_path) if name_or_path is not None else catalogue.default_model_name()
    progress(0.0, f"Loading {spec}")
    entry = catalogue.get(spec)
    if entry is not None:
        loaded = _load_catalogue_entry(entry, progress)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            loaded = _load_folder(path, path.name, trust_remote_code, allow_pickle)
        elif path.suffix.lower() == ".gguf" or path.is_file():
            if not path.is_file():
                raise ModelLoadError(f"No model file at {path}.")
            if path.suffix.lower() != ".gguf":
                raise ModelLoadError(f"{path.name} is not a model: pick a model folder or a .gguf file.")
            loaded = _load_gguf(path, path.stem, expected_sha=None, progress=progress)
        elif _looks_like_hub_id(spec) and not path.exists():
            loaded = _load_hub(spec, trust_remote_code, allow_pickle, allow_hub)
        else:
            known = ", ".join(catalogue.builtin_names())
            raise ModelLoadError(f"'{spec}' is neither a built-in model ({known}) nor an existing folder or file.")
    progress(1.0, f"Loaded {loaded.info.name}")
    return loaded


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _load_catalogue_entry(entry: catalogue.CatalogueEntry, progress: ProgressCallback) -> LoadedModel:
    if entry.is_tiny:
        from .tiny import build_tiny

        model, tokenizer = build_tiny(entry)
        return _finish(model, tokenizer, entry.name, f"tiny random ({entry.config['model_type']})")
    root = _package_dir(entry)
    weights = root / entry.file
    if entry.format == "gguf":
        return _load_gguf(weights, entry.name, expected_sha=entry.sha256, progress=progress)
    if not weights.is_file():
        raise ModelLoadError(f"{entry.name}: {weights} is missing; reinstall with `lm-explorer fetch`.")
    progress(0.05, "Verifying the model files' checksums")
    _verify_builtin(entry, weights.parent)
    return _load_folder(weights.parent, entry.name, trust_remote_code=False, allow_pickle=False)


def _verify_builtin(entry: catalogue.CatalogueEntry, folder: Path) -> None:
    """A built-in folder's files must match the catalogue (hashed once per file version, then remembered)."""
    expected = dict(entry.files)
    if entry.sha256:
        expected[entry.file.split("/")[-1]] = entry.sha256
    for name, sha in sorted(expected.items()):
        path = folder / name
        try:
            digest = model_cache.content_sha256(path)
        except OSError as exc:
            raise ModelLoadError(f"{entry.name}: {path} cannot be read ({exc.strerror or exc}); reinstall it "
                                 "with `lm-explorer fetch --force`.") from exc
        if digest != sha:
            raise ModelLoadError(
                f"{entry.name}: {name} does not match its checksum (expected {sha[:12]}..., got {digest[:12]}...): "
                "the file is damaged or was changed. Reinstall it with `lm-explorer fetch --force`."
            )


def _package_dir(entry: catalogue.CatalogueEntry) -> Path:
    spec = importlib.util.find_spec(entry.module) if entry.module else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The model '{entry.name}' is not installed: run `lm-explorer fetch` "
            f"(it installs the PyPI package {entry.pip_requirement} without its dependencies)."
        )
    return Path(list(spec.submodule_search_locations)[0])


# Heads that an encoder checkpoint carries and the bare encoder we load does not use.
_ENCODER_HEADS = ("cls.", "lm_head.", "classifier.", "qa_outputs.")


def _load_folder(path: Path, name: str, trust_remote_code: bool, allow_pickle: bool) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    plan = checks.inspect_folder(path, need_weights=False, trust_remote_code=trust_remote_code)
    raw = plan.config
    if raw.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(
            f"{path.name} asks to run Python code shipped in the folder (auto_map in config.json). "
            "That code could do anything on this computer, so it is refused. Only if you trust its "
            "author, tick 'Allow code from this model folder' (trust_remote_code).",
            needs="trust_remote_code",
        )
    checks.check_config(raw, f"{path.name}/config.json")
    adapter_for(str(raw.get("model_type", "?")))  # raises ModelLoadError for unsupported architectures
    checks.plan_weights(plan, allow_pickle)
    with checks.staged(plan) as stage:
        try:
            config = AutoConfig.from_pretrained(stage, trust_remote_code=trust_remote_code, local_files_only=True)
            is_encoder = not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))
            factory = AutoModel if is_encoder else AutoModelForCausalLM
            checks.check_declared_size(config, factory, plan)
            model, info = factory.from_pretrained(
                stage, config=config, dtype=torch.float32, trust_remote_code=trust_remote_code,
                local_files_only=True, use_safetensors=not plan.pickle, weights_only=True,  # never unpickle code
                output_loading_info=True, ignore_mismatched_sizes=True,  # reported below, then refused
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # transformers raises many types for damaged files
            raise ModelLoadError(f"Could not load the weights in {path.name}: {checks.sentence(exc)}") from exc
        checks.check_loading_info(info, path.name, ignore_unexpected=_ENCODER_HEADS if is_encoder else ())
        tokenizer = _tokenizer_from(stage, path.name, trust_remote_code)
    checks.check_tokenizer_vocab(tokenizer, model.get_input_embeddings().weight.shape[0], path.name)
    return _finish(model, tokenizer, name, str(path))


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def _load_tokenizer(path: Path, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """Only a tokenizer: from a GGUF file (`gguf_file=`), a cache entry, or a vetted (staged) folder."""
    from transformers import AutoTokenizer

    if kwargs or Path(path).resolve().is_relative_to(model_cache.models_dir().resolve()):
        try:
            return AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
        except Exception as exc:
            raise ModelLoadError(
                f"The tokenizer in {Path(path).name} could not be loaded: {checks.sentence(exc)}") from exc
    plan = checks.inspect_folder(Path(path), need_weights=False, trust_remote_code=trust_remote_code)
    with checks.staged(plan) as stage:
        return _tokenizer_from(stage, Path(path).name, trust_remote_code)


def _tokenizer_from(folder: Path, name: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{name} has no tokenizer: none of {', '.join(_TOKENIZER_FILES)} is in the folder. "
            "Copy the tokenizer files from the model's original release next to config.json."
        )
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"The tokenizer in {name} could not be loaded: {checks.sentence(exc)}") from exc


def cached_tokenizer_dir(entry: catalogue.CatalogueEntry) -> Path | None:
    """The verified cache entry of a converted built-in, for reading its tokenizer only (weights not hashed)."""
    if not entry.sha256:
        return None
    folder = model_cache.entry_dir(entry.name, entry.sha256)
    names = (*_TOKENIZER_FILES, "special_tokens_map.json", "chat_template.jinja", "config.json")
    return folder if model_cache.entry_valid(folder, only=names) else None


# --- GGUF: dequantise once, cache as safetensors ---------------------------------------------


def _load_gguf(path: Path, name: str, expected_sha: str | None, progress: ProgressCallback) -> LoadedModel:
    if not path.is_file():
        raise ModelLoadError(f"The model file {path} is missing; reinstall with `lm-explorer fetch`.")
    model_cache.sweep_stale()
    if expected_sha is None:
        progress(0.01, "Reading the model file's checksum")
    try:
        key = expected_sha or model_cache.content_sha256(path)
    except OSError as exc:
        raise ModelLoadError(f"{path.name} cannot be read ({exc.strerror or exc}).") from exc
    entry = model_cache.entry_dir(name, key)
    if model_cache.entry_valid(entry):
        progress(0.5, "Loading cached weights")
        if (loaded := _load_cached(entry, name)) is not None:
            return loaded
    progress(0.02, "Verifying the model file's checksum")
    digest = sha256_file(path) if expected_sha is not None else key
    if expected_sha is not None and digest != expected_sha:
        raise ModelLoadError(
            f"{path.name} does not match its checksum (expected {expected_sha[:12]}..., got {digest[:12]}...): "
            "the file is damaged. Reinstall it with `lm-explorer fetch --force`."
        )
    converted: tuple[torch.nn.Module, Any] | None = None
    try:
        waiting = lambda: progress(0.03, "Another LM Explorer is converting this model: waiting for it")  # noqa: E731
        with model_cache.entry_lock(entry, on_wait=waiting):
            if model_cache.entry_valid(entry) and (loaded := _load_cached(entry, name)) is not None:
                return loaded  # the other process finished it
            converted = gguf_model.convert(path, progress)
            progress(0.88, "Writing the converted weights to the cache")
            model_cache.write_entry(entry, lambda tmp: gguf_model.save_converted(*converted, tmp), str(path), digest)
    except OSError as exc:  # read-only or full cache: keep the conversion in memory
        note = (f"The model cache ({cache_root()}) cannot be written ({exc.strerror or exc}): {path.name} was "
                "converted in memory and will be converted again on the next start.")
        log.warning(note)
        progress(0.95, note)
        model, tokenizer = converted if converted is not None else gguf_model.convert(path, progress)
        loaded = _finish(model, tokenizer, name, f"{path} (converted in memory)")
        loaded.notes.append(note)
        return loaded
    loaded = _load_cached(entry, name)
    if loaded is None:
        raise ModelLoadError(f"The converted copy of {path.name} could not be read back from {entry}.")
    return loaded


def write_cache_entry(model: torch.nn.Module, tokenizer: Any, entry_dir: Path, source: str,
                      source_sha256: str) -> None:
    """Write config + safetensors + tokenizer + manifest (every file checksummed) into place, under the entry's lock."""
    with model_cache.entry_lock(entry_dir):
        model_cache.write_entry(entry_dir, lambda tmp: gguf_model.save_converted(model, tokenizer, tmp), source,
                                source_sha256)


def _load_cached(entry_dir: Path, name: str) -> LoadedModel | None:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            entry_dir, dtype=torch.float32, local_files_only=True, use_safetensors=True
        )
        tokenizer = _load_tokenizer(entry_dir)
    except Exception as exc:  # a damaged entry is rebuilt by the caller
        log.warning("cached model in %s unreadable (%s); rebuilding", entry_dir, exc)
        return None
    return _finish(model, tokenizer, name, str(entry_dir))


def _load_hub(spec: str, trust_remote_code: bool, allow_pickle: bool, allow_hub: bool | None) -> LoadedModel:
    if allow_hub is None:
        allow_hub = os.environ.get("LM_EXPLORER_ALLOW_HUB") == "1" and os.environ.get("HF_HUB_OFFLINE") != "1"
    if not allow_hub:
        raise ModelLoadError(
            f"'{spec}' looks like a Hugging Face hub id, but downloading is off (offline mode). "
            "Download the model folder yourself and open it, or set LM_EXPLORER_ALLOW_HUB=1 when online."
        )
    try:
        from huggingface_hub import snapshot_download

        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
        folder = snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as exc:
        raise ModelLoadError(f"Could not download '{spec}': {checks.sentence(exc)}") from exc
    return _load_folder(Path(folder), spec, trust_remote_code, allow_pickle)


# --- info ---------------------------------------------------------------------------------------


def _finish(model: torch.nn.Module, tokenizer: Any, name: str, source: str) -> LoadedModel:
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, info=model_info(model, tokenizer, name), source=source)


def model_info(model: torch.nn.Module, tokenizer: Any, name: str) -> ModelInfo:
    cfg = model.config
    adapter = adapter_for(cfg.model_type)
    n_heads = adapter.n_heads(cfg)
    hidden = adapter.hidden_size(cfg)
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    return ModelInfo(
        name=name,
        architecture=cfg.model_type,
        kind=adapter.kind,
        n_layers=adapter.n_layers(cfg),
        n_heads=n_heads,
        n_kv_heads=adapter.n_kv_heads(cfg),
        head_dim=adapter.head_dim(cfg),
        hidden_size=hidden,
        vocab_size=cfg.vocab_size,
        context_length=adapter.context_length(cfg),
        rope_theta=float(rope_theta) if rope_theta is not None and adapter.uses_rope else None,
        n_params=sum(p.numel() for p in model.parameters()),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        **_mlp_shape(model, adapter, hidden),
    )


def _mlp_shape(model: torch.nn.Module, adapter, hidden: int) -> dict[str, int]:
    """The MLP's inner width and its number of d_model x d_ff matrices: the first layer's weight matrices less
    the attention's (q, k, v, o) over d_model x d_ff (for core/economics.py); zeros when that does not divide."""
    cfg = model.config
    d_ff = int(getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden)
    unknown = {"d_ff": 0, "mlp_matrices": 0}
    try:
        layer = adapter.layers(model)[0]
        heads, kv, head_dim = adapter.n_heads(cfg), adapter.n_kv_heads(cfg), adapter.head_dim(cfg)
    except Exception:  # noqa: BLE001 - a model without that layout: unknown
        return unknown
    elements = sum(p.numel() for p in layer.parameters() if p.dim() == 2)  # weight matrices only
    mlp = elements - hidden * head_dim * (2 * heads + 2 * kv)  # less q, o [d, H*dh] and k, v [d, KV*dh]
    matrices, rest = divmod(mlp, hidden * d_ff) if d_ff > 0 and mlp > 0 else (0, 1)
    return {"d_ff": d_ff, "mlp_matrices": int(matrices)} if matrices and not rest else unknown
