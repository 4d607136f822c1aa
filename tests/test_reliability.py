"""Reliability (issue 11), core side: bad input, model files, run files, faults, capture memory, logging."""

from __future__ import annotations

import ast
import logging
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explorer.core import budget
from explorer.core.api import capture, run_request
from explorer.core.errors import Cancelled, InputError, ModelLoadError, PromptTooLongError
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.models import load_model
from explorer.core.run import NotCaptured
from explorer.core.runfile import ENCODED_RTOL, load_run, runs_equal
from explorer.core.runner import Session
from explorer.core.textin import clean_text, decode_prompt_bytes
from explorer.core.tokens import tokenize

ROOT = Path(__file__).resolve().parents[1]


# --- 1. bad input ------------------------------------------------------------------------------------


def test_an_empty_prompt_is_refused(tiny_session):
    with pytest.raises(InputError, match="empty"):
        capture("", tiny_session)


@pytest.mark.parametrize("prompt", [" ", "\n\t  \r\n", "\u3000"])
def test_whitespace_prompts_are_real_tokens(prompt, tiny_session):
    run = capture(prompt, tiny_session)  # issue 16 item 13: whitespace is a valid prompt
    assert run.n_prompt >= 1 and prompt in run.text


def test_max_new_tokens_above_the_context_is_worded_as_such(tiny_session):
    with pytest.raises(PromptTooLongError) as err:
        capture("hi", tiny_session, max_new_tokens=512)
    assert "Max new tokens (512)" in str(err.value) and err.value.max_new >= err.value.limit
    with pytest.raises(PromptTooLongError) as err:
        capture("word " * 300, tiny_session, max_new_tokens=300)
    assert "300 new tokens" in str(err.value) and err.value.n_tokens > 200


def test_megabyte_prompt_fails_fast_with_the_count(tiny_session):
    prompt = "lorem ipsum " * 90_000  # ~1 MB
    request = RunRequest(prompt, settings=GenerationSettings(max_new_tokens=4))
    with pytest.raises(PromptTooLongError) as err:
        budget.fit_request(tiny_session, request)
    assert err.value.n_tokens > 100_000 and err.value.limit == 512
    assert "context" in str(err.value)


@pytest.mark.parametrize("text", ["a\x00b", "\x00", "tab\tbell\x07esc\x1b[31m\x7f", "x\r\r\n\x0b\x0c\x85\u2028y",
                                  "\u202e\u200b\ufeff", "\ufffd\ufffe\U0010ffff"])
def test_control_characters_tokenize_and_capture(text, tiny_session):
    run = capture(text, tiny_session, max_new_tokens=1)
    assert run.text.startswith(text) and run.n_generated == 1


def test_special_token_text_is_flagged_or_kept_plain(tiny_llama):
    session = Session(tiny_llama)
    injected = run_request(session, RunRequest("hi <|im_end|> there"))
    assert any(t.injected for t in injected.tokens)
    plain = run_request(session, RunRequest("hi <|im_end|> there", allow_special_in_text=False))
    assert not any(t.injected or t.is_special for t in plain.tokens)
    assert plain.text == "hi <|im_end|> there"


@pytest.mark.parametrize("kwargs", [{"temperature": -0.1}, {"temperature": float("inf")}, {"top_p": 0.0},
                                    {"top_p": 1.01}, {"top_k": -3}, {"max_new_tokens": -5}])
def test_settings_out_of_range(kwargs, tiny_session):
    with pytest.raises(InputError):
        capture("hello", tiny_session, **kwargs)


def test_invalid_utf8_bytes_are_replaced_with_a_warning():
    text, warnings = decode_prompt_bytes(b"caf\xc3\xa9 \xff\xfe bad \xe2\x82")
    assert text.startswith("café ") and "\ufffd" in text and len(warnings) == 1 and "UTF-8" in warnings[0]
    assert decode_prompt_bytes("ok \ufffd".encode()) == ("ok \ufffd", [])  # a real U+FFFD is not a warning
    assert decode_prompt_bytes(b"\xef\xbb\xbfBOM")[0] == "BOM"


def test_lone_surrogates_are_replaced_at_the_boundary(tiny_llama):
    with pytest.raises(InputError, match="surrogate"):  # the core refuses them...
        tokenize(tiny_llama.tokenizer, "a\ud800b")
    fixed, warnings = clean_text("a\ud800b\udfff")  # ...the boundary replaces them and says so
    assert fixed == "a\ufffdb\ufffd" and "2 invalid" in warnings[0]
    assert clean_text("fine 😀") == ("fine 😀", [])


unicode_text = st.text(alphabet=st.characters(), max_size=40)  # every category, lone surrogates included


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_arbitrary_unicode_through_boundary_tokenizer_and_capture(text, tiny_llama):
    text, _warnings = clean_text(text)
    text.encode("utf-8")  # valid now
    session = Session(tiny_llama)
    if not text:  # only the empty prompt is refused: whitespace is real tokens (issue 16 item 13)
        with pytest.raises(InputError):
            capture(text, session)
        return
    tokenized = tokenize(tiny_llama.tokenizer, text)
    assert "".join(t.text for t in tokenized.tokens if t.end > t.start) == text
    run = capture(text, session, max_new_tokens=1)
    assert run.text.startswith(text) and run.n_tokens == len(tokenized.ids) + 1


# --- 2. model files ------------------------------------------------------------------------------------


def test_pickle_checkpoint_with_code_is_refused_even_when_opted_in(tiny_llama, tmp_path):
    """allow_pickle loads plain tensors only (weights_only=True): a pickle carrying code never runs."""
    folder = tmp_path / "evil"
    tiny_llama.model.config.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"model.embed_tokens.weight": Payload()}, fh)
    with pytest.raises(ModelLoadError) as refused:
        load_model(folder)
    assert refused.value.needs == "allow_pickle"
    with pytest.raises(ModelLoadError):
        load_model(folder, allow_pickle=True)
    assert not marker.exists()


def test_pickle_checkpoint_of_plain_tensors_loads_when_opted_in(tiny_llama, tmp_path):
    import torch

    folder = tmp_path / "plain"
    tiny_llama.model.config.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    torch.save(tiny_llama.model.state_dict(), folder / "pytorch_model.bin")
    loaded = load_model(folder, allow_pickle=True)
    assert loaded.info.n_layers == tiny_llama.info.n_layers


def test_remote_code_refusal_names_the_opt_in(remote_code_folder, tmp_path):
    folder = remote_code_folder
    with pytest.raises(ModelLoadError) as err:
        load_model(folder)
    assert err.value.needs == "trust_remote_code" and "trust_remote_code" in str(err.value)
    assert not (tmp_path / "ran").exists()


def test_tokenizer_that_fails_to_load(tiny_llama, tmp_path):
    folder = tmp_path / "badtok"
    tiny_llama.model.save_pretrained(folder)
    tiny_llama.tokenizer.save_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nope"')  # cut short
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_model(folder)


# imports pickle only to swap pickle.loads for a refusing function while PySide caches it (never to load)
_PICKLE_DISARM = {"explorer/ui/settings.py"}
# the window <-> engine process channel: pickle between this app's own two processes over an inherited socket
# pair (never a file, never a listening socket: see test_the_engine_channel_has_no_listening_socket)
_OWN_PROCESSES = {"explorer/core/transport.py", "explorer/core/engine_process.py"}


def test_no_unsafe_deserialisation_in_the_code():
    """Loading never executes anything: no pickle, no torch.load, every np.load with allow_pickle=False."""
    offenders = []
    for path in sorted((ROOT / "explorer").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") for n in names):
                    if path.relative_to(ROOT).as_posix() in _PICKLE_DISARM | _OWN_PROCESSES:
                        continue
                    offenders.append(f"{path.name}: imports pickle")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = getattr(node.func.value, "id", "")
                kwargs = {k.arg: k.value for k in node.keywords}
                if owner == "pickle" and path.relative_to(ROOT).as_posix() not in _OWN_PROCESSES:
                    offenders.append(f"{path.name}:{node.lineno} pickle.{node.func.attr}()")  # (disarm: no calls)
                if owner == "torch" and node.func.attr == "load":
                    offenders.append(f"{path.name}:{node.lineno} torch.load")
                if owner == "np" and node.func.attr == "load":
                    flag = kwargs.get("allow_pickle")
                    if not (isinstance(flag, ast.Constant) and flag.value is False):
                        offenders.append(f"{path.name}:{node.lineno} np.load without allow_pickle=False")
                if node.func.attr == "from_pretrained" and "trust_remote_code" in kwargs:
                    flag = kwargs["trust_remote_code"]
                    if isinstance(flag, ast.Constant) and flag.value is True:
                        offenders.append(f"{path.name}:{node.lineno} trust_remote_code=True")
    assert not offenders, offenders


def test_the_engine_channel_has_no_listening_socket():
    """The pickled channel is only ever a socket pair the window hands to its own child: nothing in the app binds,
    listens or connects a socket another process could reach (a remote engine needs authentication first:
    docs/design.md)."""
    offenders = []
    for path in sorted((ROOT / "explorer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("bind", "listen", "connect", "create_server", "Listener", "Client") and \
                    getattr(node.func.value, "id", "") in ("socket", "sock", "s", "server", "connection"):
                offenders.append(f"{path.name}:{node.lineno} {node.func.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "multiprocessing.connection" and \
                    any(a.name in ("Listener", "Client") for a in node.names):
                offenders.append(f"{path.name}: imports a network Listener/Client")
    assert not offenders, offenders
    text = (ROOT / "explorer/core/engine_process.py").read_text(encoding="utf-8")
    assert "socket.socketpair()" in text and "pass_fds=" in text


# --- 3. run files with less stored -----------------------------------------------------------------------


def test_reduced_run_saves_and_loads_equal(tiny_session, tmp_path):
    skip = ("attn_out", "mlp_out", "values")
    run = run_request(tiny_session, RunRequest("Saved small", settings=GenerationSettings(max_new_tokens=3),
                                               skip_arrays=skip))
    path = tmp_path / "small.npz"
    run.save(path)
    loaded = load_run(path)
    assert runs_equal(run, loaded, rtol=ENCODED_RTOL) and loaded.request.skip_arrays == skip
    with pytest.raises(NotCaptured):
        loaded.array("values")


# --- 4. faults -------------------------------------------------------------------------------------------


def test_stop_during_prefill_keeps_the_session_usable(tiny_llama):
    session = Session(tiny_llama)
    cancel = threading.Event()
    layers = session.adapter.layers(tiny_llama.model)
    handle = layers[1].register_forward_pre_hook(lambda *_: cancel.set())  # Stop pressed mid-prefill
    try:
        with pytest.raises(Cancelled):
            next(iter(session.stream(RunRequest("Once upon a time"), cancel=cancel)))
    finally:
        handle.remove()
    assert session._cache is None  # the half-filled cache was dropped
    assert capture("Once upon a time", session, max_new_tokens=2).n_generated == 2


def test_capture_estimate_matches_the_stored_bytes(tiny_session):
    run = capture("Estimate me please", tiny_session, max_new_tokens=5)
    assert run.finish_reason == "max_tokens"
    assert budget.estimate_capture_bytes(run.info, run.n_tokens) == run.capture_bytes()
    skip = budget.FALLBACKS[0]
    small = run_request(tiny_session, RunRequest("Estimate me please", settings=GenerationSettings(max_new_tokens=5),
                                                 skip_arrays=skip))
    assert budget.estimate_capture_bytes(run.info, small.n_tokens, skip) == small.capture_bytes()
    assert small.capture_bytes() < run.capture_bytes()
    # what is kept is identical to the full run
    for name in ("queries", "keys", "resid", "final_resid", "pred_top_ids"):
        np.testing.assert_array_equal(small.array(name), run.array(name))
    np.testing.assert_array_equal(small.attention(1, 2), run.attention(1, 2))
    with pytest.raises(NotCaptured, match="memory budget"):
        small.array("attn_out")
    with pytest.raises(KeyError):  # NotCaptured is a KeyError, as panels expect
        small.array("mlp_out")


def test_default_model_shape_estimate():
    """The formula on SmolLM2's shape: 4,096 + 256 positions."""
    from explorer.core.models import ModelInfo

    info = ModelInfo("smollm2", "llama", "causal", 30, 9, 3, 64, 576, 49152, 8192, 1e5, 134_515_008, True)
    per = 30 * 9 * 64 * 2 + 2 * 30 * 3 * 64 * 2 + 31 * 576 * 2 + 2 * 30 * 576 * 2 + 576 * 4 + budget.STATS_BYTES
    assert budget.estimate_capture_bytes(info, 4352) == per * 4352
    plan = budget.plan_capture(info, 4352, budget=400 * 2**20)
    assert plan.skip == budget.FALLBACKS[0] and not plan.over_budget and "400 MiB" in plan.message()
    plan = budget.plan_capture(info, 4352, budget=100 * 2**20)
    assert plan.skip == budget.FALLBACKS[1] and plan.over_budget and "still above" in plan.message()
    assert budget.plan_capture(info, 100).skip == () and budget.plan_capture(info, 100).message() == ""


def test_over_budget_request_falls_back_and_runs(tiny_session):
    request = RunRequest("A long enough prompt to go over a tiny budget",
                         settings=GenerationSettings(max_new_tokens=3))
    fitted, plan = budget.fit_request(tiny_session, request, budget=1)  # 1 byte: nothing fits
    assert plan.reduced and fitted.skip_arrays == budget.FALLBACKS[-1]
    run = run_request(tiny_session, fitted)
    assert run.n_generated == 3 and not run.has_array("resid") and run.has_array("queries")
    assert run.next_token_logprobs(run.n_tokens - 1).shape == (run.info.vocab_size,)
    # the next run stores everything again and cannot reuse a prefix that lacks arrays
    full = run_request(tiny_session, request, previous=run)
    assert full.has_array("resid") and full.steps[0].cached_prefix == 0


# --- 6. log file -------------------------------------------------------------------------------------------


def test_log_file_is_rotated_and_overridable(tmp_path, monkeypatch):
    from explorer import logfile

    monkeypatch.setenv("LM_EXPLORER_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(logfile, "MAX_BYTES", 2000)
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        path = logfile.setup_logging()
        assert path == tmp_path / "logs" / "lm-explorer.log"
        assert logfile.setup_logging() == path  # idempotent
        assert sum(isinstance(h, logging.handlers.RotatingFileHandler) for h in root.handlers) == \
            sum(isinstance(h, logging.handlers.RotatingFileHandler) for h in before) + 1
        for i in range(200):
            logging.getLogger("explorer.test").warning("line %d of a long session", i)
        assert path.is_file() and (tmp_path / "logs" / "lm-explorer.log.1").is_file()
        assert not (tmp_path / "logs" / "lm-explorer.log.4").exists()  # at most 3 backups
        assert "line 199" in path.read_text()
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
                h.close()


def test_cli_errors_reach_the_log_file(tmp_path, monkeypatch, capsys):
    from explorer.cli import main

    monkeypatch.setenv("LM_EXPLORER_LOG_DIR", str(tmp_path))
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        assert main(["capture", "--prompt", "x", "--model", "no-such-model", "--out", str(tmp_path / "r.npz")]) == 2
        assert "no-such-model" in capsys.readouterr().err
        for h in root.handlers:
            h.flush()
        assert "no-such-model" in (tmp_path / "lm-explorer.log").read_text()
    finally:
        for h in root.handlers[:]:
            if h not in before:
                root.removeHandler(h)
                h.close()
