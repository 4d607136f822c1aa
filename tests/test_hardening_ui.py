"""Issue 16 (items 1, 7, 11, 12) without a window: settings are plain validated data, files the user names are
only regular files of a sane size, the vocabulary scoring honours Stop, and errors a user can cause are
messages (log folder, --out, seeds, long names, crafted files, a system prompt that leaves no room)."""

from __future__ import annotations

import json
import logging
import math
import os
import threading

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from explorer import cli
from explorer.core import runner as runner_mod
from explorer.core.errors import Cancelled, InputError
from explorer.core.events import GenerationSettings, RunRequest
from explorer.core.runner import Session
from explorer.core.textin import read_user_file
from explorer.ui import settings as settings_mod
from explorer.ui.settings import SCHEMA, Settings, open_settings


@pytest.fixture(autouse=True)
def restore_logging():
    """cli.main / app.main / setup_logging add handlers to the root logger: remove them after each test."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in saved[0]:
            root.removeHandler(h)
            h.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


# --- 1. settings: plain data only, every value validated -----------------------------------------------
def _write_json(path, data) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


HOSTILE = [  # (key, stored value): each must be ignored with a note, never fatal
    ("capture_budget_gib", 1e308 * 10), ("capture_budget_gib", float("nan")),  # written as Infinity / NaN
    ("capture_budget_gib", -1.0), ("capture_budget_gib", 0), ("capture_budget_gib", 1e12),
    ("capture_budget_gib", "4"), ("capture_budget_gib", True), ("capture_budget_gib", [1]),
    ("model", 12), ("model", ["a"]), ("model", "x" * 10_000), ("model", "a\0b"), ("model", {"a": 1}),
    ("recent_models", "not a list"), ("recent_models", [1, 2]), ("recent_models", [["nested"]]),
    ("recent_prompts", [None]), ("recent_prompts", ["x" * 30_000]), ("recent_prompts", 5),
    ("theme", 3), ("theme", "t" * 100), ("theme", None),
    ("prompt_state", "max_new=5"), ("prompt_state", [1, 2]), ("prompt_state", None),
    ("layout", "@ByteArray(AAAA)"), ("layout", {"window": [0, 0, 0, 10]}), ("layout", {"window": [0, 0, 2**40, 9]}),
    ("layout", {"window": "800x600"}), ("layout", {"window": [1.5, 2, 3, 4]}), ("layout", {"window": [1, 2, 3]}),
    ("layout", {"maximized": "yes"}), ("layout", {"state": "AAAA"}), ("layout", {"docks": "tokens"}),
    ("layout", {"docks": [{"name": "tokens"}]}),
    ("layout", {"docks": [dict(name="tokens", area="middle", order=0, group=0, visible=True, floating=False,
                               current=True, size=[10, 10])]}),
    ("layout", {"docks": [dict(name="tokens", area="left", order=0, group=0, visible=True, floating=False,
                               current=True, size=[10, 10], extra=1)]}),
    ("layout", {"docks": [dict(name="t", area="left", order=0, group=0, visible=True, floating=False,
                               current=True, size=[10, 10])] * 2}),
    ("layout", {"docks": [dict(name="t", area="left", order=0, group=0, visible=True, floating=False,
                               current=True, size=[10, 10])] * 65}),
]


@pytest.mark.parametrize(("key", "value"), HOSTILE)
def test_hostile_setting_is_ignored_with_a_note(tmp_path, caplog, key, value):
    path = tmp_path / "s.json"
    _write_json(path, {key: value, "model": "tiny-llama"} if key != "model" else {key: value, "theme": "dark"})
    with caplog.at_level(logging.WARNING, logger="explorer.ui.settings"):
        s = Settings(path)
    assert not s.contains(key)
    assert any(key in r.getMessage() for r in caplog.records)
    assert s.value("model") == "tiny-llama" or s.value("theme") == "dark"  # the good key stays


def test_every_key_the_app_reads_has_a_validator():
    import re
    from pathlib import Path

    ui = Path(settings_mod.__file__).parent
    read = set()
    for file in ui.rglob("*.py"):
        text = file.read_text(encoding="utf-8")
        read |= set(re.findall(r"settings\.value\(\s*\"([^\"]+)\"", text))
        read |= set(re.findall(r"(?:recent|push_recent)\(\s*(?:self\.settings|s|settings)\s*,\s*\"([^\"]+)\"", text))
    assert read and read <= set(SCHEMA), sorted(read - set(SCHEMA))


PROMPT_STATE_HOSTILE = [("max_new", 2**31), ("max_new", -1), ("max_new", 5000), ("max_new", 2.5), ("max_new", "16"),
                        ("temperature", 1e300), ("temperature", -0.1), ("temperature", "hot"),
                        ("top_k", 10**20), ("top_p", 0.0), ("top_p", 2.0), ("seed", -1), ("seed", 2**31),
                        ("seed", 10**400), ("chat", "yes"), ("prompt", 42), ("system", ["x"])]


@pytest.mark.parametrize(("field", "value"), PROMPT_STATE_HOSTILE)
def test_prompt_state_fields_checked_one_by_one(tmp_path, caplog, field, value):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"prompt_state": {"prompt": "kept", field: value}}), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="explorer.ui.settings"):
        state = Settings(path).value("prompt_state")
    assert field not in state or field == "prompt" and state["prompt"] == "kept"
    assert state.get("prompt") == "kept" or field == "prompt"
    assert any(field in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"model": 1' + "0" * 5000 + "}",
                                  "\xff\xfe garbage", "[1, 2]"])
def test_unreadable_settings_file_is_set_aside_not_fatal(tmp_path, caplog, text):
    path = tmp_path / "s.json"
    path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with caplog.at_level(logging.WARNING, logger="explorer.ui.settings"):
        s = Settings(path)
    assert s.allKeys() == []
    assert any("not a plain JSON settings file" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "s.json.unreadable").is_file()
    s.setValue("theme", "dark")  # the store works from defaults and writes a clean file
    assert json.loads(path.read_text()) == {"theme": "dark"}


def test_qsettings_pickle_in_an_ini_never_runs(pickled_qsettings, caplog):
    """The attack: a QSettings .ini value `@Variant(...PyObjectWrapper...)` is unpickled by PySide on read."""
    ini, marker = pickled_qsettings("theme")
    with caplog.at_level(logging.WARNING, logger="explorer.ui.settings"):
        s = open_settings(ini)
        s.value("model")
        s.value("theme")
    assert not marker.exists()
    assert any("not a plain JSON settings file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", [b"# my notes, not settings\n", b"[General]\nmodel=x\n", b"\x00\x01binary"])
def test_a_named_file_that_is_not_a_settings_file_is_never_changed(tmp_path, caplog, content):
    """`--settings README.md` by mistake: the file is neither moved nor overwritten; nothing is saved."""
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="explorer.ui.settings"):
        s = open_settings(path)
        s.setValue("theme", "dark")
        s.sync()
    assert path.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert s.value("theme") == "dark" and any("not saved" in r.getMessage() for r in caplog.records)


def test_a_named_fifo_is_never_replaced(tmp_path):
    fifo = tmp_path / "s.json"
    os.mkfifo(fifo)
    s = open_settings(fifo)
    s.setValue("theme", "dark")
    assert fifo.is_fifo()


def test_settings_round_trip_and_refuse_non_plain_values(tmp_path):
    s = Settings(tmp_path / "s.json")
    s.setValue("recent_prompts", ["a", "b\0c"])
    s.setValue("capture_budget_gib", 2.5)
    s.setValue("size", (800, 600))
    s.setValue("prompt_state", {"prompt": "p", "max_new": 7, "temperature": 0.5})
    for bad in (float("nan"), float("inf"), object(), b"bytes"):
        with pytest.raises(ValueError):
            s.setValue("capture_budget_gib", bad)
    with pytest.raises(ValueError):
        s.setValue("some_other_key", object())
    again = Settings(tmp_path / "s.json")
    assert again.value("recent_prompts") == ["a", "b\0c"] and again.value("capture_budget_gib") == 2.5
    assert again.value("size") == [800, 600] and again.value("prompt_state")["max_new"] == 7


def test_settings_that_cannot_be_written_are_noted_once(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = Settings(blocker / "sub" / "s.json")  # the folder would be inside a file
    with caplog.at_level(logging.WARNING, logger="explorer.ui.settings"):
        for i in range(5):
            s.setValue("theme", f"t{i}")
    assert s.value("theme") == "t4"
    assert sum("not saved" in r.getMessage() for r in caplog.records) == 1


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(SCHEMA)), value=json_values)
def test_any_json_value_gives_a_valid_setting_or_none(tmp_path, key, value):
    path = tmp_path / "h.json"
    try:
        path.write_text(json.dumps({key: value}), encoding="utf-8")
    except ValueError:
        return
    s = Settings(path)
    if not s.contains(key):
        return
    got = s.value(key)
    assert settings_mod.validate(key, got) == got  # whatever survived passes its validator again
    if key == "capture_budget_gib":
        assert math.isfinite(got) and 0 < got <= 65536


# --- 7. files the user names ----------------------------------------------------------------------------
def test_read_user_file_refuses_fifo_device_folder_and_big_files(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="named pipe"):
        read_user_file(fifo, 100, "prompt file")  # would block forever if opened for reading
    with pytest.raises(InputError, match="device"):
        read_user_file("/dev/zero", 100, "prompt file")  # would never end
    with pytest.raises(InputError, match="folder"):
        read_user_file(tmp_path, 100, "prompt file")
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 101)
    with pytest.raises(InputError, match="too large"):
        read_user_file(big, 100, "prompt file")
    with pytest.raises(InputError, match="Could not read"):
        read_user_file(tmp_path / ("n" * 300), 100, "prompt file")  # ENAMETOOLONG
    ok = tmp_path / "ok.txt"
    ok.write_bytes(b"x" * 100)
    assert read_user_file(ok, 100) == b"x" * 100


def test_settings_file_that_is_a_fifo_is_not_read(tmp_path, caplog):
    fifo = tmp_path / "s.json"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING, logger="explorer.ui.settings"):
        s = Settings(fifo)
    assert s.allKeys() == [] and any("named pipe" in r.getMessage() for r in caplog.records)


# --- 11. the vocabulary scoring honours Stop --------------------------------------------------------------
def test_stop_during_vocabulary_scoring_stops_between_blocks(tiny_llama, monkeypatch):
    """Cancel is set when the scoring's first lm_head block runs; without checks every block would run."""
    monkeypatch.setattr(runner_mod, "_STATS_CHUNK", 8)  # many small blocks on a tiny model
    session = Session(tiny_llama)
    head = session.adapter.lm_head(tiny_llama.model)
    cancel = threading.Event()
    calls = []

    def count(module, args, output):
        calls.append(args[0].shape[-2])
        if len(calls) == 2:  # call 1 is the model's own forward (last position); 2 is the scoring's first block
            cancel.set()

    handle = head.register_forward_hook(count)
    prompt = " ".join(["word"] * 120)
    try:
        with pytest.raises(Cancelled):
            list(session.stream(RunRequest(prompt, settings=GenerationSettings(max_new_tokens=2)), cancel=cancel))
    finally:
        handle.remove()
    n_prompt = len(tiny_llama.tokenizer(prompt)["input_ids"])
    blocks = math.ceil(n_prompt / 8)
    assert blocks > 10
    assert len(calls) == 2, f"{len(calls) - 1} of {blocks} scoring blocks ran after Stop"
    # and the session still works afterwards (its cache was dropped, not left half-updated)
    events = list(session.stream(RunRequest("Hello", settings=GenerationSettings(max_new_tokens=1))))
    assert events[-1].finish_reason == "max_tokens"


# --- 12. clear errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, -(2**70)])
def test_negative_seed_is_a_clear_error(tiny_llama, seed):
    session = Session(tiny_llama)
    with pytest.raises(InputError, match="seed"):
        list(session.stream(RunRequest("Hello", settings=GenerationSettings(max_new_tokens=1, seed=seed))))


def test_cli_negative_seed_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["capture", "--prompt", "x", "--out", "x.npz", "--seed", "-3"])
    assert exit_.value.code == 2 and "seed" in capsys.readouterr().err


def _no_model(*args, **kwargs):
    raise AssertionError("the model must not be loaded when --out cannot be written")


@pytest.mark.parametrize("out", ["{file}/run.npz", "{tmp}/missing/run.npz", "{tmp}", "{tmp}/" + "r" * 300 + ".npz"])
def test_capture_out_checked_before_running(tmp_path, monkeypatch, capsys, out):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr("explorer.core.models.load_model", _no_model)
    code = cli.main(["capture", "--model", "tiny-llama", "--prompt", "Hi", "--out",
                     out.format(file=blocker, tmp=tmp_path)])
    assert code == 2 and "--out" in capsys.readouterr().err


def test_inspect_crafted_file_errors_are_messages(tmp_path, monkeypatch, capsys):
    for exc in (RecursionError("maximum recursion depth exceeded"), OverflowError("int too large"), MemoryError()):
        def boom(path, exc=exc):
            raise exc
        monkeypatch.setattr("explorer.core.runfile.load_run", boom)
        assert cli.main(["inspect", str(tmp_path / "run.npz")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err


def test_save_run_with_a_name_near_the_limit(tiny_llama, tmp_path):
    """The atomic save's temporary name was the target's name + 13 bytes: ENAMETOOLONG at 243+ bytes."""
    from explorer.core.runfile import load_run

    session = Session(tiny_llama)
    request = RunRequest("Hi", settings=GenerationSettings(max_new_tokens=1))
    run = session.new_run(request)
    for event in session.stream(request):
        run.apply(event)
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("r" * (limit - 4) + ".npz")
    run.save(path)
    assert load_run(path).n_tokens == run.n_tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_log_folder_not_writable_falls_back_once(tmp_path, monkeypatch, capfd, restore_logging):
    from explorer import logfile

    (tmp_path / "logs" / logfile.LOG_NAME).mkdir(parents=True)  # the folder exists, the file cannot be opened
    monkeypatch.setenv("LM_EXPLORER_LOG_DIR", str(tmp_path / "logs"))
    for h in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(h)
    assert logfile.setup_logging() is None
    for i in range(5):
        logging.getLogger("explorer.test").warning("line %d", i)
    err = capfd.readouterr().err
    assert err.count("no log file") == 1 and "Traceback" not in err and "Logging error" not in err
    assert "line 4" in err


def test_log_file_failing_later_falls_back_once(tmp_path, monkeypatch, capfd, restore_logging):
    from explorer import logfile

    monkeypatch.setenv("LM_EXPLORER_LOG_DIR", str(tmp_path / "logs"))
    for h in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(h)
    assert logfile.setup_logging() is not None
    log = logging.getLogger("explorer.test")
    log.warning("first")
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler))

    class Full:  # a file on a full disk
        def write(self, text):
            raise OSError(28, "No space left on device")

        def seek(self, *args):
            return 0

        def tell(self):
            return 0

        def flush(self):
            pass

        def close(self):
            pass

    handler.stream = Full()
    for i in range(5):
        log.warning("later %d", i)
    err = capfd.readouterr().err
    assert err.count("cannot be written") == 1 and "Logging error" not in err and "Traceback" not in err
    assert handler not in logging.getLogger().handlers and "later 4" in err


def test_no_room_blames_the_system_prompt_not_max_new(tiny_llama):
    from explorer.core.engine import no_room_message as _no_room_message

    session = Session(tiny_llama)
    ctx = tiny_llama.info.context_length
    long_system = " ".join(["rule"] * ctx)
    request = RunRequest("Hi", chat=True, system=long_system, settings=GenerationSettings(max_new_tokens=4))
    message = _no_room_message(session, request, ctx - 4)
    assert "system prompt" in message and "max new tokens" not in message.lower()
    plain = _no_room_message(session, RunRequest("Hi", settings=GenerationSettings(max_new_tokens=ctx)), 0)
    assert "max new tokens" in plain.lower()


@pytest.mark.parametrize("picture", ["{file}/shot.png", "{tmp}/" + "p" * 300 + ".png"])
def test_screenshot_path_checked_before_the_window_starts(tmp_path, monkeypatch, capsys, picture):
    from explorer.ui import app

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr("explorer.ui.main_window.MainWindow", _no_model)  # must not be built
    code = app.main(["--model", "tiny-llama", "--screenshot", picture.format(file=blocker, tmp=tmp_path)])
    assert code == 2 and "--screenshot" in capsys.readouterr().err


def test_a_flood_of_unknown_keys_is_capped(tmp_path, caplog):
    path = tmp_path / "s.json"
    _write_json(path, {**{f"k{i}": i for i in range(5000)}, "theme": "dark"})
    with caplog.at_level(logging.WARNING, logger="explorer.ui.settings"):
        s = Settings(path)
    assert s.value("theme") == "dark" and len(s.allKeys()) == settings_mod.MAX_UNKNOWN_KEYS + 1
    assert any("keys the app does not use" in r.getMessage() for r in caplog.records)
