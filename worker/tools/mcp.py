"""Tools from MCP servers (``AGENT_MCP_SERVERS``), added to the session's function context.

Each server entry is either an ``http(s)://`` URL (streamable HTTP) or a command line started
over stdio for this job only. Every server is held by a task of its own (the SDK's transports
are anyio task groups that must be entered and left by one task, and a failing transport
cancels the task that holds it, never the conversation). Once connected, its tools become
:class:`JsonSchemaFunctionInfo` entries of the session's ``FunctionContext``, so the model sees
them next to the built-in tools and ``ToolRunningLLM`` runs them like any other tool: the same
concurrency, timeouts, result caps and error results.

A server that cannot start, or that dies (its transport ends, or a call reports the connection
closed), is logged once and its tools are withdrawn from the context; calls still running get
an error result, and the conversation goes on.

The stdio servers get only the SDK's minimal environment (``HOME``, ``PATH``, ``USER``, ...):
no provider key ever reaches them. Logs name a server by its program or its URL without query
or credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import llm

from worker.tools.mcp_servers import McpServerSpec

logger = logging.getLogger("worker.tools.mcp")

CONNECT_TIMEOUT = 20.0
"""Seconds a server gets to start, answer the handshake and list its tools."""
CLOSE_TIMEOUT = 5.0
"""Seconds a server gets to shut down at the end of the job (the SDK then kills stdio ones)."""
_TOOL_NAME_RE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_TOOL_NAME = 64  # what OpenAI-compatible APIs accept


# --- JSON schema tools ------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonSchemaFunctionInfo(llm.FunctionInfo):
    """A tool described by a JSON schema instead of a Python signature.

    ``json_schema`` is the tool's parameters object; the LLM plugin sends it as the tool's
    ``parameters`` as it is (``plugins/openai_llm/tool_schema.py``). ``arguments`` holds the
    top-level properties in the framework's terms, so its argument check (required names,
    primitive types, enums) runs as for any tool; the full schema is checked before the call.
    """

    json_schema: dict[str, Any] = field(default_factory=dict)


_PRIMITIVES: dict[str, type] = {"string": str, "integer": int, "number": float, "boolean": bool}


def _argument_type(prop: dict[str, Any]) -> type:
    """The framework's type for a property; ``object`` lets any JSON value through (nested
    objects, unions): the JSON schema check covers those."""
    kind = prop.get("type")
    if isinstance(kind, str) and kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "array":
        items = prop.get("items")
        if isinstance(items, dict) and "enum" not in items:
            item = _PRIMITIVES.get(str(items.get("type")))
            if item is not None:
                return list[item]  # type: ignore[valid-type]
    return object


def tool_parameters(input_schema: dict[str, Any]) -> dict[str, Any]:
    """An MCP input schema as the ``parameters`` of a chat-completions tool: always an object
    with ``properties`` (MCP allows an empty schema), without the ``$schema`` marker."""
    schema = {k: v for k, v in input_schema.items() if k != "$schema"}
    schema["type"] = "object"
    if not isinstance(schema.get("properties"), dict):
        schema["properties"] = {}
    return schema


def function_info(
    name: str,
    description: str,
    input_schema: dict[str, Any],
    call: Callable[[dict[str, Any]], Awaitable[str]],
) -> JsonSchemaFunctionInfo:
    """A FunctionInfo whose callable checks the arguments against ``input_schema`` and then
    awaits ``call(arguments)``."""
    import jsonschema  # comes with the mcp SDK

    parameters = tool_parameters(input_schema)
    required = set(parameters.get("required") or [])
    arguments: dict[str, llm.FunctionArgInfo] = {}
    for arg_name, prop in parameters["properties"].items():
        prop = prop if isinstance(prop, dict) else {}
        enum = prop.get("enum")
        choices = (
            tuple(enum) if isinstance(enum, list) and _argument_type(prop) in (str, int) else ()
        )
        arguments[arg_name] = llm.FunctionArgInfo(
            name=arg_name,
            description=str(prop.get("description", "")),
            type=_argument_type(prop),
            default=inspect.Parameter.empty if arg_name in required else None,
            choices=choices,
        )
    try:
        validator_cls = jsonschema.validators.validator_for(parameters)
        validator_cls.check_schema(parameters)
        validator: Any = validator_cls(parameters)
    except jsonschema.SchemaError:
        logger.warning(
            "tool schema is not valid JSON schema; arguments checked by name only",
            extra={"tool": name},
        )
        validator = None

    async def run(**kwargs: Any) -> str:
        if validator is not None:
            errors = sorted(validator.iter_errors(kwargs), key=lambda e: list(e.path))
            if errors:
                where = "/".join(str(p) for p in errors[0].path) or "arguments"
                raise ToolArgumentError(f"invalid {where}: {errors[0].message[:200]}")
        return await call(kwargs)

    return JsonSchemaFunctionInfo(
        name=name,
        description=description,
        auto_retry=False,
        callable=run,
        arguments=arguments,
        json_schema=parameters,
    )


class ToolArgumentError(ValueError):
    """The model's arguments do not match the tool's JSON schema."""


class McpToolError(RuntimeError):
    """The MCP server reported an error."""


class McpServerGone(McpToolError):
    """The tool's MCP server is not available (it died or never started). The runner shows the
    model only an error's class, so the class name says it."""


def _result_text(result: Any) -> str:
    """A CallToolResult as text for the model: its text parts, else its structured content."""
    parts: list[str] = []
    for item in result.content:
        text = getattr(item, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(item, 'type', 'other')}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def tool_name(name: str) -> str:
    """An MCP tool name as chat-completions APIs accept it (letters, digits, _ and -)."""
    return _TOOL_NAME_RE.sub("_", name)[:_MAX_TOOL_NAME] or "tool"


class McpServer:
    """One MCP server, connected and held by a task of its own until :meth:`aclose`."""

    def __init__(
        self,
        spec: McpServerSpec,
        *,
        on_tools: Callable[[McpServer, list[Any]], None],
        on_gone: Callable[[McpServer], None],
    ) -> None:
        self.spec = spec
        self._on_tools = on_tools
        self._on_gone = on_gone
        self._client: Any = None
        self._stop = asyncio.Event()
        self._gone = False
        self._task: asyncio.Task[None] | None = None
        self.settled = asyncio.Event()
        """Set once the server's tools are in the context, or it failed."""

    @property
    def available(self) -> bool:
        return self._client is not None and not self._gone

    def start(self) -> None:
        self._task = asyncio.create_task(self._hold(), name=f"mcp:{self.spec.label}")

    async def _hold(self) -> None:
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters

        target: Any = self.spec.target
        if self.spec.kind == "stdio":
            argv = self.spec.argv
            target = StdioServerParameters(command=argv[0], args=argv[1:])
        try:
            async with contextlib.AsyncExitStack() as stack:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    client = await stack.enter_async_context(Client(target))
                    tools = await _list_tools(client)
                self._client = client
                self._on_tools(self, tools)
                self.settled.set()
                await self._stop.wait()
        except Exception as e:
            # ExceptionGroup from a transport that failed under us, OSError from a command that
            # cannot start, TimeoutError from a server that never answered, ...
            self._lost("did not start" if self._client is None else "stopped", e)
        finally:
            self.settled.set()

    def _lost(self, what: str, error: BaseException | None = None) -> None:
        if self._gone or self._stop.is_set():
            return
        self._gone = True
        # an HTTP error may quote the URL, whose query can hold a token: name it by its label
        detail = _describe(error).replace(self.spec.target, self.spec.label) if error else ""
        logger.warning(
            "MCP server %s; its tools are withdrawn",
            what,
            extra={"server": self.spec.label, "error": detail},
        )
        self._on_gone(self)

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        client = self._client
        if client is None or self._gone:
            raise McpServerGone("its MCP server is not available")
        try:
            result = await client.call_tool(name, arguments)
        except MCPError as e:
            if e.code == CONNECTION_CLOSED:
                self._lost("stopped", e)
                raise McpServerGone("its MCP server stopped during the call") from None
            raise McpToolError(e.message[:500]) from None
        text = _result_text(result)
        if result.is_error:
            raise McpToolError(text or "the tool reported an error")
        return text

    async def aclose(self) -> None:
        self._stop.set()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT)
        except TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _describe(error: BaseException) -> str:
    """The innermost errors of a (possibly grouped) exception, briefly."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in error.exceptions)
    return f"{type(error).__name__}: {str(error)[:200]}"


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


class McpTools:
    """The session's MCP servers: their tools live in ``fnc_ctx`` while the server does."""

    def __init__(self, specs: list[McpServerSpec], fnc_ctx: llm.FunctionContext) -> None:
        self._fnc_ctx = fnc_ctx
        self._servers = [
            McpServer(spec, on_tools=self._add_tools, on_gone=self._withdraw) for spec in specs
        ]
        self._owned: dict[McpServer, dict[str, JsonSchemaFunctionInfo]] = {}

    @property
    def servers(self) -> list[McpServer]:
        return list(self._servers)

    def start(self) -> None:
        """Connect every server in the background; their tools appear as each is ready."""
        for server in self._servers:
            server.start()

    async def wait_settled(self) -> None:
        """Until every server is connected (its tools in the context) or has failed."""
        await asyncio.gather(*(s.settled.wait() for s in self._servers))

    def tools_of(self, server: McpServer) -> list[str]:
        return list(self._owned.get(server, {}))

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self._servers))

    def _add_tools(self, server: McpServer, tools: list[Any]) -> None:
        functions = self._fnc_ctx.ai_functions
        owned: dict[str, JsonSchemaFunctionInfo] = {}
        for tool in tools:
            name = tool_name(tool.name)
            if name in functions:
                logger.warning(
                    "MCP tool name already taken; tool left out",
                    extra={"server": server.spec.label, "tool": name},
                )
                continue

            async def call(arguments: dict[str, Any], _name: str = tool.name) -> str:
                return await server.call(_name, arguments)

            info = function_info(
                name, tool.description or tool.title or name, dict(tool.input_schema or {}), call
            )
            functions[name] = owned[name] = info
        self._owned[server] = owned
        logger.info(
            "MCP server connected", extra={"server": server.spec.label, "tools": list(owned)}
        )

    def _withdraw(self, server: McpServer) -> None:
        functions = self._fnc_ctx.ai_functions
        for name, info in self._owned.pop(server, {}).items():
            if functions.get(name) is info:
                del functions[name]
