"""A paged KV-cache allocator, simulated over real token sequences (vLLM's PagedAttention: Kwon et al. 2023,
"Efficient Memory Management for Large Language Model Serving with PagedAttention", SOSP '23, arXiv:2309.06180).

    sequence tokens -> logical blocks of `block_size` slots -> block table -> physical blocks (a shared pool)

A contiguous cache reserves one [max_length] slab per sequence up front; a paged cache hands out fixed-size blocks
as tokens arrive, so at most one block per sequence is partly empty (internal fragmentation, the last block) and
nothing is reserved for tokens that never come. Blocks whose whole content and whole prefix match are one
physical block (prefix sharing, reference-counted, as vLLM's automatic prefix caching hashes full blocks). A
sequence forked from the same prompt (parallel sampling) also shares the prompt's partly filled last block;
the first token written into a shared block copies it first (copy-on-write).

Simulation, in order: every prompt is allocated (prefill), then the decode steps append one token per
sequence per step. Pure Python/numpy, no model: the bytes come from the model's shapes
(layers x kv heads x head_dim x 2 x dtype bytes per token, `batching.kv_bytes_per_token`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

BLOCK_SIZE = 16  # tokens per block (vLLM's default)


@dataclass(frozen=True)
class PagedLayout:
    """The allocator's state after every sequence is in (plain data)."""
    block_size: int
    tables: tuple[tuple[int, ...], ...]  # per sequence: physical block id of each logical block
    fill: tuple[int, ...]  # per physical block: slots holding a token
    refs: tuple[int, ...]  # per physical block: sequences whose table points at it
    seq_lengths: tuple[int, ...]  # tokens per sequence (prompt + generated)
    prompt_lengths: tuple[int, ...]
    cow_copies: int  # shared blocks copied on a write
    in_use: tuple[int, ...]  # physical blocks in use after the prefill (entry 0) and after each decode step
    bytes_per_token: int
    max_length: int  # what a contiguous allocator reserves per sequence

    # --- counts ------------------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return len(self.fill)

    @property
    def blocks_unshared(self) -> int:
        """Blocks the same sequences take without any sharing: sum of ceil(length / block_size)."""
        return sum(-(-n // self.block_size) for n in self.seq_lengths)

    @property
    def shared_blocks(self) -> int:
        """Physical blocks referenced by more than one sequence."""
        return sum(1 for r in self.refs if r > 1)

    @property
    def tokens_stored(self) -> int:
        """Distinct token slots filled (a shared block's tokens count once)."""
        return sum(self.fill)

    @property
    def internal_fragmentation(self) -> int:
        """Allocated but empty slots (only last blocks can be partly empty)."""
        return self.n_blocks * self.block_size - self.tokens_stored

    # --- bytes -------------------------------------------------------------------------------------------
    def bytes_of(self, slots: int) -> int:
        return int(slots) * self.bytes_per_token

    @property
    def paged_bytes(self) -> int:
        return self.bytes_of(self.n_blocks * self.block_size)

    @property
    def unshared_bytes(self) -> int:
        return self.bytes_of(self.blocks_unshared * self.block_size)

    @property
    def contiguous_bytes(self) -> int:
        """A contiguous allocator's reservation: max_length slots for every sequence."""
        return self.bytes_of(len(self.seq_lengths) * self.max_length)

    @property
    def saved_bytes(self) -> int:
        """Memory the paged cache does not use that contiguous allocation at max length reserves."""
        return self.contiguous_bytes - self.paged_bytes

    @property
    def shared_saved_bytes(self) -> int:
        """Of which prefix sharing (and not-yet-copied forks) saves."""
        return self.unshared_bytes - self.paged_bytes


class _Pool:
    def __init__(self, block_size: int):
        self.block_size = block_size
        self.fill: list[int] = []
        self.refs: list[int] = []
        self.cow = 0

    def new(self, filled: int) -> int:
        self.fill.append(filled)
        self.refs.append(1)
        return len(self.fill) - 1

    def in_use(self) -> int:
        return sum(1 for r in self.refs if r > 0)


def simulate(sequences: list[list[int]], prompt_lengths: list[int], *, bytes_per_token: int,
             max_length: int, block_size: int = BLOCK_SIZE) -> PagedLayout:
    """Allocate `sequences` (token ids: prompt then generated) block by block, sharing what vLLM would share."""
    if not sequences:
        raise InputError("No sequences to allocate: run a batch first.")
    if len(prompt_lengths) != len(sequences):
        raise InputError("Each sequence needs its prompt length.")
    if block_size < 1 or bytes_per_token < 0:
        raise InputError("The block size must be at least 1 and the bytes per token not negative.")
    for seq, n in zip(sequences, prompt_lengths, strict=True):
        if not 0 < n <= len(seq):
            raise InputError(f"A prompt length ({n}) must be between 1 and its sequence's length ({len(seq)}).")
        if len(seq) > max_length:
            raise InputError(f"A sequence of {len(seq)} tokens is longer than the max length {max_length}.")
    pool = _Pool(block_size)
    tables: list[list[int]] = []
    full_blocks: dict[tuple, int] = {}  # (prefix tokens up to the block's end) -> physical block
    partial_forks: dict[tuple, int] = {}  # whole prompt -> its partly filled last block (a fork shares it)
    for seq, n in zip(sequences, prompt_lengths, strict=True):  # prefill
        table = []
        for start in range(0, n, block_size):
            end = min(start + block_size, n)
            key = tuple(seq[:end])
            shared = full_blocks if end - start == block_size else partial_forks
            block = shared.get(key)
            if block is None:
                block = shared[key] = pool.new(end - start)
            else:
                pool.refs[block] += 1
            table.append(block)
        tables.append(table)
    in_use = [pool.in_use()]
    lengths = list(prompt_lengths)
    for _step in range(max(len(s) - n for s, n in zip(sequences, prompt_lengths, strict=True))):  # decode
        for i, seq in enumerate(sequences):
            if lengths[i] >= len(seq):
                continue
            _append(pool, tables[i], lengths[i])
            lengths[i] += 1
        in_use.append(pool.in_use())
    return PagedLayout(block_size=block_size, tables=tuple(tuple(t) for t in tables), fill=tuple(pool.fill),
                       refs=tuple(pool.refs), seq_lengths=tuple(len(s) for s in sequences),
                       prompt_lengths=tuple(prompt_lengths), cow_copies=pool.cow, in_use=tuple(in_use),
                       bytes_per_token=int(bytes_per_token), max_length=int(max_length))


def _append(pool: _Pool, table: list[int], length: int) -> None:
    """Write one token at slot `length` of a sequence: a new block when the last is full, a copy when shared."""
    if length % pool.block_size == 0:
        table.append(pool.new(1))
        return
    last = table[-1]
    if pool.refs[last] > 1:  # copy-on-write: this sequence gets its own copy of the shared partial block
        pool.refs[last] -= 1
        last = table[-1] = pool.new(pool.fill[last])
        pool.cow += 1
    pool.fill[last] += 1


def from_batch(result, max_length: int, block_size: int = BLOCK_SIZE) -> PagedLayout:
    """The paged layout of a finished batch's cache (its real tokens; the padding a paged cache never stores)."""
    rows = [result.row_tokens(b) for b in range(result.batch_size)]
    return simulate(rows, list(result.prompt_lengths), bytes_per_token=result.kv_bytes_per_token,
                    max_length=max_length, block_size=block_size)


def from_runs(runs: list, max_length: int, block_size: int = BLOCK_SIZE) -> PagedLayout:
    """The paged layout of real runs' caches, e.g. the run on screen and the one before it: the prefix they
    share (what the KV cache reuses between runs) is stored once."""
    from .batching import kv_bytes_per_token

    return simulate([[int(t) for t in r.token_ids] for r in runs], [max(1, r.n_prompt) for r in runs],
                    bytes_per_token=kv_bytes_per_token(runs[-1].info), max_length=max_length, block_size=block_size)


def own_bytes(runs: list) -> int:
    """What the runs' own (contiguous, exactly sized) caches hold together."""
    from .batching import kv_bytes_per_token

    return sum(r.n_tokens for r in runs) * kv_bytes_per_token(runs[-1].info)


def padded_bytes(result) -> int:
    """What the batch's own cache held: one [B, T] block of slots per layer, padding included."""
    return int(result.attention_mask.size) * result.kv_bytes_per_token
