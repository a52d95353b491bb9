"""FunctionContext -> the `tools` list of a chat completions request.

A FunctionInfo that carries a `json_schema` dict (tools described by a JSON schema rather than a
Python signature, e.g. MCP tools) is sent with that schema as its `parameters`, as it is.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from livekit.agents.llm import FunctionArgInfo, FunctionContext, FunctionInfo

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_type(t: type) -> str:
    try:
        return _JSON_TYPES[t]
    except KeyError:
        raise ValueError(f"unsupported argument type {t!r}") from None


def _without_none(t: Any) -> Any:
    """``X | None`` -> ``X`` (the framework accepts optional arguments of one type)."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


def _property(arg: FunctionArgInfo) -> dict[str, Any]:
    t = _without_none(arg.type)
    prop: dict[str, Any] = {}
    if arg.description:
        prop["description"] = arg.description
    if typing.get_origin(t) is list:
        items: dict[str, Any] = {"type": _json_type(typing.get_args(t)[0])}
        if arg.choices:
            items["enum"] = list(arg.choices)
        prop.update(type="array", items=items)
    else:
        prop["type"] = _json_type(t)
        if arg.choices:
            prop["enum"] = list(arg.choices)
    return prop


def function_tool(fnc: FunctionInfo) -> dict[str, Any]:
    """One `{"type": "function", ...}` tool; arguments without a default are required."""
    schema = getattr(fnc, "json_schema", None)
    if isinstance(schema, dict):
        return {
            "type": "function",
            "function": {"name": fnc.name, "description": fnc.description, "parameters": schema},
        }
    return {
        "type": "function",
        "function": {
            "name": fnc.name,
            "description": fnc.description,
            "parameters": {
                "type": "object",
                "properties": {a.name: _property(a) for a in fnc.arguments.values()},
                "required": [
                    a.name for a in fnc.arguments.values() if a.default is inspect.Parameter.empty
                ],
            },
        },
    }


def build_tools(fnc_ctx: FunctionContext | None) -> list[dict[str, Any]]:
    if fnc_ctx is None:
        return []
    return [function_tool(f) for f in fnc_ctx.ai_functions.values()]
