"""Chat templates rendered as the untrusted code they are: sandboxed, with time, size and Stop limits.

A chat template is a Jinja program that comes with the model. transformers already renders it in
Jinja's immutable sandbox (no attribute escapes); this module renders it the same way and adds:
- a time limit and Stop: a trace hook on the template's own Python frames checks the clock and the
  cancel flag as the template runs (loops without any call in them included);
- size limits before allocating: `*`, `+`, `%` and `**` in the template, every call and every filter
  check their operands (a string repeated 10^9 times is refused before it exists), and every value
  a call or filter returns, and the output as it is produced, is capped.
The output is the same text `tokenizer.apply_chat_template(..., tokenize=False)` gives.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .errors import Cancelled, ChatTemplateError

TIME_LIMIT_S = 2.0
MAX_TEMPLATE_CHARS = 1 << 20  # the largest real chat templates are tens of kilobytes
MIN_OUTPUT_CHARS = 1_000_000  # plus 4x the messages' own length
_MAX_INT = 10**6  # no width, count or repeat in a chat template is bigger than this
_MAX_BITS = 4096
_BIG_NUMBER = re.compile(r"\d{7,}")
CancelFlag = Callable[[], bool] | threading.Event | None


class _Limits:
    """The limits of one rendering, checked by the sandbox hooks and the trace function."""

    def __init__(self, max_chars: int, time_limit: float, cancel: CancelFlag):
        self.max_chars = max_chars
        self.deadline = time.monotonic() + time_limit
        self.time_limit = time_limit
        self.cancelled = cancel.is_set if isinstance(cancel, threading.Event) else cancel
        self.ticks = 0

    def check_time(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise Cancelled("Run cancelled.")
        if time.monotonic() > self.deadline:
            raise ChatTemplateError(
                f"The model's chat template ran for more than {self.time_limit:g} s and was stopped: it loops too "
                "long to be a chat template. Use plain mode, or fix the template."
            )

    def check_size(self, value: Any) -> Any:
        if isinstance(value, (str, bytes, list, tuple, dict)) and len(value) > self.max_chars:
            self.too_big()
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _MAX_BITS:
            self.too_long_number()
        return value

    def too_long_number(self) -> None:
        raise ChatTemplateError("The model's chat template computes a number thousands of digits long: "
                                "it is refused. Use plain mode, or fix the template.")

    def too_big(self) -> None:
        raise ChatTemplateError(
            f"The model's chat template produces more than {self.max_chars:,} characters: it is refused. "
            "Use plain mode, or fix the template."
        )

    def check_args(self, args: tuple, kwargs: dict) -> None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
                raise ChatTemplateError(
                    f"The model's chat template asks for a width or count of {value:,}: it is refused. "
                    "Use plain mode, or fix the template."
                )
            self.check_size(value)


_local = threading.local()


def _limits() -> _Limits | None:
    return getattr(_local, "limits", None)


def _size_of(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


@functools.cache
def _environment_class():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class LimitedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "+", "%", "**", "//"})

        def call_binop(self, context, operator, left, right):
            limits = _limits()
            if limits is not None:
                limits.check_time()
                if operator == "*":
                    count = right if isinstance(right, int) else left if isinstance(left, int) else 1
                    if max(_size_of(left), _size_of(right)) * max(count, 0) > limits.max_chars:
                        limits.too_big()
                elif operator == "+" and _size_of(left) + _size_of(right) > limits.max_chars:
                    limits.too_big()
                elif operator == "%" and isinstance(left, str):
                    limits.check_args(right if isinstance(right, tuple) else (right,), {})
                    if _BIG_NUMBER.search(left):
                        limits.check_args((int(_BIG_NUMBER.search(left).group()),), {})
                elif (operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1
                      and right * max(left.bit_length(), 1) > _MAX_BITS):
                    limits.too_long_number()
            result = super().call_binop(context, operator, left, right)
            return limits.check_size(result) if limits is not None else result

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's signature
            limits = _limits()
            if limits is not None:
                limits.check_time()
                limits.check_args(args, kwargs)
                owner = getattr(__obj, "__self__", None)
                name = getattr(__obj, "__name__", "")
                if isinstance(owner, str) and name in ("format", "format_map") and _BIG_NUMBER.search(owner):
                    limits.check_args((int(_BIG_NUMBER.search(owner).group()),), {})
                if isinstance(owner, str) and name == "replace" and len(args) >= 2:
                    _check_replace(limits, owner, args[0], args[1])
            result = super().call(__context, __obj, *args, **kwargs)
            return limits.check_size(result) if limits is not None else result

    return LimitedEnvironment


def _check_replace(limits: _Limits, text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old) if old else len(text) + 1
        if len(text) + hits * len(new) > limits.max_chars:
            limits.too_big()


def _limited_filter(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        limits = _limits()
        if limits is None:
            return func(*args, **kwargs)
        limits.check_time()
        plain = tuple(a for a in args if not _is_jinja_context(a))
        limits.check_args(plain, kwargs)
        if func.__name__ in ("do_replace",) and len(plain) >= 3:
            _check_replace(limits, str(plain[0]), plain[1], plain[2])
        if func.__name__ == "do_format" and plain and isinstance(plain[0], str) and _BIG_NUMBER.search(plain[0]):
            limits.check_args((int(_BIG_NUMBER.search(plain[0]).group()),), {})
        return limits.check_size(func(*args, **kwargs))

    return wrapper


def _is_jinja_context(value: Any) -> bool:
    """The context, eval context or environment jinja passes to some filters first (not template data)."""
    from jinja2 import Environment
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    return isinstance(value, (Context, EvalContext, Environment))


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.utils import Namespace

    class GenerationTags(Extension):
        """`{% generation %}...{% endgeneration %}` (assistant-mask markers): rendered as their content."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class TemplateNamespace(Namespace):  # as transformers': no underscore names (no reach into internals)
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"underscore names cannot be stored on a namespace ({name!r})")

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):  # noqa: A002 - the name templates use
        return datetime.now().strftime(format)

    env = _environment_class()(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTags, loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: _limited_filter(f) for name, f in env.filters.items()}
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=TemplateDict(),
                       namespace=TemplateNamespace)
    return env.from_string(template)


def _tracer(limits: _Limits):
    """A trace function for the template's own frames: every 64 lines it checks the clock and Stop."""

    def local(frame, event, arg):
        if event == "line":
            limits.ticks += 1
            if limits.ticks & 63 == 0:
                limits.check_time()
        return local

    def global_(frame, event, arg):
        if frame.f_code.co_filename == "<template>":
            return local
        return None

    return global_


def render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
           cancel: CancelFlag = None, time_limit: float | None = None, max_chars: int | None = None,
           tools: list[dict] | None = None) -> str:
    """The chat template applied to `messages` (and `tools`, JSON-schema dicts, for a template that formats
    them), within the limits; ChatTemplateError or Cancelled otherwise."""
    import jinja2

    source = tokenizer.get_chat_template()
    if not isinstance(source, str) or len(source) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"The model's chat template is {len(str(source)):,} characters long (at most "
                                f"{MAX_TEMPLATE_CHARS:,} are accepted): it is refused. Use plain mode.")
    budget = max_chars if max_chars is not None else MIN_OUTPUT_CHARS + 4 * sum(
        len(m.get("content") or "") for m in messages) + (4 * len(json.dumps(tools)) if tools else 0)
    limits = _Limits(budget, TIME_LIMIT_S if time_limit is None else time_limit, cancel)
    try:
        compiled = _compile(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"The model's chat template is not valid Jinja ({exc}). Use plain mode.") from exc
    context = {**_plain(tokenizer.special_tokens_map), "messages": _plain(messages), "tools": _plain(tools),
               "documents": None, "add_generation_prompt": add_generation_prompt}
    previous_trace = sys.gettrace()
    _local.limits = limits
    sys.settrace(_tracer(limits))
    try:
        parts: list[str] = []
        length = 0
        for chunk in compiled.generate(**context):
            length += len(chunk)
            if length > budget:
                limits.too_big()
            parts.append(chunk)
        return "".join(parts)
    except (ChatTemplateError, Cancelled):
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"The model's chat template refused these messages: {exc}") from exc
    except (MemoryError, RecursionError, OverflowError) as exc:
        raise ChatTemplateError(f"The model's chat template failed ({type(exc).__name__}): it is refused. "
                                "Use plain mode, or fix the template.") from exc
    finally:
        sys.settrace(previous_trace)
        _local.limits = None


def _plain(value: Any) -> Any:
    """Only JSON-like data reaches the template (as transformers does)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def formats_tools(tokenizer: Any) -> bool:
    """Whether the model's chat template reads `tools` (else core/tools.py shows them in the system message)."""
    source = tokenizer.get_chat_template() if getattr(tokenizer, "chat_template", None) else ""
    return isinstance(source, str) and re.search(r"\btools\b", source) is not None
