"""``python -m worker web``: the browser client and a development token endpoint.

Serves the page built from ``web/`` (committed in ``worker/static/``, so nothing is built at run
time) and two small JSON endpoints:

- ``GET /api/config``: what the page needs to know (LiveKit URL, metrics topic, whether tokens
  are handed out, the agent name for explicit dispatch, the room name prefix). Never a key or
  secret.
- ``POST /api/token`` with ``{"room": "NAME"}``: a join token for that one room and a random
  identity (``web-<hex>``), minted with ``worker.livekit_api.mint_token``. Only when
  ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` are set; otherwise 503 with a message saying so.

Whoever reaches this server can get tokens, so it guards them (docs/security.md):

- every route answers only for the hosts it serves (the bind address, ``localhost``,
  ``127.0.0.1``, ``[::1]``, ``WEB_ALLOWED_HOSTS``): another Host header gets 403, which stops
  DNS rebinding (a web page whose own domain resolves to 127.0.0.1);
- a token request carrying an ``Origin`` must come from one of those hosts (403 otherwise);
- tokens only for rooms named ``WEB_ROOM_PREFIX`` + letters, digits, ``_``, ``-`` (at most 128
  characters), so other rooms of the LiveKit project stay out of reach (403);
- ``WEB_ACCESS_TOKEN``, when set, must come as ``Authorization: Bearer ...`` (401 otherwise);
  the server refuses to listen off loopback without one;
- at most 10 token requests per minute per client address (429 with ``Retry-After``);
- the token joins that one room, publishes only microphone, camera and screen share, and lives
  at most one hour; each one issued is logged with the client address and the room.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from worker.config import ConfigError, Settings, load_settings, normalise_host, usage_error
from worker.livekit_api import mint_token
from worker.logs import setup_logs
from worker.rate_limit import RateLimit
from worker.redaction import install_log_redaction

logger = logging.getLogger("worker.web")

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
MAX_ROOM_NAME: Final = 128
MAX_BODY_BYTES: Final = 4096
MAX_TOKEN_TTL: Final = timedelta(hours=1)
LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})
PUBLISH_SOURCES: Final = ("microphone", "camera", "screen_share")
"""What a browser may publish with a token of this server (livekit TrackSource names)."""
_ROOM_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")

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
    token_ttl: timedelta = MAX_TOKEN_TTL
    static_dir: Path = STATIC_DIR
    tokens_per_minute: int = 10
    """Token requests per client address per minute; more get 429."""

    def __post_init__(self) -> None:
        if not timedelta(0) < self.token_ttl <= MAX_TOKEN_TTL:
            raise ValueError("token_ttl: more than 0 and at most one hour")


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


def room_name_problem(room: object, prefix: str) -> tuple[int, str] | None:
    """Why no token is handed out for ``room`` (HTTP status, message), or None."""
    if not isinstance(room, str):
        return 400, "room: give a room name"
    if not 1 <= len(room) <= MAX_ROOM_NAME:
        return 403, f"room: 1 to {MAX_ROOM_NAME} characters"
    if not _ROOM_RE.match(room):
        return 403, "room: only letters, digits, '_' and '-'"
    if not room.startswith(prefix):
        return 403, (
            f"room: this server hands out tokens only for rooms whose name starts with "
            f"{prefix!r} (WEB_ROOM_PREFIX)"
        )
    return None


def allowed_hosts(settings: Settings, options: WebOptions) -> frozenset[str]:
    """The Host names this server answers for: loopback, the bind address unless it is a
    wildcard (0.0.0.0 or ::, which no one types), and WEB_ALLOWED_HOSTS."""
    hosts = set(LOOPBACK_HOSTS) | set(settings.web_allowed_hosts)
    bound = normalise_host(options.host)
    if bound is not None and bound not in ("0.0.0.0", "[::]"):
        hosts.add(bound)
    return frozenset(hosts)


def host_of(authority: str) -> str | None:
    """The host of a ``Host`` header or URL authority (``name:port``, ``[::1]:port``)."""
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = (authority[: end + 1], authority[end + 1 :]) if end > 0 else ("", "")
    else:
        host, colon, port = authority.partition(":")
        rest = colon + port
    if not host or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
        return None
    return normalise_host(host)


def origin_host(origin: str) -> str | None:
    """The host of an ``Origin`` header (``null`` and non-web schemes: None)."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
        return None
    return host_of(parts.netloc)


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": message}, status=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


def host_check(hosts: frozenset[str]) -> Middleware:
    """Middleware: 403 on every route for a Host this server does not serve."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = host_of(request.headers.get("Host", ""))
        if host not in hosts:
            logger.debug("request refused: Host", extra={"client": request.remote})
            return _json_error(
                403, "this server does not answer for that Host (see WEB_ALLOWED_HOSTS)"
            )
        return await handler(request)

    return check


class _Handlers:
    def __init__(self, settings: Settings, options: WebOptions) -> None:
        self._settings = settings
        self._options = options
        self._hosts = allowed_hosts(settings, options)
        self._limit = RateLimit(options.tokens_per_minute, 60.0)

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
                "room_prefix": s.web_room_prefix,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def token(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin_host(origin) not in self._hosts:
            # Another web site making a visitor's browser ask (a JSON POST would also need a
            # CORS preflight, which this server never allows; this holds even without it).
            return _json_error(403, "token requests from another web site are refused")
        client = request.remote or ""
        wait = self._limit.acquire(client)
        if wait is not None:
            return _json_error(
                429,
                f"at most {self._limit.limit} token requests per minute: try again later",
                {"Retry-After": RateLimit.retry_after_header(wait)},
            )
        if not self._authorised(request):
            return _json_error(
                401,
                "this server needs its access token (WEB_ACCESS_TOKEN) as a Bearer token",
                {"WWW-Authenticate": 'Bearer realm="token"'},
            )
        if not tokens_enabled(self._settings):
            return _json_error(503, tokens_disabled_reason(self._settings))
        if request.content_type != "application/json":
            return _json_error(415, 'send JSON: {"room": "NAME"}')
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _json_error(413, "request too large")
        try:
            body: Any = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json_error(400, 'send JSON: {"room": "NAME"}')
        room = body.get("room") if isinstance(body, dict) else None
        problem = room_name_problem(room, self._settings.web_room_prefix)
        if problem is not None:
            return _json_error(*problem)
        assert isinstance(room, str)
        identity = f"web-{secrets.token_hex(4)}"
        jwt = await asyncio.to_thread(
            mint_token,
            self._settings,
            room,
            identity,
            self._options.token_ttl,
            sources=PUBLISH_SOURCES,
        )
        logger.info("token issued", extra={"room": room, "identity": identity, "client": client})
        return web.json_response(
            {
                "url": self._settings.livekit_url,
                "token": jwt,
                "room": room,
                "identity": identity,
            },
            headers={"Cache-Control": "no-store"},
        )

    def _authorised(self, request: web.Request) -> bool:
        expected = self._settings.web_access_token
        if not expected:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), expected.reveal().encode()
        )


def create_app(settings: Settings, options: WebOptions | None = None) -> web.Application:
    """The web application: the page, its two files, /api/config and /api/token."""
    options = options or WebOptions()
    handlers = _Handlers(settings, options)
    app = web.Application(
        client_max_size=MAX_BODY_BYTES, middlewares=[host_check(allowed_hosts(settings, options))]
    )
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
    else:
        if not _is_loopback(args.host) and not settings.web_access_token:
            problems.append(
                f"WEB_ACCESS_TOKEN: is not set (required to listen on {args.host}, which is "
                "not a loopback address: anyone who reaches it could get tokens)"
            )
    if problems:
        usage_error(problems)
    install_log_redaction(settings.secrets())
    setup_logs(settings.log_format, logging.INFO)
    if not tokens_enabled(settings):
        print(f"note: {tokens_disabled_reason(settings)}; the page cannot connect.", flush=True)
    try:
        asyncio.run(serve(settings, WebOptions(host=args.host, port=args.port)))
    except OSError as e:
        usage_error([f"cannot listen on {args.host}:{args.port}: {e.strerror or e}"])
    except KeyboardInterrupt:
        pass
