"""Model loading: catalogue names, local HF folders, GGUF files and (opt-in) hub ids.

The default model ships as a quantised GGUF inside a PyPI wheel; it is dequantised once and
cached as safetensors + config + tokenizer in a per-user folder, written atomically and
verified by checksum, so later loads take well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import catalogue
from .adapters import adapter_for
from .errors import ModelLoadError

log = logging.getLogger(__name__)
ProgressCallback = Callable[[float, str], None]
_MANIFEST = "explorer-manifest.json"
_CACHE_FORMAT = 1


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


def cache_root() -> Path:
    """Per-user cache folder; LM_EXPLORER_CACHE overrides it (tests use a temporary one)."""
    env = os.environ.get("LM_EXPLORER_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("lm-explorer"))


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
    return _load_folder(weights.parent, entry.name, trust_remote_code=False, allow_pickle=False)


def _package_dir(entry: catalogue.CatalogueEntry) -> Path:
    spec = importlib.util.find_spec(entry.module) if entry.module else None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The model '{entry.name}' is not installed: run `lm-explorer fetch` "
            f"(it installs the PyPI package {entry.pip_requirement} without its dependencies)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _load_folder(path: Path, name: str, trust_remote_code: bool, allow_pickle: bool) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json: it is not a Hugging Face model folder.")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON ({exc}).") from exc
    if raw.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(
            f"{path.name} asks to run Python code shipped in the folder (auto_map in config.json). "
            "That code could do anything on this computer, so it is refused. Only if you trust its "
            "author, tick 'Allow code from this model folder' (trust_remote_code).",
            needs="trust_remote_code",
        )
    has_safetensors = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
    if not has_safetensors and not has_pickle:
        raise ModelLoadError(f"{path.name} has no weights (*.safetensors) next to its config.json.")
    if not has_safetensors and not allow_pickle:
        raise ModelLoadError(
            f"{path.name} only has pickle checkpoints (*.bin/*.pt), which can execute code when loaded. "
            "They are refused unless you opt in to loading pickle weights.",
            needs="allow_pickle",
        )
    adapter_for(raw.get("model_type", "?"))  # raises ModelLoadError for unsupported architectures
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
        is_encoder = not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))
        factory = AutoModel if is_encoder else AutoModelForCausalLM
        model = factory.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=trust_remote_code, local_files_only=True,
            use_safetensors=None if allow_pickle else True, weights_only=True,  # never unpickle code
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers raises many types for damaged files
        raise ModelLoadError(f"Could not load the weights in {path.name}: {_short(exc)}") from exc
    tokenizer = _load_tokenizer(path, trust_remote_code)
    return _finish(model, tokenizer, name, str(path))


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def _load_tokenizer(path: Path, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    if not any((Path(path) / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{Path(path).name} has no tokenizer: none of {', '.join(_TOKENIZER_FILES)} is in the folder. "
            "Copy the tokenizer files from the model's original release next to config.json."
        )
    try:
        return AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=True, **kwargs
        )
    except Exception as exc:
        raise ModelLoadError(f"The tokenizer in {Path(path).name} could not be loaded: {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    """The first line of an exception's message, as the end of a sentence."""
    text = str(exc).strip().splitlines()
    line = (text[0] if text else type(exc).__name__)[:300].rstrip(" :")
    return line if line.endswith((".", ")", "!", "?")) else line + "."


# --- GGUF: dequantise once, cache as safetensors ---------------------------------------------


def _load_gguf(path: Path, name: str, expected_sha: str | None, progress: ProgressCallback) -> LoadedModel:
    if not path.is_file():
        raise ModelLoadError(f"The model file {path} is missing; reinstall with `lm-explorer fetch`.")
    stat = path.stat()
    key = f"{name}-{stat.st_size}-{int(stat.st_mtime)}" if expected_sha is None else f"{name}-{expected_sha[:16]}"
    entry_dir = cache_root() / "models" / key
    if _cache_entry_valid(entry_dir):
        progress(0.5, "Loading cached weights")
        loaded = _load_cached(entry_dir, name)
        if loaded is not None:
            return loaded
    progress(0.02, "Verifying the model file's checksum")
    digest = sha256_file(path)
    if expected_sha is not None and digest != expected_sha:
        raise ModelLoadError(
            f"{path.name} does not match its checksum (expected {expected_sha[:12]}..., got {digest[:12]}...): "
            "the file is damaged. Reinstall it with `lm-explorer fetch --force`."
        )
    _build_cache_entry(path, entry_dir, digest, progress)
    loaded = _load_cached(entry_dir, name)
    if loaded is None:
        raise ModelLoadError(f"The converted copy of {path.name} could not be read back from {entry_dir}.")
    return loaded


def _cache_entry_valid(entry_dir: Path) -> bool:
    manifest = entry_dir / _MANIFEST
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        weights = entry_dir / "model.safetensors"
        if meta.get("format") != _CACHE_FORMAT or weights.stat().st_size != meta["weights_size"]:
            return False
        return sha256_file(weights) == meta["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _build_cache_entry(gguf: Path, entry_dir: Path, digest: str, progress: ProgressCallback) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(0.05, "Reading the tokenizer from the GGUF file")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        progress(0.15, "Dequantising the weights (first load only)")
        with _tqdm_progress(progress, 0.15, 0.85):
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:
        raise ModelLoadError(f"{gguf.name} is not a readable GGUF model: {_short(exc)}") from exc
    adapter_for(model.config.model_type)
    progress(0.88, "Writing the converted weights to the cache")
    write_cache_entry(model, tokenizer, entry_dir, source=str(gguf), source_sha256=digest)


def write_cache_entry(model: torch.nn.Module, tokenizer: Any, entry_dir: Path, source: str,
                      source_sha256: str) -> None:
    """Write config + safetensors + tokenizer + manifest into a temporary folder, then rename it into place."""
    from safetensors.torch import save_model

    entry_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry_dir.name + ".tmp-", dir=entry_dir.parent))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        save_model(model, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(tmp)
        weights = tmp / "model.safetensors"
        meta = {
            "format": _CACHE_FORMAT,
            "source": source,
            "source_sha256": source_sha256,
            "weights_size": weights.stat().st_size,
            "weights_sha256": sha256_file(weights),
        }
        (tmp / _MANIFEST).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if entry_dir.exists():  # a damaged entry: replace it whole
            shutil.rmtree(entry_dir)
        os.replace(tmp, entry_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


@contextlib.contextmanager
def _tqdm_progress(progress: ProgressCallback, lo: float, hi: float):
    """Report transformers' GGUF dequantisation loop (a tqdm) as real progress."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm

    def reporting(iterable, *args, **kwargs):
        items = list(iterable)
        for i, item in enumerate(items):
            if i % 8 == 0:
                progress(lo + (hi - lo) * i / max(1, len(items)), f"Dequantising tensor {i + 1}/{len(items)}")
            yield item

    gguf_utils.tqdm = reporting
    try:
        yield
    finally:
        gguf_utils.tqdm = original


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
        raise ModelLoadError(f"Could not download '{spec}': {_short(exc)}") from exc
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
    )
