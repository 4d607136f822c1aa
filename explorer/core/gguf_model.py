"""GGUF files: their metadata checked against their tensors, then dequantised into a transformers model.

A GGUF file is untrusted: its header says how many layers and how wide the model is, and
transformers would build that model and fill whatever the tensors do not cover with random
numbers. `check_gguf` compares the header with the tensors (and with sane caps) before anything
is built; after loading, every tensor must have been read.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import re
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .adapters import adapter_for
from .chat_template import MAX_TEMPLATE_CHARS
from .errors import ModelLoadError
from .model_checks import CONFIG_CAPS, check_loading_info, check_tokenizer_vocab, sentence

ProgressCallback = Callable[[float, str], None]

_GGUF_CAPS = {  # metadata key suffix -> (what, cap), as CONFIG_CAPS
    "block_count": CONFIG_CAPS["layers"],
    "embedding_length": CONFIG_CAPS["hidden size"],
    "feed_forward_length": CONFIG_CAPS["feed-forward size"],
    "attention.head_count": CONFIG_CAPS["attention heads"],
    "attention.head_count_kv": CONFIG_CAPS["attention heads"],
    "context_length": CONFIG_CAPS["context length"],
    "vocab_size": CONFIG_CAPS["vocabulary"],
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_KV, _MAX_TENSORS, _MAX_KEEP = 1 << 16, 1 << 20, 4096
_MAX_MERGES = 4 << 20


class _Header:
    """A bounds-checked reader of a GGUF header: metadata values (long arrays as counts) and tensor shapes.

    Pure Python over a memory map, about 0.1 s for a 50k-token vocabulary (the gguf package's reader
    builds a numpy view per array element and takes seconds); every count is checked against the file size.
    """

    def __init__(self, data: bytes | mmap.mmap):
        self.data, self.pos = data, 0

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"the header runs past the end of the file (at byte {self.pos:,})")
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str) -> Any:
        return struct.unpack_from(fmt, self.data, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        return bytes(self.data[self.take(n): self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise ValueError(f"unknown metadata type {vtype}")
        etype, count = self.scalar("<I"), self.scalar("<Q")
        if count > len(self.data) - self.pos:  # every element takes at least one byte
            raise ValueError(f"an array of {count:,} elements in a file of {len(self.data):,} bytes")
        if etype in _SCALARS and count > _MAX_KEEP:
            self.take(count * struct.calcsize(_SCALARS[etype]))
            return _Count(count)
        if etype == _STRING and count > _MAX_KEEP:
            for _ in range(count):
                self.take(self.scalar("<Q"))
            return _Count(count)
        return [self.value(etype) for _ in range(count)]


class _Count(int):
    """The length of a long array whose elements were skipped."""


def read_gguf_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """Metadata and tensor shapes of a GGUF file (GGML order: the fastest-varying dimension first)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        head = _Header(data)
        if bytes(data[head.take(4): 4]) != b"GGUF":
            raise ValueError("no GGUF signature")
        version = head.scalar("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = head.scalar("<Q"), head.scalar("<Q")
        if n_tensors > _MAX_TENSORS or n_kv > _MAX_KV:
            raise ValueError(f"{n_tensors:,} tensors and {n_kv:,} metadata entries")
        fields = {}
        for _ in range(n_kv):
            key = head.string()
            fields[key] = head.value(head.scalar("<I"))
        tensors = {}
        for _ in range(n_tensors):
            name = head.string()
            n_dims = head.scalar("<I")
            if n_dims > 8:
                raise ValueError(f"a tensor with {n_dims} dimensions")
            tensors[name] = tuple(head.scalar("<Q") for _ in range(n_dims))
            head.scalar("<I")  # type
            head.scalar("<Q")  # offset
        return fields, tensors


def check_gguf(path: Path) -> None:
    """Compare a GGUF file's metadata with its tensors before transformers builds anything from it."""
    try:
        fields, tensors = read_gguf_header(path)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(f"{path.name} is not a readable GGUF model: {sentence(exc)}") from exc
    template = fields.get("tokenizer.chat_template")
    if isinstance(template, str) and len(template) > MAX_TEMPLATE_CHARS:
        raise ModelLoadError(f"The chat template in {path.name} is {len(template):,} characters long (at most "
                             f"{MAX_TEMPLATE_CHARS:,} are accepted): the file is refused.")
    tokens = fields.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, list) else int(tokens) if isinstance(tokens, _Count) else None
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelLoadError(f"{path.name} does not say which architecture it holds (general.architecture).")
    for suffix, (_keys, cap) in _GGUF_CAPS.items():
        value = fields.get(f"{arch}.{suffix}")
        if value is None:
            continue
        for v in value if isinstance(value, list) else [value]:  # per-layer values (some files): each
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= cap:
                raise ModelLoadError(
                    f"{path.name} declares {str(v)[:30]} for {arch}.{suffix} (at most {cap:,} is accepted): "
                    "the file is damaged or crafted, and it is refused before any memory is set aside."
                )
    if n_tokens is not None and n_tokens > CONFIG_CAPS["vocabulary"][1]:
        raise ModelLoadError(f"{path.name} has a vocabulary of {n_tokens:,} tokens: it is refused.")
    merges = fields.get("tokenizer.ggml.merges")
    if isinstance(merges, int) and merges > _MAX_MERGES:
        raise ModelLoadError(f"{path.name} has {merges:,} tokenizer merges (at most {_MAX_MERGES:,}): it is refused.")
    blocks: dict[int, set[str]] = {}
    for name in tensors:
        if m := _BLOCK.match(name):
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
    declared = fields.get(f"{arch}.block_count")
    if not isinstance(declared, int) or isinstance(declared, bool):
        raise ModelLoadError(f"{path.name} does not say how many layers it has ({arch}.block_count).")
    if sorted(blocks) != list(range(declared)):
        raise ModelLoadError(
            f"{path.name} declares {declared} layers ({arch}.block_count) but holds tensors for "
            f"{len(blocks)} (numbered {min(blocks, default=0)}..{max(blocks, default=-1)}): the file is damaged or "
            "crafted. A layer without weights would compute with random numbers, so it is refused."
        )
    first = blocks.get(0, set())
    for i, names in sorted(blocks.items()):
        if names != first:
            odd = sorted(names ^ first)[:3]
            raise ModelLoadError(
                f"Layer {i} of {path.name} does not hold the same tensors as layer 0 (differs in {', '.join(odd)}): "
                "the file is damaged or crafted, and it is refused."
            )
    embed = tensors.get("token_embd.weight")
    width = fields.get(f"{arch}.embedding_length")
    if embed is None:
        raise ModelLoadError(f"{path.name} has no token embedding table (token_embd.weight): it is refused.")
    if isinstance(width, int) and embed[0] != width:
        raise ModelLoadError(f"{path.name}: the embedding table is {embed[0]} wide but the metadata says {width}.")
    if n_tokens is not None and embed[-1] < n_tokens:
        raise ModelLoadError(
            f"The tokenizer in {path.name} has {n_tokens:,} tokens but the embedding table {embed[-1]:,} rows: "
            "token ids beyond the table would read past it, so the file is refused."
        )


def convert(gguf: Path, progress: ProgressCallback) -> tuple[torch.nn.Module, Any]:
    """Dequantise a GGUF file after checking its metadata against its tensors; every tensor must load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(gguf)
    with heartbeat(progress) as report:  # a stage that reports nothing still says it is alive, every second
        report(0.05, "Reading the tokenizer from the GGUF file")
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            report(0.15, "Reading the GGUF file's tensor index and building the model (first load only)")
            with _tqdm_progress(report, 0.2, 0.85):
                model, info = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32, output_loading_info=True)
            report(0.86, "Checking the converted model")
        except Exception as exc:
            raise ModelLoadError(f"{gguf.name} is not a readable GGUF model: {sentence(exc)}") from exc
    adapter_for(model.config.model_type)
    check_loading_info(info, gguf.name)
    check_tokenizer_vocab(tokenizer, model.get_input_embeddings().weight.shape[0], gguf.name)
    return model, tokenizer


def save_converted(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    from safetensors.torch import save_model

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    save_model(model, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def heartbeat(progress: ProgressCallback, interval: float = 1.0):
    """Yield a `report(fraction, message)` that forwards to `progress`; while nothing is reported for
    `interval` seconds, a helper thread repeats the last message with the time spent on it ("..., 12 s")."""
    lock = threading.Lock()
    last = {"fraction": 0.0, "message": "", "since": time.monotonic(), "at": time.monotonic()}
    stop = threading.Event()

    def report(fraction: float, message: str) -> None:
        with lock:
            now = time.monotonic()
            last.update(fraction=fraction, message=message, since=now, at=now)
            progress(fraction, message)  # under the lock: a beat never lands after a newer report

    def beat() -> None:
        while not stop.wait(interval / 4):
            with lock:
                now = time.monotonic()
                if not last["message"] or now - last["at"] < interval:
                    continue
                last["at"] = now
                try:
                    progress(last["fraction"], f"{last['message']}: still working, {now - last['since']:.0f} s")
                except Exception:  # noqa: BLE001 - a cancel point raising: the loading thread's next report raises
                    return

    thread = threading.Thread(target=beat, name="lm-explorer-progress", daemon=True)
    thread.start()
    try:
        yield report
    finally:
        stop.set()
        thread.join()


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
