"""The engine in its own process: `ProcessEngine` has the Engine's interface (submit / cancel / is_busy / alive /
shutdown, events through `on_event`), and the model, the one job queue and the torch thread policy live in a
child process that runs a plain `Engine`.

    caller --submit(request)--> Channel (pickle 5, big arrays through shared memory) --> serve(): Engine.submit
    serve(): Engine event --> Channel --> reader thread --> on_event(event)

The child keeps its own copy of the runs it streamed (it applies the same step events the caller applies), so
a run sent back (a prefix to reuse, a run to measure) travels as a key. When the child dies (a crash, the
out-of-memory killer, a kill), every job in flight fails with a message, a fresh child starts at once and
`EngineLost` tells the caller, which loads its model again; what the caller holds (its runs) is untouched.
A remote engine would be the same `serve` loop behind a socket Channel (see DESIGN.md, "Remote engine").
This module imports no torch: the caller's process never needs it.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .transport import Channel, remove_blocks_of

log = logging.getLogger(__name__)

# imported by the engine process (and the window's, for the thread engine): each registers its jobs' handlers
JOB_MODULES = ("explorer.core.analysis.jobs", "explorer.core.analysis.batch_jobs", "explorer.core.retrieval.jobs")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds explorer/


def default_threads(cpus: int | None = None) -> int:
    """Torch threads of the engine when the setting says "auto": one core is left to the window.

    Measured on the 2-core target (`lm-explorer bench`, "engine threads" rows): with the window streaming,
    one engine thread decodes faster than two (two threads and the GUI thread oversubscribe two cores)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


class ProcessEngine:
    """An Engine in a child process (spawned, so no Qt or torch state is inherited)."""

    session = None  # the model lives in the child: nothing in this process can touch it

    def __init__(self, on_event: Callable[[Any], None], *, threads: int | None = None,
                 name: str = "lm-explorer-engine", modules: tuple[str, ...] = JOB_MODULES, restart: bool = True):
        """`modules`: what the child imports to register its job handlers; `restart`: start a fresh child when
        this one dies (the window's engine) or not (a one-job side process, core/side_jobs.py)."""
        if not all(m.startswith("explorer.") and m.replace(".", "").replace("_", "").isalnum() for m in modules):
            raise ValueError(f"not job modules of this package: {modules}")
        self.on_event = on_event
        self.modules = modules
        self.restart = restart
        self.threads = threads if threads and threads > 0 else default_threads()
        self.name = name
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Any, str | None, int]] = {}  # job -> (request, key, priority)
        self._closing = False
        self.restarts = 0
        self._start()

    # --- the child process ------------------------------------------------------------------------------------
    def _start(self) -> None:
        """A fresh interpreter (`python -m explorer.core.engine_process FD THREADS`): nothing of this process
        (Qt, torch, the caller's __main__) is inherited or re-imported; one socket pair carries the Channel."""
        ours, theirs = socket.socketpair()
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads),
                   PYTHONPATH=os.pathsep.join([_PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "explorer.core.engine_process", str(theirs.fileno()), str(self.threads),
                 ",".join(self.modules)],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.channel = Channel(Connection(ours.detach()), "gui")
        self._reader = threading.Thread(target=self._read, args=(self.channel, self.process),
                                        name=f"{self.name}-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    # --- any thread ------------------------------------------------------------------------------------------
    def submit(self, request: Any, *, key: str | None = None, priority: int = 0) -> int:
        from .engine import HANDLERS

        if type(request) not in HANDLERS:
            raise TypeError(f"the engine has no handler for {type(request).__name__}")
        with self._lock:
            if self._closing:
                raise RuntimeError("the engine is shut down")
            job = next(self._ids)
            self._pending[job] = (request, key, priority)
        try:
            self._send(("submit", job, request, key, priority))
        except Exception:  # the request cannot cross (not plain data): it was never queued
            with self._lock:
                self._pending.pop(job, None)
            raise
        return job

    def cancel(self, job_id: int | None = None, *, key: str | None = None) -> None:
        self._send(("cancel", job_id, key))

    def is_busy(self) -> bool:
        with self._lock:
            return bool(self._pending)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def shutdown(self, timeout: float = 1.0) -> bool:
        """Cancel everything and stop the child (killed when it does not stop within `timeout` s)."""
        with self._lock:
            self._closing = True
        self._send(("shutdown",))
        for stop in (None, self.process.terminate, self.process.kill):
            if stop is not None:
                stop()
            try:
                self.process.wait(timeout if stop is None else 1.0)
                break
            except subprocess.TimeoutExpired:
                continue
        self.channel.conn.close()
        return True

    def _send(self, message: Any) -> None:
        try:
            self.channel.send(message)
        except (OSError, EOFError, ValueError):  # the child is gone: the reader reports it and restarts
            log.info("engine process gone while sending %s", message[0])

    # --- the reader thread ------------------------------------------------------------------------------------
    def _read(self, channel: Channel, process) -> None:
        from .engine import Done, Failed, JobCancelled

        while True:
            try:
                message, missing = channel.recv()
            except (EOFError, OSError):
                break
            if message[0] == "resend":  # the child no longer held a run a request referred to
                _, job, keys = message
                with self._lock:
                    pending = self._pending.get(job)
                for k in keys:
                    channel.table.peer_has.discard(k)
                if pending is not None:
                    self._send(("submit", job, *pending))
                continue
            event = message[1]
            if missing:  # a run this end forgot was referred to: only a job's result can hold one
                event = Failed(event.job, RuntimeError("stale run"), "The engine referred to a run that is no "
                               "longer open; run it again.")
            if isinstance(event, (Done, Failed, JobCancelled)):
                with self._lock:
                    self._pending.pop(event.job, None)
            self._emit(event)
        if not self._closing:
            self._lost(process)

    def _emit(self, event: Any) -> None:
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - a broken listener must not stop the reader
            log.exception("engine event listener failed")

    def _lost(self, process) -> None:
        from .engine import EngineLost, Failed

        try:
            code = process.wait(2.0)
        except subprocess.TimeoutExpired:  # the socket broke but the process hangs on: end it
            process.kill()
            code = process.wait()
        remove_blocks_of(process.pid)
        message = lost_message(code)
        log.error("engine process %s stopped: %s", process.pid, message)
        with self._lock:
            pending, self._pending = self._pending, {}
        for job in sorted(pending):
            self._emit(Failed(job, EngineCrash(message), message))
        with self._lock:
            if self._closing or not self.restart:
                self._closing = True
                return
            self.restarts += 1
            self._start()
        self._emit(EngineLost(message, code))


class EngineCrash(RuntimeError):
    """The engine process stopped while a job ran."""


def lost_message(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGKILL": " (killed: most often the system ran out of memory)",
               "SIGSEGV": " (a crash inside a library)", "SIGABRT": " (aborted)"}.get(name, "")
        return f"The engine process stopped with {name}{why}."
    return f"The engine process stopped (exit code {code})."


# --- the child ------------------------------------------------------------------------------------------------------
def import_job_modules(modules: tuple[str, ...] = JOB_MODULES) -> None:
    """Import the modules whose engine jobs a process serves (each registers its handlers on import)."""
    import importlib

    for module in modules:
        importlib.import_module(module)


def serve(conn, threads: int, modules: tuple[str, ...] = JOB_MODULES) -> None:
    """The engine process: one Engine, its events sent back, requests received until shutdown or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal is the window's to handle
    import torch

    torch.set_num_threads(threads)
    from . import engine as eng
    from .run import Run

    import_job_modules(modules)

    channel = Channel(conn, "engine")
    runs: dict[int, Run] = {}  # job -> this process' copy of the run its stream grows
    loads: set[int] = set()

    def forward(event) -> None:
        if isinstance(event, eng.Started) and isinstance(event.payload, Run):
            run = event.payload
            for part in (run.unembed, run.vocab):
                if part is not None:
                    channel.table.share(part, "model")  # sent once per model, then by key
            runs[event.job] = run
        if isinstance(event, eng.Done) and event.job in loads:
            channel.table.drop_kind("model")  # a new model: the previous one's parts are not sent again
        send(("event", safe(event)))
        if isinstance(event, eng.Step) and event.job in runs:
            runs[event.job].apply(event.event)
        if isinstance(event, (eng.Done, eng.Failed, eng.JobCancelled)):
            runs.pop(event.job, None)
            loads.discard(event.job)

    def send(message) -> None:
        try:
            channel.send(message)
        except (OSError, EOFError, ValueError):
            os._exit(0)  # the window has gone

    engine = eng.Engine(forward, threads=threads)
    while True:
        try:
            message, missing = channel.recv()
        except (EOFError, OSError):
            break
        if message[0] == "submit":
            _, job, request, key, priority = message
            if missing:
                send(("resend", job, missing))
                continue
            if isinstance(request, eng.LoadModel):
                loads.add(job)
            try:
                engine.submit(request, key=key, priority=priority, job_id=job)
            except Exception as exc:  # noqa: BLE001 - e.g. a request type this process does not know
                send(("event", eng.Failed(job, RuntimeError(str(exc)), str(exc))))
        elif message[0] == "cancel":
            engine.cancel(message[1], key=message[2])
        elif message[0] == "shutdown":
            break
    engine.shutdown(1.0)
    os._exit(0)  # do not wait for a library call still running on the engine thread


def safe(event):
    """The event, with an error that cannot cross to the other process replaced by one that can."""
    import pickle

    from .engine import Failed

    if isinstance(event, Failed):
        try:
            pickle.loads(pickle.dumps(event.error))
        except Exception:  # noqa: BLE001 - any unpicklable exception
            return Failed(event.job, RuntimeError(event.message.split("\n\n")[0]), event.message, event.needs)
    return event


if __name__ == "__main__":  # python -m explorer.core.engine_process FD THREADS (started by ProcessEngine)
    serve(Connection(int(sys.argv[1])), int(sys.argv[2]), tuple(filter(None, sys.argv[3].split(","))))
