"""AGENT_MCP_SERVERS entries: what to connect to (kept free of the SDK, so the configuration
check stays light)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse


class McpConfigError(ValueError):
    pass


@dataclass(frozen=True)
class McpServerSpec:
    kind: Literal["http", "stdio"]
    target: str
    """The URL, or the command line."""

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.target)

    @property
    def label(self) -> str:
        """What logs call the server (no query string, user info or arguments)."""
        if self.kind == "http":
            u = urlparse(self.target)
            return f"{u.scheme}://{u.hostname}{':' + str(u.port) if u.port else ''}{u.path}"
        return self.argv[0]


def parse_mcp_servers(value: str) -> list[McpServerSpec]:
    """``AGENT_MCP_SERVERS``: entries separated by ``;``; raises :class:`McpConfigError`."""
    specs: list[McpServerSpec] = []
    for raw in value.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        if entry.startswith(("http://", "https://")):
            if not urlparse(entry).hostname:
                raise McpConfigError(f"{entry!r} is not a URL with a host")
            specs.append(McpServerSpec("http", entry))
            continue
        try:
            argv = shlex.split(entry)
        except ValueError as e:
            raise McpConfigError(f"cannot split the command {entry!r}: {e}") from None
        if not argv:
            raise McpConfigError(f"empty command {entry!r}")
        specs.append(McpServerSpec("stdio", entry))
    return specs
