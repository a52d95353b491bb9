"""``python -m worker web``: the browser client and a development token endpoint.

Serves the page built from ``web/`` (committed in ``worker/static/``, so nothing is built at run
time) and two small JSON endpoints:

- ``GET /api/config``: what the page needs to know (LiveKit URL, metrics topic, whether tokens
  are handed out, the agent name for explicit dispatch). Never a key or secret.
- ``POST /api/token`` with ``{"room": "NAME"}``: a join token for that one room and a random
  identity (``web-<hex>``), minted with ``worker.livekit_api.mint_token`` (join, publish, subscribe,
  publish data; nothing else). Only when ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` are
  set; otherwise 503 with a message saying so. Anyone who can reach the port can get a token,
  so the server listens on 127.0.0.1 unless told otherwise: it is for development.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from worker.config import ConfigError, Settings, load_settings, usage_error
from worker.livekit_api import mint_token
from worker.redaction import install_log_redaction

logger = logging.getLogger("worker.web")

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
MAX_ROOM_NAME: Final = 128
MAX_BODY_BYTES: Final = 4096

# The page loads only its own files; it talks to this server and to the LiveKit server
# (any ws/wss/http/https origin, since LIVEKIT_URL can be anything).
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self' ws: wss: http: https:",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_STATIC_FILES: Final = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}


@dataclass(frozen=True)
class WebOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    token_ttl: timedelta = timedelta(hours=1)
    static_dir: Path = STATIC_DIR


def tokens_enabled(settings: Settings) -> bool:
    return bool(settings.livekit_api_key) and bool(settings.livekit_api_secret)


def tokens_disabled_reason(settings: Settings) -> str:
    missing = [
        name
        for name, value in (
            ("LIVEKIT_API_KEY", settings.livekit_api_key),
            ("LIVEKIT_API_SECRET", settings.livekit_api_secret),
        )
        if not value
    ]
    return (
        f"this server hands out no tokens: {' and '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not set for `python -m worker web`"
    )


def room_name_problem(room: object) -> str | None:
    """Why ``room`` is not an acceptable room name, or None."""
    if not isinstance(room, str) or not room.strip():
        return "room: give a room name"
    if len(room) > MAX_ROOM_NAME:
        return f"room: at most {MAX_ROOM_NAME} characters"
    if any(not ch.isprintable() for ch in room):
        return "room: no control characters"
    return None


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"error": message}, status=status, headers={"Cache-Control": "no-store"}
    )


class _Handlers:
    def __init__(self, settings: Settings, options: WebOptions) -> None:
        self._settings = settings
        self._options = options

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html", "text/html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC_FILES:
            raise web.HTTPNotFound()
        return self._file(name, _STATIC_FILES[name])

    def _file(self, name: str, content_type: str) -> web.StreamResponse:
        path = self._options.static_dir / name
        if not path.is_file():
            return _json_error(
                500,
                f"the page is not built ({name} missing): run `npm ci && npm run build` in web/",
            )
        response = web.FileResponse(path, headers=_PAGE_HEADERS)
        response.content_type = content_type
        response.charset = "utf-8"
        return response

    async def config(self, request: web.Request) -> web.Response:
        s = self._settings
        return web.json_response(
            {
                "livekit_url": s.livekit_url,
                "metrics_topic": s.metrics_topic,
                "tokens": tokens_enabled(s),
                "agent_name": s.agent_name,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def token(self, request: web.Request) -> web.Response:

        if not tokens_enabled(self._settings):
            return _json_error(503, tokens_disabled_reason(self._settings))
        if request.content_type != "application/json":
            # Also keeps other web sites from minting tokens through a visitor's browser:
            # a cross-origin JSON POST needs a CORS preflight, which this server never allows.
            return _json_error(415, 'send JSON: {"room": "NAME"}')
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _json_error(413, "request too large")
        try:
            body: Any = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json_error(400, 'send JSON: {"room": "NAME"}')
        room = body.get("room") if isinstance(body, dict) else None
        problem = room_name_problem(room)
        if problem is not None:
            return _json_error(400, problem)
        assert isinstance(room, str)
        room = room.strip()
        identity = f"web-{secrets.token_hex(4)}"
        jwt = await asyncio.to_thread(
            mint_token, self._settings, room, identity, self._options.token_ttl
        )
        logger.info("token issued", extra={"room": room, "identity": identity})
        return web.json_response(
            {
                "url": self._settings.livekit_url,
                "token": jwt,
                "room": room,
                "identity": identity,
            },
            headers={"Cache-Control": "no-store"},
        )


def create_app(settings: Settings, options: WebOptions | None = None) -> web.Application:
    """The web application: the page, its two files, /api/config and /api/token."""
    handlers = _Handlers(settings, options or WebOptions())
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/", handlers.index)
    app.router.add_get("/static/{name}", handlers.static)
    app.router.add_get("/api/config", handlers.config)
    app.router.add_post("/api/token", handlers.token)
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(settings: Settings, options: WebOptions) -> None:
    """Run until cancelled (Ctrl-C) or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):  # not on Windows
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    runner = web.AppRunner(create_app(settings, options), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        await site.start()
        shown_host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
        port = runner.addresses[0][1] if runner.addresses else options.port
        print(f"Open http://{shown_host}:{port}/ in a browser (Ctrl-C to stop).", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def web_command(argv: list[str]) -> None:
    """``python -m worker web [--port 8080] [--host 127.0.0.1]``."""
    parser = argparse.ArgumentParser(
        prog="python -m worker web",
        description="serve the browser client and a development token endpoint",
    )
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    args = parser.parse_args(argv)
    problems = []
    if not 0 <= args.port <= 65535:
        problems.append("--port: must be between 0 and 65535")
    if not (STATIC_DIR / "app.js").is_file():
        problems.append(
            "the page bundle worker/static/app.js is missing: run `npm ci && npm run build` in web/"
        )
    try:
        settings = load_settings()
    except ConfigError as e:
        problems.extend(e.problems)
    if problems:
        usage_error(problems)
    install_log_redaction(settings.secrets())
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not tokens_enabled(settings):
        print(f"note: {tokens_disabled_reason(settings)}; the page cannot connect.", flush=True)
    elif not _is_loopback(args.host):
        print(
            f"warning: anyone who can reach {args.host}:{args.port} can get a join token "
            "for any room of this LiveKit project.",
            file=sys.stderr,
            flush=True,
        )
    try:
        asyncio.run(serve(settings, WebOptions(host=args.host, port=args.port)))
    except OSError as e:
        usage_error([f"cannot listen on {args.host}:{args.port}: {e.strerror or e}"])
    except KeyboardInterrupt:
        pass
