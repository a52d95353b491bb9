"""``python -m worker`` as a user runs it: a subprocess, against the loopback LiveKit API."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from tests.loopback.livekit_server import LoopbackLiveKitServer
from tests.project_env import clean_environ

REPO = Path(__file__).resolve().parent.parent
AGENT_NAME = "cli-tester"

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


async def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> Result:
    """Run ``python -m worker ARGS`` in ``cwd`` (an empty directory: no stray .env file)."""
    full_env = clean_environ()
    full_env.update(env, PYTHONPATH=str(REPO))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=full_env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=45)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_usage_error(result: Result, *expected: str) -> None:
    """Exit 2, exactly one ``error:`` line per expected problem (in any order), no traceback."""
    assert result.code == 2, result
    assert "Traceback" not in result.err
    errors = [line for line in result.error_lines() if line.startswith("error: ")]
    assert len(errors) == len(expected), errors
    for needle in expected:
        assert sum(needle in line for line in errors) == 1, (needle, errors)


@pytest.fixture
async def server() -> AsyncIterator[LoopbackLiveKitServer]:
    key, secret = f"APIcli{secrets.token_hex(4)}", secrets.token_urlsafe(36)
    async with LoopbackLiveKitServer(key, secret) as srv:
        yield srv


@pytest.fixture
def env(server: LoopbackLiveKitServer) -> dict[str, str]:
    return {**server.client_env(), "AGENT_NAME": AGENT_NAME}


# --- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], []])
async def test_help_lists_every_command(args: list[str], tmp_path: Path) -> None:
    result = await run_cli(args, {}, tmp_path)
    assert result.code == 0
    listed = {line.split()[0] for line in result.out.splitlines() if line.startswith("  ")}
    assert {"start", "dev", "connect", "download-files", "dispatch", "token"} <= listed


async def test_framework_command_help_needs_no_configuration(tmp_path: Path) -> None:
    result = await run_cli(["start", "--help"], {}, tmp_path)
    assert result.code == 0, result
    assert "--drain-timeout" in result.out


async def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = await run_cli(["serve"], {}, tmp_path)
    assert_usage_error(result, "unknown command 'serve'")


# --- dispatch -------------------------------------------------------------------------------


async def test_dispatch_creates_an_explicit_dispatch(
    server: LoopbackLiveKitServer, env: dict[str, str], tmp_path: Path
) -> None:
    result = await run_cli(["dispatch", "--room", "R", "--metadata", '{"a":1}'], env, tmp_path)
    assert result.code == 0, result
    assert len(server.dispatches) == 1
    seen = server.dispatches[0]
    assert result.out.strip() == seen.response.id
    assert seen.request.agent_name == AGENT_NAME
    assert seen.request.room == "R"
    assert seen.request.metadata == '{"a":1}'
    # The server verified the token's signature; check what it grants: admin of this room only.
    assert seen.claims["iss"] == server.api_key
    assert seen.claims["video"]["roomAdmin"] is True
    assert seen.claims["video"]["room"] == "R"
    assert server.api_secret not in result.out + result.err


async def test_dispatch_without_metadata_sends_empty_metadata(
    server: LoopbackLiveKitServer, env: dict[str, str], tmp_path: Path
) -> None:
    result = await run_cli(["dispatch", "--room", "lobby"], env, tmp_path)
    assert result.code == 0, result
    assert [d.request.metadata for d in server.dispatches] == [""]


async def test_dispatch_rejects_metadata_that_is_not_json(
    server: LoopbackLiveKitServer, env: dict[str, str], tmp_path: Path
) -> None:
    result = await run_cli(["dispatch", "--room", "R", "--metadata", "{a:1"], env, tmp_path)
    assert_usage_error(result, "--metadata: not valid JSON")
    assert server.dispatches == []


async def test_dispatch_reports_every_missing_setting(
    server: LoopbackLiveKitServer, tmp_path: Path
) -> None:
    env = {"LIVEKIT_URL": server.url, "LIVEKIT_API_SECRET": server.api_secret}
    result = await run_cli(["dispatch", "--room", "R"], env, tmp_path)
    assert_usage_error(result, "LIVEKIT_API_KEY", "AGENT_NAME")
    assert server.api_secret not in result.err
    assert server.dispatches == []


async def test_dispatch_reports_malformed_settings(tmp_path: Path) -> None:
    env = {
        "LIVEKIT_URL": "localhost:7880",
        "LIVEKIT_API_KEY": "k",
        "LIVEKIT_API_SECRET": "s" * 32,
        "AGENT_NAME": "my agent",
    }
    result = await run_cli(["dispatch", "--room", "R"], env, tmp_path)
    assert_usage_error(result, "LIVEKIT_URL", "AGENT_NAME")


async def test_dispatch_requires_a_room(env: dict[str, str], tmp_path: Path) -> None:
    result = await run_cli(["dispatch"], env, tmp_path)
    assert result.code == 2
    assert "--room" in result.err
    assert "Traceback" not in result.err


async def test_dispatch_refused_by_the_server_is_reported_without_the_secret(
    server: LoopbackLiveKitServer, env: dict[str, str], tmp_path: Path
) -> None:
    wrong_secret = secrets.token_urlsafe(36)
    result = await run_cli(
        ["dispatch", "--room", "R"], {**env, "LIVEKIT_API_SECRET": wrong_secret}, tmp_path
    )
    assert_usage_error(result, "dispatch failed")
    assert "unauthenticated" in result.err
    assert wrong_secret not in result.err + result.out
    assert server.dispatches == []
    assert [path for path, _ in server.rejected] == [
        "/twirp/livekit.AgentDispatchService/CreateDispatch"
    ]


async def test_dispatch_to_an_unreachable_server_is_a_clean_error(
    server: LoopbackLiveKitServer, env: dict[str, str], tmp_path: Path
) -> None:
    await server.aclose()  # nothing listens on that port any more
    result = await run_cli(["dispatch", "--room", "R"], env, tmp_path)
    assert_usage_error(result, "dispatch failed")


# --- token ----------------------------------------------------------------------------------


async def test_token_grants_joining_one_room_only(
    server: LoopbackLiveKitServer, env: dict[str, str], tmp_path: Path
) -> None:
    result = await run_cli(
        ["token", "--room", "R", "--identity", "alice", "--ttl", "15m"], env, tmp_path
    )
    assert result.code == 0, result
    token = result.out.strip()
    claims = jwt.decode(token, server.api_secret, algorithms=["HS256"], issuer=server.api_key)
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["nbf"] == 15 * 60
    video = claims["video"]
    assert video["roomJoin"] is True
    assert video["room"] == "R"
    granted = {name for name, value in video.items() if value is True}
    assert granted <= {"roomJoin", "canPublish", "canSubscribe", "canPublishData"}
    for admin in ("roomAdmin", "roomCreate", "roomList", "roomRecord", "agent", "hidden"):
        assert not video.get(admin), admin
    assert server.api_secret not in result.out + result.err


async def test_token_default_ttl_is_one_hour(server: LoopbackLiveKitServer, tmp_path: Path) -> None:
    # token needs only the key pair: no URL, no agent name.
    env = {"LIVEKIT_API_KEY": server.api_key, "LIVEKIT_API_SECRET": server.api_secret}
    result = await run_cli(["token", "--room", "R", "--identity", "bob"], env, tmp_path)
    assert result.code == 0, result
    claims = jwt.decode(result.out.strip(), server.api_secret, algorithms=["HS256"])
    assert claims["exp"] - claims["nbf"] == 3600


@pytest.mark.parametrize("ttl", ["0", "25h", "soon", "-5m"])
async def test_token_rejects_a_bad_ttl(ttl: str, env: dict[str, str], tmp_path: Path) -> None:
    result = await run_cli(
        ["token", "--room", "R", "--identity", "alice", f"--ttl={ttl}"], env, tmp_path
    )
    assert_usage_error(result, "--ttl")
    assert result.out == ""


async def test_token_reports_every_problem_at_once(
    server: LoopbackLiveKitServer, tmp_path: Path
) -> None:
    result = await run_cli(["token", "--room", " ", "--identity", "", "--ttl", "2y"], {}, tmp_path)
    # usage and configuration problems come together, so one run shows everything to fix
    assert_usage_error(
        result, "--ttl", "--room", "--identity", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"
    )


async def test_token_without_keys_names_them(tmp_path: Path) -> None:
    result = await run_cli(["token", "--room", "R", "--identity", "alice"], {}, tmp_path)
    assert_usage_error(result, "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")


# --- worker commands ------------------------------------------------------------------------


async def test_start_with_bad_configuration_lists_every_problem(tmp_path: Path) -> None:
    env = {
        "LIVEKIT_URL": "ftp://example.com",
        "LIVEKIT_API_KEY": "k",
        "MAX_JOBS": "many",
        "STT_PROVIDER": "deepgram",
    }
    result = await run_cli(["start"], env, tmp_path)
    assert_usage_error(
        result,
        "LIVEKIT_URL",
        "LIVEKIT_API_SECRET",
        "MAX_JOBS",
        "DEEPGRAM_API_KEY",
        "OPENAI_API_KEY",
    )


@pytest.mark.parametrize(
    ("tools", "expected"),
    [
        ("no_such_pkg.tools:Tools", "cannot import no_such_pkg.tools"),
        ("json:JSONDecoder", "not a FunctionContext"),
    ],
)
async def test_start_rejects_agent_tools_it_cannot_load(
    tools: str, expected: str, tmp_path: Path
) -> None:
    env = {
        "LIVEKIT_URL": "ws://127.0.0.1:9",
        "LIVEKIT_API_KEY": "k",
        "LIVEKIT_API_SECRET": "s" * 32,
        "DEEPGRAM_API_KEY": "dg",
        "OPENAI_API_KEY": "sk",
        "AGENT_TOOLS": tools,
    }
    result = await run_cli(["start"], env, tmp_path)
    assert_usage_error(result, "AGENT_TOOLS")
    assert expected in result.err


async def test_settings_come_from_a_dotenv_file_in_the_working_directory(
    server: LoopbackLiveKitServer, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        f"LIVEKIT_URL={server.url}\n"
        f"LIVEKIT_API_KEY={server.api_key}\n"
        f"LIVEKIT_API_SECRET='{server.api_secret}'\n"
        "AGENT_NAME=from-dotenv\n"
    )
    result = await run_cli(["dispatch", "--room", "R"], {"AGENT_NAME": "from-env"}, tmp_path)
    assert result.code == 0, result
    assert [d.request.agent_name for d in server.dispatches] == ["from-env"]
