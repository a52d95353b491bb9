"""The token endpoint of ``python -m worker web`` as an attacker sees it (docs/security.md).

The app is served on a loopback port and spoken to over HTTP with aiohttp, with the headers a
hostile page, a DNS-rebinding page or a script would send. Tokens are decoded with PyJWT and
checked against the API secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from worker.config import Settings, load_settings
from worker.web import PUBLISH_SOURCES, WebOptions, create_app

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "web-test-key"
API_SECRET = "web-test-secret-0123456789abcdef0123456789"
ACCESS_TOKEN = "web-access-token-0123456789abcdef"


def settings(**env: str) -> Settings:
    return load_settings(env, dotenv=None)


def with_keys(**env: str) -> Settings:
    return settings(LIVEKIT_API_KEY=API_KEY, LIVEKIT_API_SECRET=API_SECRET, **env)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def post_token(
    http: aiohttp.ClientSession, url: str, body: Any, **headers: str
) -> aiohttp.ClientResponse:
    return await http.post(f"{url}/api/token", json=body, headers=headers)


# --- what a token grants ----------------------------------------------------------------------


async def test_token_joins_one_room_publishes_only_media_and_is_logged_without_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="worker.web")
    async with serving(create_app(with_keys())) as url, aiohttp.ClientSession() as http:
        first = await post_token(http, url, {"room": "web-support-42"})
        assert first.status == 200
        assert first.headers["Cache-Control"] == "no-store"
        grant = await first.json()
        second = await (await post_token(http, url, {"room": "web-support-42"})).json()

    claims = jwt.decode(grant["token"], API_SECRET, algorithms=["HS256"])
    assert claims["iss"] == API_KEY
    assert claims["sub"] == grant["identity"]
    assert grant["identity"].startswith("web-")
    assert second["identity"] != grant["identity"]
    assert grant["room"] == "web-support-42"
    assert grant["url"] == "ws://localhost:7880"
    # join this one room; publish microphone, camera and screen share only; no admin, create,
    # list, record, metadata update or agent grant
    assert claims["video"] == {
        "roomJoin": True,
        "room": "web-support-42",
        "canPublish": True,
        "canSubscribe": True,
        "canPublishData": True,
        "canPublishSources": ["microphone", "camera", "screen_share"],
    }
    assert claims["exp"] - claims["nbf"] == 3600
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(grant["token"], "another-secret-of-enough-length-0123", algorithms=["HS256"])

    issued = [r for r in caplog.records if r.getMessage() == "token issued"]
    assert [(r.room, r.client) for r in issued] == [("web-support-42", "127.0.0.1")] * 2  # type: ignore[attr-defined]
    for record in caplog.records:
        assert grant["token"] not in repr(vars(record))
        assert second["token"] not in repr(vars(record))


def test_tokens_live_at_most_an_hour_and_publish_only_media() -> None:
    with pytest.raises(ValueError, match="at most one hour"):
        WebOptions(token_ttl=timedelta(hours=2))
    assert set(PUBLISH_SOURCES) == {"microphone", "camera", "screen_share"}


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"LIVEKIT_API_KEY": API_KEY}, "LIVEKIT_API_SECRET is not set"),
        ({}, "LIVEKIT_API_KEY and LIVEKIT_API_SECRET are not set"),
    ],
)
async def test_without_the_key_pair_no_token_and_a_clear_message(
    env: dict[str, str], missing: str
) -> None:
    async with serving(create_app(settings(**env))) as url, aiohttp.ClientSession() as http:
        response = await post_token(http, url, {"room": "web-r"})
        assert response.status == 503
        body = await response.json()
        config = await (await http.get(f"{url}/api/config")).json()
    assert missing in body["error"]
    assert "token" not in body
    assert config["tokens"] is False


# --- Host and Origin --------------------------------------------------------------------------

ROUTES = ("/", "/static/app.js", "/api/config", "/nowhere")


async def test_a_hostile_host_header_gets_403_on_every_route() -> None:
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 reaches this
    server with ``Host: evil.example`` (and, being same-origin to itself, no Origin check
    helps). Every route refuses it; the hosts the server serves are answered."""
    app = create_app(with_keys(WEB_ALLOWED_HOSTS="voice.example.org, 10.0.0.5"))
    async with serving(app) as url, aiohttp.ClientSession() as http:
        port = url.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]"):
            for path in ROUTES:
                response = await http.get(url + path, headers={"Host": host})
                assert response.status == 403, (host, path)
                assert "WEB_ALLOWED_HOSTS" in (await response.json())["error"]
            token = await post_token(http, url, {"room": "web-a"}, Host=host)
            assert token.status == 403, host
            assert "token" not in await token.json()
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            "LOCALHOST",
            f"[::1]:{port}",
            "voice.example.org",
            f"10.0.0.5:{port}",
        ):
            assert (await http.get(url + "/api/config", headers={"Host": host})).status == 200
            assert (await post_token(http, url, {"room": "web-a"}, Host=host)).status == 200


async def test_the_bind_address_is_served_but_a_wildcard_is_no_host_name() -> None:
    async with aiohttp.ClientSession() as http:
        app = create_app(with_keys(), WebOptions(host="192.168.7.7"))
        async with serving(app) as url:
            response = await http.get(url + "/api/config", headers={"Host": "192.168.7.7:80"})
            assert response.status == 200
        async with serving(create_app(with_keys(), WebOptions(host="0.0.0.0"))) as url:
            assert (await http.get(url + "/", headers={"Host": "0.0.0.0"})).status == 403


async def test_a_token_request_from_another_origin_gets_403() -> None:
    async with serving(create_app(with_keys())) as url, aiohttp.ClientSession() as http:
        for origin in ("https://evil.example", "null", "http://localhost.evil.example:80"):
            response = await post_token(http, url, {"room": "web-a"}, Origin=origin)
            assert response.status == 403, origin
            assert "another web site" in (await response.json())["error"]
        # the page itself (same origin), and clients that send no Origin (scripts, curl)
        assert (await post_token(http, url, {"room": "web-a"}, Origin=url)).status == 200
        assert (await post_token(http, url, {"room": "web-a"})).status == 200


# --- rooms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("room", "status", "message"),
    [
        ("support-42", 403, "starts with 'web-' (WEB_ROOM_PREFIX)"),  # someone else's call
        ("Web-support", 403, "starts with 'web-'"),
        ("", 403, "room: 1 to 128 characters"),
        ("web-" + "x" * 125, 403, "room: 1 to 128 characters"),
        ("web-a b", 403, "only letters, digits, '_' and '-'"),
        ("web-a\nb", 403, "only letters, digits, '_' and '-'"),
        ("web-ä", 403, "only letters, digits, '_' and '-'"),
        ("web-../x", 403, "only letters, digits, '_' and '-'"),
        (42, 400, "room: give a room name"),
        (None, 400, "room: give a room name"),
    ],
)
async def test_a_foreign_or_malformed_room_gets_no_token(
    room: Any, status: int, message: str
) -> None:
    async with serving(create_app(with_keys())) as url, aiohttp.ClientSession() as http:
        response = await post_token(http, url, {"room": room})
        body = await response.json()
    assert response.status == status
    assert message in body["error"]
    assert "token" not in body


async def test_the_room_prefix_is_configurable_and_told_to_the_page() -> None:
    app = create_app(with_keys(WEB_ROOM_PREFIX="kiosk_"))
    async with serving(app) as url, aiohttp.ClientSession() as http:
        assert (await (await http.get(f"{url}/api/config")).json())["room_prefix"] == "kiosk_"
        assert (await post_token(http, url, {"room": "kiosk_" + "x" * 122})).status == 200
        assert (await post_token(http, url, {"room": "web-a"})).status == 403
        assert (await post_token(http, url, ["room"])).status == 400
        # a form post (what another web site could make a visitor's browser send) is refused
        form = await http.post(f"{url}/api/token", data={"room": "kiosk_a"})
        assert form.status == 415


# --- rate limit and access token ----------------------------------------------------------------


async def test_a_burst_of_30_token_requests_gets_10_tokens_then_429() -> None:
    async with serving(create_app(with_keys())) as url, aiohttp.ClientSession() as http:
        responses = [await post_token(http, url, {"room": f"web-r{i}"}) for i in range(30)]
        statuses = [r.status for r in responses]
        bodies = [await r.json() for r in responses]
        # the page and its config stay reachable
        assert (await http.get(f"{url}/api/config")).status == 200
    assert statuses == [200] * 10 + [429] * 20
    for response, body in zip(responses[10:], bodies[10:], strict=True):
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert "at most 10 token requests per minute" in body["error"]
        assert "token" not in body


async def test_with_an_access_token_only_its_bearer_gets_tokens() -> None:
    app = create_app(with_keys(WEB_ACCESS_TOKEN=ACCESS_TOKEN))
    async with serving(app) as url, aiohttp.ClientSession() as http:
        for auth in (None, "Bearer wrong-token-0123456789", f"Basic {ACCESS_TOKEN}", "Bearer"):
            headers = {"Authorization": auth} if auth else {}
            response = await post_token(http, url, {"room": "web-a"}, **headers)
            assert response.status == 401, auth
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert ACCESS_TOKEN not in await response.text()
        ok = await post_token(http, url, {"room": "web-a"}, Authorization=f"Bearer {ACCESS_TOKEN}")
        assert ok.status == 200
        config = await http.get(f"{url}/api/config")  # the page loads without it
        assert ACCESS_TOKEN not in await config.text()


async def run_web(tmp_path: Path, *args: str, **env: str) -> tuple[int | None, str]:
    """``python -m worker web ARGS`` of this checkout, in a directory without a .env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "WEB_"))}
    code = "import sys; from worker.web import web_command; web_command(sys.argv[1:])"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args,
        cwd=tmp_path, env={**base, "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:  # it started serving instead of refusing
            proc.kill()
            await proc.wait()
    return proc.returncode, err.decode()


async def test_off_loopback_the_server_refuses_to_start_without_an_access_token(
    tmp_path: Path,
) -> None:
    code, err = await run_web(tmp_path, "--host", "0.0.0.0", "--port", "0")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: WEB_ACCESS_TOKEN: is not set (required to listen on 0.0.0.0, which is not a "
        "loopback address: anyone who reaches it could get tokens)"
    ]
    short = "short-secret"
    code, err = await run_web(tmp_path, "--host", "0.0.0.0", WEB_ACCESS_TOKEN=short)
    assert code == 2
    assert err.strip() == "error: WEB_ACCESS_TOKEN: must be at least 16 characters long"
    assert short not in err
