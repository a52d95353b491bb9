"""Load the user's tools named by AGENT_TOOLS=package.module:ClassName (and nothing else)."""

from __future__ import annotations

import importlib

from livekit.agents import llm


class ToolLoadError(Exception):
    pass


def load_user_tools(spec: str) -> llm.FunctionContext:
    """Import ``package.module:ClassName``, a FunctionContext subclass, and instantiate it."""
    module_name, _, class_name = spec.strip().partition(":")
    if not module_name or not class_name.isidentifier():
        raise ToolLoadError(f"AGENT_TOOLS: expected package.module:ClassName, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ToolLoadError(f"AGENT_TOOLS: cannot import {module_name}: {e}") from e
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, llm.FunctionContext)):
        raise ToolLoadError(f"AGENT_TOOLS: {spec} is not a FunctionContext subclass")
    try:
        return cls()
    except Exception as e:  # a bad tool signature raises ValueError here, among others
        raise ToolLoadError(f"AGENT_TOOLS: cannot create {spec}: {e}") from e


def merge_tools(*contexts: llm.FunctionContext) -> llm.FunctionContext:
    """One FunctionContext holding every tool; a later duplicate name is an error."""
    merged = llm.FunctionContext()
    for ctx in contexts:
        for name, info in ctx.ai_functions.items():
            if name in merged.ai_functions:
                raise ToolLoadError(f"AGENT_TOOLS: tool name {name!r} is defined twice")
            merged.ai_functions[name] = info
    return merged
