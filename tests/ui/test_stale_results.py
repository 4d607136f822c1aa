"""Results computed off the GUI thread for a run that has changed since: while a run streams, the same Run grows and
a result for its first N tokens can land when it holds more; replaying an earlier step (or a new run) shows another,
perhaps shorter, run. A result is drawn for the tokens it covers, or dropped when its run is no longer on screen
(showing that run submitted its own), never combined with the newer run's tokens.

Each test takes the panel's background jobs as they are submitted (no thread: the delivery order is the test's),
changes the run the panel shows, then delivers the older result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.core.api import capture, run_request
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.interventions import Intervention
from explorer.core.labels import readable_label
from explorer.core.runner import Session
from explorer.ui.panels.attention import AttentionPanel
from explorer.ui.panels.compare import ComparePanel
from explorer.ui.panels.embeddings import EmbeddingsPanel
from explorer.ui.panels.embeddings_tokens import COLOUR_BY
from explorer.ui.panels.interventions import InterventionsPanel

PROMPT = "The cat sat on the mat. The cat sat"


@pytest.fixture(scope="module")
def llama_run(tiny_llama):
    return capture(PROMPT, tiny_llama, max_new_tokens=3)


class Jobs:
    """A Background's submitted jobs by key, kept instead of run: `take(key)` the newest one under a key, then
    `deliver(job)` computes it and hands its result to its handler, as the GUI thread would at a later frame."""

    def __init__(self, monkeypatch, background):
        self.jobs: dict[str, tuple] = {}
        monkeypatch.setattr(background, "submit", self._submit)

    def _submit(self, key: str, fn, on_done, _on_error=None, priority: int = 0) -> int:
        self.jobs[key] = (fn, on_done)
        return len(self.jobs)

    def take(self, key: str) -> tuple:
        return self.jobs.pop(key)

    @staticmethod
    def deliver(job: tuple) -> None:
        fn, on_done = job
        on_done(fn())


def _grown(panel, run) -> None:
    """More steps arrived: the panel holds the longer run and draws it at its next frame (not yet)."""
    panel.run = panel.full_run = run


def _ticks(heatmap, axis: str) -> list[str] | None:
    return heatmap._labels[axis]


# --- Attention: an aggregate (mean / max / rollout) over N tokens -------------------------------------------------

def test_attention_aggregate_that_lands_after_more_steps_is_labelled_with_its_tokens(qtbot, llama_run, make_panel,
                                                                                     monkeypatch):
    panel, _sel = make_panel(AttentionPanel, llama_run, size=(1100, 600), draw=False)
    jobs = Jobs(monkeypatch, panel.background)
    panel.mode_box.setCurrentIndex(1)  # mean over heads: computed off the GUI thread
    short = llama_run.upto(1)
    panel.set_run(short)
    _grown(panel, llama_run)
    jobs.deliver(jobs.take("aggregate"))
    assert panel.error is None
    n = short.n_tokens
    assert panel.heatmap.data.shape == (n, n)
    assert _ticks(panel.heatmap, "left") == [readable_label(t.text) for t in short.tokens]  # not the longer run's


# --- Embeddings > Tokens at layer --------------------------------------------------------------------------------

def _embeddings(make_panel, run):
    panel, sel = make_panel(EmbeddingsPanel, run, size=(1000, 650), draw=False)
    panel.tabs.setCurrentIndex(0)  # Tokens at layer
    return panel, sel, panel.tokens_view


def test_trajectories_of_a_projection_that_lands_after_more_steps_follow_only_its_tokens(qtbot, llama_run,
                                                                                          make_panel, monkeypatch):
    """'Same token as selected' draws the paths of the selected token's repeats: only those the projection has."""
    panel, sel, view = _embeddings(make_panel, llama_run)
    jobs = Jobs(monkeypatch, panel.background)
    assert view.method.currentIndex() == 0 and view.follow.isChecked()  # the shared basis draws trajectories
    view.colour.setCurrentIndex(COLOUR_BY.index("same token as selected"))
    panel.set_run(llama_run)
    coords, explained, massive = jobs.take("emb-tokens")[0]()  # [layers + 1, N, 2], [2], [N]
    ids = [t.id for t in llama_run.tokens]
    first = next(i for i, t in enumerate(ids) if t in ids[i + 1:] and not massive[i])  # a token that repeats later
    again = ids.index(ids[first], first + 1)
    sel.set("position", first)
    # the projection of the tokens before the repeat, landing when the run holds the repeat too
    view._got_coords((coords[:, :again], explained, massive[:again]))
    assert panel.error is None
    assert view.coords.shape[1] == again
    tx, _ty = view.trajectory.getData()
    assert len(tx) == coords.shape[0] + 1  # one path (and its break): the repeat at `again` is not projected yet


def test_a_projection_of_the_whole_run_that_lands_after_an_earlier_step_was_shown_is_dropped(
        qtbot, llama_run, make_panel, monkeypatch):
    """Replay: the step moved back while the whole run was projected; that projection (more points than the shown
    run has tokens) is dropped, and the shown step's own projection is drawn."""
    panel, sel, view = _embeddings(make_panel, llama_run)
    jobs = Jobs(monkeypatch, panel.background)
    panel.set_run(llama_run)
    whole = jobs.take("emb-tokens")
    sel.set("step", 1)  # the run as it was after step 1
    assert view.run is not llama_run and view.run.n_tokens < llama_run.n_tokens
    jobs.deliver(whole)
    assert panel.error is None and view.coords is None  # not drawn with the shorter run's tokens
    jobs.deliver(jobs.take("emb-tokens"))
    n = view.run.n_tokens
    assert view.coords.shape[1] == n and len(view._brushes) == n
    x, _y = view.scatter.getData()
    assert len(x) == n


# --- Prompt A/B ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_b(tiny_llama):
    return capture("The big cat sat on the mat. The cat sat", tiny_llama, max_new_tokens=3)


def test_compare_result_that_lands_after_more_steps_describes_the_a_it_was_computed_for(qtbot, llama_run, run_b,
                                                                                      make_panel, monkeypatch):
    panel, sel = make_panel(ComparePanel, llama_run, draw=False)
    jobs = Jobs(monkeypatch, panel.background)
    short = llama_run.upto(1)
    panel.set_run(short)
    sel.set("position", short.n_tokens - 1)
    panel.set_run_b(run_b)
    _grown(panel, llama_run)
    jobs.deliver(jobs.take("compare"))
    assert panel.error is None
    assert f"A: {short.n_tokens} tokens" in panel.summary.text()  # the A that the attention maps show
    assert panel.attn_a.data.shape == (short.n_tokens, short.n_tokens)


def test_compare_result_for_a_forgotten_b_is_dropped(qtbot, llama_run, run_b, make_panel, monkeypatch):
    panel, _sel = make_panel(ComparePanel, llama_run, draw=False)
    jobs = Jobs(monkeypatch, panel.background)
    panel.set_run(llama_run)
    panel.set_run_b(run_b)
    job = jobs.take("compare")
    panel.set_run(None)  # a cleared screen: B went with A
    jobs.deliver(job)
    assert panel.run_b is None and panel.attn_a.data is None
    assert panel.summary.text().startswith("Type prompt B")


# --- Interventions: the difference against the baseline ---------------------------------------------------------

@pytest.fixture(scope="module")
def session(tiny_llama):
    return Session(tiny_llama, store_dtype=torch.float32)


def test_a_diff_of_the_whole_run_that_lands_after_an_earlier_step_was_shown_is_dropped(qtbot, session, make_panel,
                                                                                    monkeypatch):
    """Replay: the step moved back (to the prompt) while the whole run's difference was computed; that difference,
    at a position the shown run does not have yet, is dropped, and the shown step's own is drawn."""
    settings = GenerationSettings(max_new_tokens=3)
    base = run_request(session, RunRequest(PROMPT, settings=settings))
    ablated = run_request(session, RunRequest(PROMPT, settings=settings,
                                              interventions=(Intervention("zero_head", 1, 2),)), previous=None)
    assert len(ablated.steps) > 1
    panel, sel = make_panel(InterventionsPanel, ablated, draw=False)
    jobs = Jobs(monkeypatch, panel.background)
    sel.set("step", len(ablated.steps) - 1)  # following the run: its last step
    panel.set_run(base)  # the baseline
    sel.set("position", ablated.n_tokens - 1)
    panel.set_run(ablated)
    whole = jobs.take("diff")
    sel.set("step", 0)  # the run as it was after the prompt
    assert panel.run.n_tokens < ablated.n_tokens
    jobs.deliver(whole)
    assert panel.error is None and panel.lens.data is None  # not drawn (its positions are past the shown run)
    jobs.deliver(jobs.take("diff"))
    n = panel.run.n_tokens
    assert panel.attn.data.shape == (n, n)
    assert np.isfinite(panel.lens.data).all()
