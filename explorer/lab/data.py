"""Training data every install has offline: the Python standard library's own source files, split into
train and held-out BY FILE (so held-out text is never seen in training), as bytes (V = 256) by default or
as the token ids of a model's tokenizer (e.g. SmolLM2's 49,152), with the bytes per token kept so losses
are always reported in bits per byte."""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "lib2to3"}
MAX_FILE_BYTES = 2_000_000  # one oversized file never dominates (or exhausts memory)


def stdlib_files(root: Path | None = None) -> list[Path]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not (_SKIP_DIRS & set(p.relative_to(root).parts[:-1]))]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_heldout(name: str, fraction: float) -> bool:
    """A stable split by the file's relative path (independent of the seed and of file order)."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


@dataclass
class Corpus:
    train: np.ndarray  # [n_train] uint8 bytes or int32 token ids
    heldout: np.ndarray  # [n_heldout]
    n_train_files: int
    n_heldout_files: int
    train_bytes_per_token: float = 1.0
    heldout_bytes_per_token: float = 1.0

    def batch(self, rng: np.random.Generator, batch: int, seq: int, split: str = "train") -> torch.Tensor:
        data = self.train if split == "train" else self.heldout
        starts = rng.integers(0, len(data) - seq - 1, size=batch)
        rows = np.stack([data[s: s + seq + 1] for s in starts])  # [B, seq + 1]
        return torch.from_numpy(rows.astype(np.int64))

    def heldout_batches(self, batch: int, seq: int, n_batches: int) -> list[torch.Tensor]:
        """Fixed held-out windows (the same for every variant and every evaluation)."""
        rng = np.random.default_rng(12345)
        return [self.batch(rng, batch, seq, "heldout") for _ in range(n_batches)]


def load_corpus(root: Path | None = None, heldout_fraction: float = 0.05, max_bytes: int | None = None,
                tokenizer=None) -> Corpus:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    train, held = [], []
    n_train = n_held = 0
    total = 0
    for path in stdlib_files(root):
        try:
            data = path.read_bytes()[:MAX_FILE_BYTES]
        except OSError:
            continue
        if is_heldout(path.relative_to(root).as_posix(), heldout_fraction):
            held.append(data)
            n_held += 1
        else:
            train.append(data)
            n_train += 1
        total += len(data)
        if max_bytes is not None and total >= max_bytes and held and train:
            break
    if not train or not held:
        raise ValueError(f"no usable *.py files under {root} for a train/held-out split")
    if tokenizer is None:
        join = lambda parts: np.frombuffer(b"\n".join(parts), dtype=np.uint8)  # noqa: E731
        return Corpus(join(train), join(held), n_train, n_held)
    ids_train, ids_held = (_encode(tokenizer, parts) for parts in (train, held))
    return Corpus(ids_train, ids_held, n_train, n_held,
                  train_bytes_per_token=sum(map(len, train)) / max(1, len(ids_train)),
                  heldout_bytes_per_token=sum(map(len, held)) / max(1, len(ids_held)))


def _encode(tokenizer, parts: list[bytes]) -> np.ndarray:
    texts = [p.decode("utf-8", errors="replace") + "\n" for p in parts]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.concatenate([np.asarray(ids, dtype=np.int32) for ids in encoded])


def load_tokenizer(name: str):
    """None for bytes; else the tokenizer of a model the app can load (a catalogue name or folder)."""
    if name in ("bytes", "", None):
        return None
    from ..core.models import load_model

    return load_model(name).tokenizer


def save_byte_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer (token id == byte value) in Hugging Face's tokenizer.json format, so the
    app's tokenizer code (spans, readable pieces) works on lab models as on GPT-2-style models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}  # printable stand-in char -> byte value
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(folder))
