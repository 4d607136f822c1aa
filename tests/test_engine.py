"""The engine: one thread owns the model; every job that needs it is a queued request; events come back."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest
from numeric import assert_close

from explorer.core import engine as eng
from explorer.core.analysis import eviction as ev
from explorer.core.analysis.jobs import EvictionWhatIf, HeadSweep
from explorer.core.api import run_request
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runner import Session

STREAMED = RunRequest("one two three four five six seven eight nine ten eleven twelve",
                      settings=GenerationSettings(max_new_tokens=12, stop_at_eos=False))
BASE = RunRequest("the cat sat on the mat and then the dog sat on the log",
                  settings=GenerationSettings(max_new_tokens=8, stop_at_eos=False))
POLICIES = (ev.EvictionPolicy("streaming", budget=6, sinks=2), ev.EvictionPolicy("h2o", budget=6, window=2),
            ev.EvictionPolicy("snapkv", budget=6, window=3))
ARRAYS = ("queries", "keys", "values", "resid", "final_resid", "pred_top_logprobs", "token_logprob")


class Recorder:
    """Collects engine events per job; `wait(job)` returns the job's final event."""

    def __init__(self):
        self.events: dict[int, list] = {}
        self.final: dict[int, queue.Queue] = {}
        self.lock = threading.Lock()
        self.hook = None  # called with each event on the engine thread

    def __call__(self, event) -> None:
        with self.lock:
            self.events.setdefault(event.job, []).append(event)
            box = self.final.setdefault(event.job, queue.Queue())
        if self.hook is not None:
            self.hook(event)
        if isinstance(event, (eng.Done, eng.Failed, eng.JobCancelled)):
            box.put(event)

    def wait(self, job: int, timeout: float = 120):
        with self.lock:
            box = self.final.setdefault(job, queue.Queue())
        return box.get(timeout=timeout)

    def streamed_run(self, job: int):
        """The Run grown from a StreamRun job's events, as the GUI grows it."""
        run = None
        for event in self.events[job]:
            if isinstance(event, eng.Started):
                run = event.payload
            elif isinstance(event, eng.Step):
                run.apply(event.event)
        return run


@pytest.fixture
def base_run(tiny_llama):
    return run_request(Session(tiny_llama), BASE)  # a finished run to measure evictions on


def _engine(tiny_llama):
    rec = Recorder()
    return eng.Engine(rec, session=Session(tiny_llama)), rec


def _check_same(run_a, run_b, effects_a, effects_b):
    assert [t.id for t in run_a.tokens] == [t.id for t in run_b.tokens]
    for name in ARRAYS:
        assert_close(run_a.array(name).astype(np.float64), run_b.array(name).astype(np.float64), 1e-4)
    assert set(effects_a) == set(effects_b) == {p.kind for p in POLICIES}
    for kind in effects_a:
        assert_close(effects_a[kind].kl, effects_b[kind].kl, 1e-4)
        assert np.array_equal(effects_a[kind].top1_evicted, effects_b[kind].top1_evicted)


def test_eviction_started_while_a_run_streams_equals_the_jobs_one_after_the_other(tiny_llama, base_run):
    # one after the other
    engine, rec = _engine(tiny_llama)
    try:
        alone = engine.submit(eng.StreamRun(STREAMED), key="run")
        assert isinstance(rec.wait(alone), eng.Done)
        measure = engine.submit(EvictionWhatIf(base_run, POLICIES, 8))
        done = rec.wait(measure)
        assert isinstance(done, eng.Done), getattr(done, "message", done)
        run_alone, effects_alone = rec.streamed_run(alone), done.result[3]
    finally:
        assert engine.shutdown(10)

    # the eviction what-if is submitted from another thread while the run is half way through its steps
    engine, rec = _engine(tiny_llama)
    submitted, halfway = threading.Event(), threading.Event()

    def hold_at_halfway(event) -> None:  # the engine thread waits here until the what-if is queued
        if isinstance(event, eng.Step) and event.event.step == 6:
            halfway.set()
            assert submitted.wait(30)

    rec.hook = hold_at_halfway
    try:
        streaming = engine.submit(eng.StreamRun(STREAMED), key="run")
        assert halfway.wait(60)
        measure = engine.submit(EvictionWhatIf(base_run, POLICIES, 8))
        submitted.set()
        finished, done = rec.wait(streaming), rec.wait(measure)
        assert isinstance(finished, eng.Done) and finished.result == "max_tokens"
        assert isinstance(done, eng.Done), getattr(done, "message", done)
        run_both = rec.streamed_run(streaming)
        assert len(run_both.steps) == len(run_alone.steps) == 13
        _check_same(run_both, run_alone, done.result[3], effects_alone)
    finally:
        assert engine.shutdown(10)


def test_the_model_is_only_run_on_the_engine_thread(tiny_llama, base_run):
    engine, rec = _engine(tiny_llama)
    threads = set()
    model = tiny_llama.model
    handles = [m.register_forward_pre_hook(lambda *_a: threads.add(threading.get_ident()))
               for m in (model, *Session(tiny_llama).adapter.layers(model))]
    try:
        jobs = [engine.submit(eng.StreamRun(STREAMED)), engine.submit(EvictionWhatIf(base_run, POLICIES, 4)),
                engine.submit(HeadSweep(base_run.token_ids, base_run.n_prompt - 1, int(base_run.token_ids[-1]))),
                engine.submit(eng.CompleteRun(BASE))]
        for job in jobs:
            final = rec.wait(job)
            assert isinstance(final, eng.Done), getattr(final, "message", final)
        assert threads == {engine.thread.ident}
        with pytest.raises(RuntimeError, match="engine"):  # re-running it from another thread is refused
            ev.measure_effects(tiny_llama, base_run, {}, ev.decode_rows(base_run, 2))
    finally:
        for h in handles:
            h.remove()
        assert engine.shutdown(10)
    ev.measure_effects(tiny_llama, base_run, {}, ev.decode_rows(base_run, 2))  # released with the engine


def test_a_newer_run_supersedes_and_cancel_by_id(tiny_llama):
    engine, rec = _engine(tiny_llama)
    gate = threading.Event()
    rec.hook = lambda event: isinstance(event, eng.Step) and gate.wait(30)
    try:
        first = engine.submit(eng.StreamRun(STREAMED), key="run")
        queued = engine.submit(eng.StreamRun(STREAMED), key="run")
        last = engine.submit(eng.StreamRun(BASE), key="run")  # cancels the running one and the queued one
        other = engine.submit(eng.CompleteRun(BASE))
        engine.cancel(other)
        gate.set()
        assert isinstance(rec.wait(first), eng.JobCancelled)
        assert isinstance(rec.wait(queued), eng.JobCancelled)
        assert not any(isinstance(e, eng.Started) for e in rec.events[queued])  # never started
        assert isinstance(rec.wait(other), eng.JobCancelled)
        assert isinstance(rec.wait(last), eng.Done)
        assert rec.streamed_run(last).request.prompt == BASE.prompt
    finally:
        assert engine.shutdown(10)


def test_jobs_without_a_model_fail_with_a_message_and_the_engine_goes_on(tiny_llama):
    rec = Recorder()
    engine = eng.Engine(rec)
    try:
        failed = rec.wait(engine.submit(eng.CompleteRun(BASE)))
        assert isinstance(failed, eng.Failed) and "No model" in failed.message
        with pytest.raises(TypeError, match="no handler"):
            engine.submit(object())
        loaded = rec.wait(engine.submit(eng.LoadModel("tiny-llama")))
        assert isinstance(loaded, eng.Done) and loaded.result.name == "tiny-llama"
        done = rec.wait(engine.submit(eng.CompleteRun(BASE)))
        assert isinstance(done, eng.Done) and done.result.n_generated == 8
    finally:
        assert engine.shutdown(10)
