"""The engine process' channel (core/transport.py): big arrays through shared memory, objects both ends hold
sent once then by key, and the engine process' life cycle (core/engine_process.py)."""

from __future__ import annotations

import os
import pickle
import queue
import signal
from multiprocessing import Pipe

import numpy as np
import pytest

from explorer.core import engine as eng
from explorer.core.engine_process import ProcessEngine, lost_message
from explorer.core.errors import ModelLoadError, PromptTooLongError
from explorer.core.transport import INLINE_MAX, Channel


class Recording:
    """A connection end that remembers the size of every message it sent."""

    def __init__(self, conn):
        self.conn, self.sizes = conn, []

    def send_bytes(self, data) -> None:
        self.sizes.append(len(data))
        self.conn.send_bytes(data)

    def recv_bytes(self):
        return self.conn.recv_bytes()


@pytest.fixture
def ends():
    a, b = Pipe(duplex=True)
    left, right = Channel(Recording(a), "gui"), Channel(Recording(b), "engine")
    yield left, right
    a.close()
    b.close()


def _blocks() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("lmx_")} if os.path.isdir("/dev/shm") else set()


def test_big_arrays_go_through_shared_memory_and_nothing_is_left(ends):
    left, right = ends
    before = _blocks()
    big = np.arange(4_000_000, dtype=np.float32).reshape(1000, 4000)  # 16 MB
    left.send({"x": big, "note": "hello"})
    assert left.conn.sizes[-1] < 4096  # only a small header crossed the pipe
    message, missing = right.recv()
    assert missing == [] and message["note"] == "hello"
    np.testing.assert_array_equal(message["x"], big)
    message["x"][0, 0] = -1  # the receiver owns a copy
    assert big[0, 0] == 0
    assert _blocks() == before  # the block was unlinked once read


def test_small_messages_stay_inline(ends):
    left, right = ends
    small = np.ones(100, np.float32)
    left.send(small)
    assert sum(left.conn.sizes) < INLINE_MAX + 4096
    np.testing.assert_array_equal(right.recv()[0], small)


def test_a_run_is_sent_once_then_by_key_both_ways(ends, tiny_session):
    from explorer.core.api import run_request
    from explorer.core.events import GenerationSettings, RunRequest

    left, right = ends
    settings = GenerationSettings(max_new_tokens=2)
    run = run_request(tiny_session, RunRequest("A run that crosses twice", settings=settings))
    left.send(("job", run))
    first = sum(left.conn.sizes)
    theirs, _ = right.recv()
    theirs = theirs[1]
    assert theirs is not run and theirs.token_ids.tolist() == run.token_ids.tolist()
    left.send(("job", run))  # again: as its key
    assert sum(left.conn.sizes) - first < 1000 < first
    again, _ = right.recv()
    assert again[1] is theirs
    right.send(("result", theirs))  # and back: the sender's own object
    back, _ = left.recv()
    assert back[1] is run


def test_a_key_the_receiver_dropped_is_reported_missing_and_capacity_is_kept(ends, tiny_session):
    from explorer.core.api import run_request
    from explorer.core.events import GenerationSettings, RunRequest

    left, right = ends
    runs = [run_request(tiny_session, RunRequest(f"Run number {i}", settings=GenerationSettings(max_new_tokens=1)))
            for i in range(left.table.run_capacity + 1)]
    for run in runs:
        left.send(run)
        right.recv()
    # the sender keeps only the newest runs: the oldest key is forgotten, and its next message says so
    newest = left.table.share(runs[-1], "run")
    left.send("anything")
    right.recv()
    assert len([k for k in right.table._by_key if k.startswith("run:")]) == left.table.run_capacity
    assert newest in right.table._by_key
    right.table.drop(newest)  # e.g. the engine pruned it while a request referring to it was on its way
    left.send(("submit", 7, runs[-1]))
    message, missing = right.recv()
    assert missing == [newest] and message[1] == 7 and message[2] is None


def test_errors_cross_with_their_type_and_fields():
    from explorer.core.engine import NoRoom

    for error in (PromptTooLongError(900, 512, 10), NoRoom(900, 512, "no room at all"),
                  ModelLoadError("refused", needs="allow_pickle")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.__dict__ == error.__dict__


def test_lost_messages_name_the_cause():
    assert "out of memory" in lost_message(-signal.SIGKILL)
    assert "SIGSEGV" in lost_message(-signal.SIGSEGV)
    assert "exit code 3" in lost_message(3)


def test_the_engine_process_dying_fails_its_jobs_and_starts_a_new_one():
    events: queue.Queue = queue.Queue()
    engine = ProcessEngine(events.put, threads=1)
    try:
        first_pid = engine.pid
        job = engine.submit(eng.LoadModel("tiny-llama"))
        os.kill(first_pid, signal.SIGKILL)
        seen = []
        while not any(isinstance(e, eng.EngineLost) for e in seen):
            seen.append(events.get(timeout=60))
        failed = [e for e in seen if isinstance(e, eng.Failed)]
        assert [e.job for e in failed] == [job] and "SIGKILL" in failed[0].message
        assert engine.pid != first_pid and engine.alive and not engine.is_busy()
        again = engine.submit(eng.LoadModel("tiny-llama"))
        while True:
            event = events.get(timeout=120)
            if isinstance(event, (eng.Done, eng.Failed)) and event.job == again:
                break
        assert isinstance(event, eng.Done) and event.result.name == "tiny-llama"
    finally:
        engine.shutdown(2.0)
    assert not engine.alive


def test_a_request_that_cannot_cross_is_refused_and_leaves_nothing_pending():
    from dataclasses import dataclass

    events: queue.Queue = queue.Queue()
    engine = ProcessEngine(events.put, threads=1)
    try:
        @dataclass(frozen=True)
        class Live:  # a request holding a live object (a lambda): not plain data
            fn: object

        eng.HANDLERS[Live] = lambda ctx, req: None
        with pytest.raises(Exception, match="pickle|Can't|local"):
            engine.submit(Live(lambda: 1))
        assert not engine.is_busy()
    finally:
        eng.HANDLERS.pop(Live, None)
        engine.shutdown(2.0)
