"""Streamed tool-call deltas -> FunctionCallInfo, as early as each call is complete.

When a call is handed out (see `ToolCallAssembler`):
  * as soon as its accumulated arguments form a complete JSON object, i.e. on the delta that
    closes the object. Servers that stream calls one after another (OpenAI, vLLM, llama.cpp)
    thereby hand out call N before call N+1's first delta is even read; interleaved calls are
    handed out in the order they complete, not by index;
  * otherwise at `finish()`, which the stream calls on the choice's finish_reason, in index
    order: calls with empty arguments, and calls whose arguments never became valid JSON.
Each call is handed out exactly once. A stream that ends without a finish_reason is an error
(see llm.py): the calls it had not handed out by then never are.

A call that cannot run (unknown function, bad JSON, missing or invalid arguments) is never an
exception: it becomes an `InvalidFunctionCall`, whose `execute()` returns text that tells the
model what was wrong, so it lands in the conversation as that call's tool result.

The arguments are model output, so they are treated as hostile: longer than
`MAX_ARGUMENT_CHARS` or nested deeper than `MAX_ARGUMENT_DEPTH` is an invalid call (Python's
JSON parser would raise RecursionError on deep nesting), `true`/`false` is not a number, and
the error text quotes at most `QUOTED_ARGUMENT_CHARS` of what the model sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from livekit.agents.llm import (
    FunctionCallInfo,
    FunctionContext,
    FunctionInfo,
    # private by name, but what an LLM plugin calls to turn a streamed tool call into a
    # validated FunctionCallInfo (LiveKit's own OpenAI plugin does the same)
    _create_ai_function_info,
)

from .log import logger

MAX_ARGUMENT_CHARS = 32_000
MAX_ARGUMENT_DEPTH = 32
QUOTED_ARGUMENT_CHARS = 200


@dataclass(frozen=True)
class InvalidFunctionCall(FunctionCallInfo):
    """A tool call the model got wrong. `execute()` yields the error text for the model.

    `function_info.name` is the name the model asked for; `arguments` is empty and
    `raw_arguments` is what the model sent.
    """

    error: str = ""


def _quote(raw: str) -> str:
    if len(raw) <= QUOTED_ARGUMENT_CHARS:
        return repr(raw)
    return f"{raw[:QUOTED_ARGUMENT_CHARS]!r}... ({len(raw)} characters)"


def _depth(text: str) -> int:
    """How deeply brackets nest in a JSON text (brackets inside strings are skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _argument_problem(info: FunctionInfo, raw: str) -> str | None:
    """What makes ``raw`` unacceptable before the framework parses it, or None."""
    if len(raw) > MAX_ARGUMENT_CHARS:
        return f"the arguments are {len(raw)} characters long (at most {MAX_ARGUMENT_CHARS})"
    if _depth(raw) > MAX_ARGUMENT_DEPTH:
        return f"the arguments nest deeper than {MAX_ARGUMENT_DEPTH} levels"
    try:
        values = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return None  # the framework reports bad JSON itself
    if isinstance(values, dict):
        for name, arg in info.arguments.items():
            numeric = arg.type in (int, float)
            if numeric and isinstance(values.get(name), bool):
                return f"{name} must be a number, not {json.dumps(values[name])}"
    return None


def _invalid_call(
    call_id: str, name: str, raw: str, error: str, *, advice: str | None = None
) -> InvalidFunctionCall:
    advice = advice or f"Call {name} again with valid arguments."
    message = f"Error: the call was not run: {error}. {advice}"
    if len(raw) > MAX_ARGUMENT_CHARS or _depth(raw) > MAX_ARGUMENT_DEPTH:
        raw = raw[:QUOTED_ARGUMENT_CHARS]  # hostile: keep it out of the history sent back

    async def report() -> str:
        return message

    info = FunctionInfo(name=name, description="", auto_retry=False, callable=report, arguments={})
    return InvalidFunctionCall(
        tool_call_id=call_id, function_info=info, raw_arguments=raw, arguments={}, error=error
    )


def build_call(
    fnc_ctx: FunctionContext | None, call_id: str, name: str, raw_arguments: str
) -> FunctionCallInfo:
    """A validated FunctionCallInfo, or an InvalidFunctionCall saying what was wrong."""
    functions = fnc_ctx.ai_functions if fnc_ctx is not None else {}
    if name not in functions:
        available = ", ".join(sorted(functions)) or "none"
        return _invalid_call(
            call_id,
            name,
            raw_arguments,
            f"there is no function named {name!r}: it does not exist (available: {available})",
            advice="Do not call it again: use an available function, or answer without one.",
        )
    assert fnc_ctx is not None
    problem = _argument_problem(functions[name], raw_arguments)
    if problem is not None:
        return _invalid_call(
            call_id, name, raw_arguments, f"invalid arguments for {name}: {problem}"
        )
    try:
        return _create_ai_function_info(fnc_ctx, call_id, name, raw_arguments)
    except (ValueError, TypeError, AttributeError, RecursionError) as e:
        return _invalid_call(
            call_id,
            name,
            raw_arguments,
            f"invalid arguments {_quote(raw_arguments)} for {name}: {e}",
        )


def _is_complete_object(text: str) -> bool:
    stripped = text.rstrip()
    if not stripped.endswith("}") or len(stripped) > MAX_ARGUMENT_CHARS:
        return False  # too long: reported as invalid when the call finishes
    try:
        return isinstance(json.loads(stripped), dict)
    except (ValueError, RecursionError):
        return False


@dataclass
class _Pending:
    index: int
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    emitted: bool = False


class ToolCallAssembler:
    """Assembles the tool calls of one streamed choice (several may be interleaved by index)."""

    def __init__(self, fnc_ctx: FunctionContext | None) -> None:
        self._fnc_ctx = fnc_ctx
        self._calls: dict[int, _Pending] = {}

    def feed(
        self, index: int, call_id: str | None, name: str | None, arguments: str | None
    ) -> FunctionCallInfo | None:
        """Add one delta; returns the call if this delta completed it."""
        call = self._calls.setdefault(index, _Pending(index))
        if call.emitted:
            if arguments and arguments.strip():
                logger.warning(
                    "tool call arguments continued after a complete JSON object; ignored",
                    extra={"index": index, "tool": call.name},
                )
            return None
        if call_id:
            call.call_id = call_id
        if name:  # sent once by OpenAI; some servers repeat it on every delta
            call.name = name
        if arguments:
            call.arguments.append(arguments)
            if call.name and _is_complete_object("".join(call.arguments)):
                return self._emit(call)
        return None

    def finish(self) -> list[FunctionCallInfo]:
        """Every call not handed out yet, in index order."""
        return [self._emit(c) for _, c in sorted(self._calls.items()) if not c.emitted]

    def _emit(self, call: _Pending) -> FunctionCallInfo:
        call.emitted = True
        call_id = call.call_id or f"call_{call.index}"
        return build_call(self._fnc_ctx, call_id, call.name, "".join(call.arguments))
