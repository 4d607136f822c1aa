"""Tool use in chat mode: tool definitions, the model's tool calls, a built-in calculator, tool results.

    tools (JSON-schema dicts, as transformers' chat templates take) -> checked, kept as JSON text on the request
    -> the chat template formats them (or, for a template that ignores `tools`, a system message that shows
       the <tool_call> format) -> the model writes <tool_call>{"name": ..., "arguments": ...}</tool_call>
    -> `parse_tool_calls` reads it, `call_tool` answers it with a built-in tool (the calculator)
    -> `follow_up` appends the call (assistant) and the result (tool message) and the conversation continues.

Everything here is untrusted input (typed by a user or written by the model): sizes are checked before
parsing, the calculator walks an `ast` of numbers and arithmetic only (no eval, no names), and every
failure is a ToolError with a sentence; the run and the prompt are left as they were.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from dataclasses import dataclass, replace
from typing import Any

from .errors import ToolError

MAX_TOOLS_CHARS = 64_000  # JSON text of all definitions
MAX_TOOLS = 32
MAX_RESULT_CHARS = 20_000  # a typed or computed tool result
MAX_EXPRESSION_CHARS = 200
MAX_CALL_CHARS = 20_000  # text inside one <tool_call>...</tool_call>
_MAX_BITS = 4096  # integers the calculator may hold (about 1,200 digits)
_MAX_DEPTH = 32  # nesting of the arithmetic
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
CALL_TAG = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / // % ** and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "The expression, e.g. 12 * (3 + 4)"}},
            "required": ["expression"],
        },
    },
}

# For a chat template that ignores `tools` (SmolLM2's): the system message SmolLM2 was tuned with for calls
TOOLS_SYSTEM = (
    "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the functions can be used, point it out and refuse to answer.\n"
    "If the given question lacks the parameters required by the function, also point it out.\n"
    "You have access to the following tools:\n<tools>{tools}</tools>\n"
    "The output MUST strictly adhere to the following format, and NO other text MUST be included.\n"
    "The example format is as follows. Please make sure the parameter type is correct. If no function call is "
    "needed, please make the tool calls an empty list '[]'.\n"
    "<tool_call>[\n{{\"name\": \"func_name1\", \"arguments\": {{\"argument1\": \"value1\", "
    "\"argument2\": \"value2\"}}}},\n(more tool calls as required)\n]</tool_call>"
)


# --- definitions ------------------------------------------------------------------------------------
def tools_json(tools: Any) -> str | None:
    """Tool definitions (a list of dicts, or its JSON text) checked and returned as compact JSON text.

    Each is `{"type": "function", "function": {"name", "description", "parameters"}}` or the bare
    `{"name", "description", "parameters"}`; ToolError says what is wrong. None or [] -> None."""
    if tools is None:
        return None
    if isinstance(tools, str):
        if len(tools) > MAX_TOOLS_CHARS:
            raise ToolError(f"The tool definitions are {len(tools):,} characters long; at most "
                            f"{MAX_TOOLS_CHARS:,} are accepted.")
        if not tools.strip():
            return None
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise ToolError(f"The tool definitions are not valid JSON (line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}).") from None
        except RecursionError:
            raise ToolError("The tool definitions are nested too deeply.") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, (list, tuple)):
        raise ToolError(f"The tool definitions must be a list of JSON objects, not {type(tools).__name__}.")
    if len(tools) > MAX_TOOLS:
        raise ToolError(f"{len(tools)} tools are defined; at most {MAX_TOOLS} are accepted.")
    names = [tool_name(t, i) for i, t in enumerate(tools)]
    if len(set(names)) != len(names):
        raise ToolError("Two tools have the same name: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    try:
        text = json.dumps(list(tools), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ToolError(f"The tool definitions hold something that is not JSON data ({exc}).") from None
    if len(text) > MAX_TOOLS_CHARS:
        raise ToolError(f"The tool definitions are {len(text):,} characters of JSON; at most "
                        f"{MAX_TOOLS_CHARS:,} are accepted.")
    return text if tools else None


def tool_name(tool: Any, i: int = 0) -> str:
    """A definition's function name (ToolError when it has none or it is not a plain name)."""
    if not isinstance(tool, dict):
        raise ToolError(f"Tool {i + 1} is not a JSON object.")
    spec = tool.get("function", tool)
    if not isinstance(spec, dict):
        raise ToolError(f"Tool {i + 1}: 'function' must be an object with a name.")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ToolError(f"Tool {i + 1} needs a name of letters, digits and _ (got {str(name)[:40]!r}).")
    if "parameters" in spec and not isinstance(spec["parameters"], dict):
        raise ToolError(f"Tool '{name}': 'parameters' must be a JSON-schema object.")
    return name


def tool_list(text: str | None) -> list[dict] | None:
    """The request's tool definitions as the list a chat template takes."""
    return json.loads(text) if text else None


def system_with_tools(system: str | None, tools: str) -> str:
    """The system message that shows a template without tool support the definitions and the call format."""
    shown = TOOLS_SYSTEM.format(tools=tools)
    return f"{system}\n\n{shown}" if system else shown


# --- calls ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


def parse_tool_calls(text: str) -> list[ToolCall]:
    """The calls in a model's reply: `<tool_call>` JSON (an object or a list of them) with a name and
    arguments. An unclosed tag, bad JSON or a call without a name is a ToolError naming the problem."""
    calls: list[ToolCall] = []
    for body in CALL_TAG.findall(text):
        if len(body) > MAX_CALL_CHARS:
            raise ToolError(f"A tool call is {len(body):,} characters long; at most {MAX_CALL_CHARS:,} are read.")
        try:
            data = json.loads(body.strip() or "null")
        except json.JSONDecodeError as exc:
            raise ToolError(f"The model's tool call is not valid JSON ({exc.msg} at character {exc.pos}): "
                            f"{body.strip()[:80]!r}. Type the result yourself, or run again.") from None
        except RecursionError:
            raise ToolError("The model's tool call is nested too deeply to read.") from None
        for item in data if isinstance(data, list) else [data]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ToolError(f"The model's tool call has no tool name: {body.strip()[:80]!r}.")
            args = item.get("arguments", item.get("parameters", {}))
            if isinstance(args, str):  # some models write the arguments as a JSON string
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    args = {"expression": args}
            if not isinstance(args, dict):
                raise ToolError(f"The arguments of the call to '{item['name'][:40]}' are not a JSON object.")
            calls.append(ToolCall(item["name"], args))
    if not calls and "<tool_call>" in text:
        raise ToolError("The model opened a <tool_call> but did not close it: the call is incomplete "
                        "(generate more tokens, or type the result yourself).")
    return calls


def call_tool(call: ToolCall) -> str:
    """Answer a call with a built-in tool; ToolError for a tool that is not built in or bad arguments."""
    tool = BUILT_IN.get(call.name)
    if tool is None:
        raise ToolError(f"The model called '{call.name[:40]}', which is not a built-in tool "
                        f"(built in: {', '.join(BUILT_IN)}): type its result yourself.")
    return tool(call.arguments)


def _calculator_tool(arguments: dict) -> str:
    expression = arguments.get("expression")
    if expression is None and len(arguments) == 1:  # a model that names the argument differently
        expression = next(iter(arguments.values()))
    if isinstance(expression, bool) or not isinstance(expression, (str, int, float)):
        raise ToolError("The calculator needs an 'expression' argument: a string such as \"12 * (3 + 4)\".")
    return calculate(str(expression))


BUILT_IN = {"calculator": _calculator_tool}


# --- the calculator ---------------------------------------------------------------------------------
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def calculate(expression: str) -> str:
    """Arithmetic on numbers: + - * / // % ** and parentheses, by walking its syntax tree (never eval).

    Refused with a ToolError: input over 200 characters, names or calls, numbers over 4,096 bits,
    exponents that would make one, division by zero, float overflow."""
    if not isinstance(expression, str):
        raise ToolError("The calculator takes a text expression.")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"The expression is {len(expression):,} characters long; the calculator takes at most "
                        f"{MAX_EXPRESSION_CHARS}.")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    if not text:
        raise ToolError("The expression is empty.")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        raise ToolError(f"{expression.strip()[:60]!r} is not an arithmetic expression.") from None
    value = _evaluate(tree.body, 0)
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def _evaluate(node: ast.AST, depth: int) -> int | float:
    if depth > _MAX_DEPTH:
        raise ToolError("The expression is nested too deeply.")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand, depth + 1)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            return _checked(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("Division by zero.") from None
        except OverflowError:
            raise ToolError("The result is too large for a floating-point number.") from None
    if isinstance(node, (ast.Name, ast.Call, ast.Attribute)):
        what = (node.id if isinstance(node, ast.Name) else "a function call" if isinstance(node, ast.Call)
                else "an attribute")
        raise ToolError(f"The calculator takes numbers and + - * / // % ** only, not names ({what[:30]}).")
    raise ToolError(f"The calculator takes numbers and + - * / // % ** only ({type(node).__name__} is refused).")


def _check_power(base: int | float, exponent: int | float) -> None:
    """Refuse a power whose result would be too large before computing it."""
    if abs(exponent) > 10_000:
        raise ToolError(f"The exponent {exponent:g} is too large (at most 10,000).")
    if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
            and exponent * math.log2(abs(base)) > _MAX_BITS):
        raise ToolError(f"{base} ** {exponent} has more than {_MAX_BITS:,} bits: too large to compute.")
    if isinstance(base, complex) or (base < 0 and isinstance(exponent, float) and not exponent.is_integer()):
        raise ToolError("A negative number to a fractional power is not a real number.")


def _checked(value: Any) -> int | float:
    if isinstance(value, complex):
        raise ToolError("The result is not a real number.")
    if isinstance(value, int) and value.bit_length() > _MAX_BITS:
        raise ToolError(f"The result has more than {_MAX_BITS:,} bits: too large.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("The result is too large for a floating-point number.")
    return value


# --- continuing the conversation ----------------------------------------------------------------------
def reply_text(run) -> str:
    """The model's reply in a finished run: the generated text without the end-of-turn special token(s)."""
    tokens = run.tokens[run.n_prompt:]
    while tokens and tokens[-1].is_special:
        tokens = tokens[:-1]
    return "".join(t.text for t in tokens if t.end > t.start)


def check_result(result: str) -> str:
    if not isinstance(result, str):
        raise ToolError("A tool result is text.")
    if not result.strip():
        raise ToolError("The tool result is empty: type what the tool returned.")
    if len(result) > MAX_RESULT_CHARS:
        raise ToolError(f"The tool result is {len(result):,} characters long; at most {MAX_RESULT_CHARS:,} "
                        "are accepted.")
    return result


def follow_up(run, result: str | None = None):
    """The next request of a chat run that called a tool: the reply (assistant) and the tool's result (a
    tool message) appended. `result` None: the built-in tool answers each call (ToolError if it cannot)."""
    request = run.request
    if not request.chat:
        raise ToolError("Tool results need chat mode (the chat template formats the tool message).")
    reply = reply_text(run)
    if result is None:
        calls = parse_tool_calls(reply)
        if not calls:
            raise ToolError("The model's reply holds no <tool_call>: there is nothing to answer.")
        result = "\n".join(call_tool(c) for c in calls)
    return replace(request, turns=(*request.turns, ("assistant", reply), ("tool", check_result(result))))
