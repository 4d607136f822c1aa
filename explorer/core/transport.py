"""How requests and events cross between two processes (the GUI and the engine): one message at a time.

    send:    pickle (protocol 5) with out-of-band buffers  ->  a small header over the pipe
             buffers of a message over INLINE_MAX bytes     ->  one shared-memory block, named in the header
             objects both ends already hold (a Run the engine streamed, a model's vocabulary matrix and texts)
                                                            ->  a key instead of the object (a pickle persistent id)
    receive: copy the buffers out of the block (numpy memcpy), unlink it, unpickle

So a 170 MB prefill step costs one copy on each side instead of a pickled copy of every array, and a run the
GUI sends back to the engine (e.g. the previous run whose prefix a new one reuses, or the run an eviction
what-if measures) travels as its key. The Channel needs only `send_bytes` / `recv_bytes` of a connection:
a socket to another machine (where shared memory is not available) sends the buffers inline instead
(`shared=False`); see the design notes on a remote engine.
"""

from __future__ import annotations

import itertools
import os
import pickle
import threading
from collections import OrderedDict
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

INLINE_MAX = 1 << 16  # bytes of buffers sent inside the header; bigger messages use shared memory
RUN_CAPACITY = 3  # runs each end keeps by key (older ones are forgotten, and the other end is told)


class MissingKey(KeyError):
    """A message referred to an object this end no longer holds (the sender is asked to send it in full)."""


class Interned:
    """Objects both ends of a channel hold, by key: sent in full once ("def"), then as their key ("ref").

    Runs are interned when they first cross; other objects (a model's vocabulary matrix and texts) when the
    engine `share`s them. `peer_has` is what the other end holds; `forgotten` collects keys dropped here,
    which the channel tells the other end about with its next message.
    """

    def __init__(self, side: str, run_capacity: int = RUN_CAPACITY):
        self.side = side  # "gui" or "engine": keys made here start with it, so the two ends never clash
        self.run_capacity = run_capacity
        self._by_key: OrderedDict[str, Any] = OrderedDict()
        self._key_of: dict[int, str] = {}  # id(obj) -> key (valid while _by_key holds obj)
        self._ids = itertools.count(1)
        self.peer_has: set[str] = set()
        self.forgotten: list[str] = []
        self.lock = threading.RLock()

    def key_of(self, obj: Any) -> str | None:
        key = self._key_of.get(id(obj))
        return key if key is not None and self._by_key.get(key) is obj else None

    def share(self, obj: Any, kind: str) -> str:
        """Hold `obj` under a new key of this end (or its existing key)."""
        with self.lock:
            key = self.key_of(obj)
            if key is None:
                key = f"{kind}:{self.side}:{next(self._ids)}"
                self.put(key, obj)
            return key

    def put(self, key: str, obj: Any) -> None:
        with self.lock:
            self._by_key[key] = obj
            self._by_key.move_to_end(key)
            self._key_of[id(obj)] = key
            self._prune(key.split(":", 1)[0])

    def get(self, key: str) -> Any:
        with self.lock:
            if key not in self._by_key:
                raise MissingKey(key)
            self._by_key.move_to_end(key)
            return self._by_key[key]

    def drop(self, key: str) -> None:
        """Forget a key here (the other end told us it dropped it, or a model was replaced)."""
        with self.lock:
            obj = self._by_key.pop(key, None)
            if obj is not None and self._key_of.get(id(obj)) == key:
                del self._key_of[id(obj)]
            self.peer_has.discard(key)

    def drop_kind(self, kind: str) -> None:
        with self.lock:
            for key in [k for k in self._by_key if k.startswith(kind + ":")]:
                self.drop(key)
                self.forgotten.append(key)

    def _prune(self, kind: str) -> None:
        if kind != "run":
            return
        runs = [k for k in self._by_key if k.startswith("run:")]
        for key in runs[: max(0, len(runs) - self.run_capacity)]:
            self.drop(key)
            self.forgotten.append(key)


class _Pickler(pickle.Pickler):
    def __init__(self, file, table: Interned, buffers: list):
        super().__init__(file, protocol=5, buffer_callback=buffers.append)
        self.table = table
        self.defining: set[int] = set()

    def persistent_id(self, obj: Any) -> Any:
        from .run import Run  # (a late import: core.run imports nothing of this module)

        if id(obj) in self.defining:
            return None  # inside its own definition (and repeats within one message: the memo)
        key = self.table.key_of(obj)
        if key is None:
            if not isinstance(obj, Run):
                return None
            key = self.table.share(obj, "run")
        if key in self.table.peer_has:
            return ("ref", key)
        self.defining.add(id(obj))
        self.table.peer_has.add(key)
        return ("def", key, obj)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, table: Interned, buffers):
        super().__init__(file, buffers=buffers)
        self.table = table
        self.missing: list[str] = []

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == "ref":
            try:
                return self.table.get(pid[1])
            except MissingKey:
                self.missing.append(pid[1])  # the message is unusable; the receiver asks for it again
                return None
        _, key, obj = pid
        self.table.put(key, obj)
        self.table.peer_has.add(key)
        return obj


_names = itertools.count()


class Channel:
    """One end of a message channel over a connection (`send_bytes` / `recv_bytes`); thread-safe sends."""

    def __init__(self, conn, side: str, *, shared: bool = True):
        self.conn = conn
        self.table = Interned(side)
        self.shared = shared
        self._send_lock = threading.Lock()

    def send(self, message: Any) -> None:
        import io

        with self._send_lock, self.table.lock:
            buffers: list[pickle.PickleBuffer] = []
            out = io.BytesIO()
            peer_had = set(self.table.peer_has)
            try:
                _Pickler(out, self.table, buffers).dump(message)
            except Exception:
                self.table.peer_has = peer_had  # nothing was sent: the other end learnt nothing
                raise
            forgotten, self.table.forgotten = self.table.forgotten, []
            raws = [b.raw() for b in buffers]
            sizes = [r.nbytes for r in raws]
            block = None
            if self.shared and sum(sizes) > INLINE_MAX:
                block = _write_block(raws, sizes)
                raws = []
            header = pickle.dumps((out.getvalue(), sizes, block, forgotten), protocol=5)
            try:
                self.conn.send_bytes(header)
                for raw in raws:
                    self.conn.send_bytes(raw)
            except BaseException:
                if block is not None:
                    _unlink(block)
                raise

    def recv(self) -> tuple[Any, list[str]]:
        """The next message (blocks) and the keys in it this end no longer holds (then the message has None
        in their place: ask for it again); EOFError when the other end has gone."""
        import io

        body, sizes, block, forgotten = pickle.loads(self.conn.recv_bytes())
        buffers = _read_block(block, sizes) if block is not None else [self.conn.recv_bytes() for _ in sizes]
        with self.table.lock:
            for key in forgotten:
                self.table.drop(key)
            unpickler = _Unpickler(io.BytesIO(body), self.table, buffers)
            message = unpickler.load()
            return message, unpickler.missing


def _write_block(raws: list[memoryview], sizes: list[int]) -> str:
    name = f"lmx_{os.getpid()}_{next(_names)}"
    shm = shared_memory.SharedMemory(name=name, create=True, size=max(1, sum(sizes)))
    resource_tracker.unregister(shm._name, "shared_memory")  # the receiver unlinks it (see _read_block)
    try:
        dest = np.frombuffer(shm.buf, np.uint8)
        at = 0
        for raw, n in zip(raws, sizes, strict=True):
            dest[at: at + n] = np.frombuffer(raw.cast("B"), np.uint8)
            at += n
        del dest
    finally:
        shm.close()
    return name


def _read_block(name: str, sizes: list[int]) -> list[np.ndarray]:
    shm = shared_memory.SharedMemory(name=name)
    try:
        src = np.frombuffer(shm.buf, np.uint8)
        out, at = [], 0
        for n in sizes:
            out.append(src[at: at + n].copy())  # one memcpy; the block is gone after this
            at += n
        del src
    finally:
        shm.close()
        shm.unlink()
    return out


def _unlink(name: str) -> None:
    try:
        shm = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    shm.close()
    shm.unlink()


def remove_blocks_of(pid: int) -> int:
    """Unlink the shared-memory blocks a dead process left behind (its name prefix); returns how many."""
    folder = "/dev/shm"
    if not os.path.isdir(folder):
        return 0
    n = 0
    for entry in os.listdir(folder):
        if entry.startswith(f"lmx_{pid}_"):
            try:
                os.unlink(os.path.join(folder, entry))
                n += 1
            except OSError:
                pass
    return n
