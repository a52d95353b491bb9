"""MCP tools in a spoken conversation, from real MCP servers written with the SDK
(tests/loopback/mcp_server.py), over stdio and streamable HTTP: their JSON schemas reach the
LLM, their calls run concurrently with the other tools, arguments are checked, and a server that
fails to start or dies mid-call costs an error result and its tools, not the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply, ToolCall

pytestmark = pytest.mark.timeout(90)

SERVER = Path(__file__).parent / "loopback" / "mcp_server.py"


def stdio_entry(prefix: str, mark_dir: Path | None = None) -> str:
    return " ".join(
        [sys.executable, str(SERVER), "stdio", prefix, *([str(mark_dir)] if mark_dir else [])]
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def http_server(prefix: str, mark_dir: Path | None = None) -> AsyncIterator[tuple[str, int]]:
    """The test MCP server on streamable HTTP, in a process of its own: (URL, pid)."""
    port = _free_port()
    args = [str(SERVER), "http", prefix, str(port), *([str(mark_dir)] if mark_dir else [])]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield f"http://127.0.0.1:{port}/mcp", proc.pid
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def tool_names(body: dict[str, Any]) -> set[str]:
    return {t["function"]["name"] for t in body.get("tools", [])}


def results(body: dict[str, Any]) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}


async def test_stdio_and_http_tools_run_concurrently_with_checked_arguments(
    make_session: SessionFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.tools.mcp")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-reach-mcp-servers")

    def respond(body: dict[str, Any]) -> Reply:
        if body["messages"][-1]["role"] == "user":
            return Reply(
                tool_calls=[
                    ToolCall("a_clocked", json.dumps({"label": "one", "seconds": 1.0}), id="c1"),
                    ToolCall("b_clocked", json.dumps({"label": "two", "seconds": 1.0}), id="c2"),
                    ToolCall("a_add", json.dumps({"a": 1, "b": "x"}), id="c3"),
                    ToolCall("b_add", json.dumps({"a": 2, "b": 3}), id="c4"),
                    ToolCall("a_env", "{}", id="c5"),
                ],
                ttft=0.1,
            )
        return Reply(text="Both are done, and two plus three is five.", ttft=0.1)

    async with http_server("b") as (url, _pid):
        servers = f"{stdio_entry('a')} ; {url} ; /nonexistent/mcp-server --flag"
        h = await make_session(respond, env={"AGENT_MCP_SERVERS": servers})
        assert h.parts.mcp is not None
        await h.parts.mcp.wait_settled()
        await h.utter("do both jobs please")
        reply = await h.wait_for_replies(1, timeout=40)

    # the MCP tools were offered with their JSON schemas, next to the built-in ones
    first = h.oai.requests[0].body
    assert {"a_clocked", "a_hang", "a_add", "b_clocked", "b_add", "current_time"} <= tool_names(
        first
    )
    (clocked,) = [t["function"] for t in first["tools"] if t["function"]["name"] == "a_clocked"]
    params = clocked["parameters"]
    assert params["type"] == "object"
    assert params["properties"]["seconds"]["type"] == "number"
    assert set(params["required"]) == {"label", "seconds"}
    assert clocked["description"] == "Work for a while; says when it ran."

    # the two 1 s calls on two servers overlapped; bad arguments never reached the server
    out = next(results(r.body) for r in h.oai.requests if results(r.body))
    one, two = json.loads(out["c1"]), json.loads(out["c2"])
    overlap = min(one["ended"], two["ended"]) - max(one["started"], two["started"])
    assert overlap > 0.5, f"the MCP calls overlapped only {overlap:.3f} s"
    assert "not run" in out["c3"]
    assert "b" in out["c3"]
    assert out["c4"] == "5"
    # the stdio server's environment is the SDK's minimal one: no key of the worker's
    names = json.loads(out["c5"])
    assert "PATH" in names
    assert not any("KEY" in n or "SECRET" in n for n in names), names
    assert reply.args[0].content == "Both are done, and two plus three is five."

    # the server that could not start was logged once, naming only its program
    failed = [r for r in caplog.records if "did not start" in r.getMessage()]
    assert len(failed) == 1
    assert getattr(failed[0], "server", None) == "/nonexistent/mcp-server"


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_server_killed_mid_call_gives_an_error_result_and_the_next_turn_works(
    make_session: SessionFactory,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    transport: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.tools.mcp")

    def respond(body: dict[str, Any]) -> Reply:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return Reply(text="That tool is not available right now.", ttft=0.1)
        if "long job" in json.dumps(body["messages"][-1]):
            return Reply(tool_calls=[ToolCall("k_hang", "{}", id="h1")], ttft=0.1)
        return Reply(text="I am still here.", ttft=0.1)

    async with contextlib.AsyncExitStack() as stack:
        if transport == "stdio":
            entry = stdio_entry("k", tmp_path)
        else:
            entry, _ = await stack.enter_async_context(http_server("k", tmp_path))
        h = await make_session(respond, env={"AGENT_MCP_SERVERS": entry})
        assert h.parts.mcp is not None
        await h.parts.mcp.wait_settled()
        await h.utter("start the long job")
        mark = tmp_path / "hang"
        async with asyncio.timeout(30):
            while not mark.exists():  # noqa: ASYNC110 (the server process writes it)
                await asyncio.sleep(0.05)
        os.kill(int(mark.read_text()), signal.SIGKILL)
        first = await h.wait_for_replies(1, timeout=30)
        assert first.args[0].content == "That tool is not available right now."
        out = next(results(r.body) for r in h.oai.requests if results(r.body))
        assert out["h1"].startswith("error:")
        assert "k_hang" in out["h1"]
        assert "McpServerGone" in out["h1"]

        # the next turn works; the dead server's tools were withdrawn, the built-in ones stay
        await h.utter("are you still there")
        second = await h.wait_for_replies(2, timeout=30)
        assert second.args[0].content == "I am still here."
        names = tool_names(h.oai.requests[-1].body)
        assert "current_time" in names
        assert not any(n.startswith("k_") for n in names)
        assert "k_hang" in tool_names(h.oai.requests[0].body)
        lost = [r for r in caplog.records if "tools are withdrawn" in r.getMessage()]
        assert len(lost) == 1, [r.getMessage() for r in lost]
        await h.aclose()
