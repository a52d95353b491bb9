"""A real MCP server written with the official SDK, for the MCP tool tests.

Run as ``python -m tests.loopback.mcp_server stdio PREFIX [MARK_DIR]`` or ``... http PREFIX PORT
[MARK_DIR]``. Its tools are named ``PREFIX_...``. ``clocked`` answers with when it started and
ended (wall clock), so a test can see two calls overlap; ``hang`` writes ``<MARK_DIR>/hang`` (the
server's pid) when it starts, so a test can kill the server mid-call; ``env`` lists the names in
its environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer


def build(prefix: str, mark_dir: Path | None) -> MCPServer:
    server = MCPServer(f"test-{prefix}")

    @server.tool(name=f"{prefix}_clocked", description="Work for a while; says when it ran.")
    async def clocked(label: str, seconds: float) -> str:
        started = time.time()
        await asyncio.sleep(seconds)
        return json.dumps({"label": label, "started": started, "ended": time.time()})

    @server.tool(name=f"{prefix}_hang", description="A call that does not come back.")
    async def hang() -> str:
        if mark_dir is not None:
            (mark_dir / "hang").write_text(str(os.getpid()))
        await asyncio.sleep(3600)
        return "never"

    @server.tool(name=f"{prefix}_env", description="The names in the server's environment.")
    def env() -> str:
        return json.dumps(sorted(os.environ))

    @server.tool(name=f"{prefix}_add", description="Add two whole numbers.")
    def add(a: int, b: int) -> int:
        return a + b

    return server


def main() -> None:
    transport, prefix, *rest = sys.argv[1:]
    if transport == "stdio":
        mark = Path(rest[0]) if rest else None
        build(prefix, mark).run()
    else:
        port = int(rest[0])
        mark = Path(rest[1]) if len(rest) > 1 else None
        build(prefix, mark).run("streamable-http", port=port)


if __name__ == "__main__":
    main()
