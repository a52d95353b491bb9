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
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from livekit.agents.llm import (
    FunctionCallInfo,
    FunctionContext,
    FunctionInfo,
    _create_ai_function_info,
)

logger = logging.getLogger("plugins.openai_llm")


@dataclass(frozen=True)
class InvalidFunctionCall(FunctionCallInfo):
    """A tool call the model got wrong. `execute()` yields the error text for the model.

    `function_info.name` is the name the model asked for; `arguments` is empty and
    `raw_arguments` is what the model sent.
    """

    error: str = ""


def _invalid_call(call_id: str, name: str, raw: str, error: str) -> InvalidFunctionCall:
    message = f"Error: the call was not run: {error}. Call {name} again with valid arguments."

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
            f"there is no function named {name!r} (available: {available})",
        )
    assert fnc_ctx is not None
    try:
        return _create_ai_function_info(fnc_ctx, call_id, name, raw_arguments)
    except (ValueError, TypeError, AttributeError) as e:
        return _invalid_call(
            call_id, name, raw_arguments, f"invalid arguments {raw_arguments!r} for {name}: {e}"
        )


def _is_complete_object(text: str) -> bool:
    stripped = text.rstrip()
    if not stripped.endswith("}"):
        return False
    try:
        return isinstance(json.loads(stripped), dict)
    except ValueError:
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
                    extra={"index": index, "name": call.name},
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
