"""The web client (``python -m worker web``): the token endpoint, the served page, and the page
itself in headless Chromium driven over the Chrome DevTools protocol (aiohttp websocket).

The metrics the page renders are the bytes the worker really publishes: ``SessionMetrics``
fed with framework metric objects and turn observations, sent through ``RoomSink`` into the
in-process room. No LiveKit server exists here: connecting is tested up to its errors (an
unreachable server, a server that refuses the token), never to a live room.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from livekit.agents.metrics import (
    PipelineEOUMetrics,
    PipelineLLMMetrics,
    PipelineSTTMetrics,
    PipelineTTSMetrics,
    PipelineVADMetrics,
)
from livekit.protocol import models

from tests.conftest import _describe_error, _known_plugin_error, build_harness
from tests.loopback.openai_server import Reply
from worker.config import Settings, load_settings
from worker.local_room import LocalRoom
from worker.local_room.outbox import SentTranscription
from worker.metrics.collector import MetricsOptions, RoomSink, SessionMetrics
from worker.web import STATIC_DIR, create_app

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
API_KEY = "web-test-key"
API_SECRET = "web-test-secret-0123456789abcdef0123456789"
TOPIC = "agent.metrics"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",  # a fake microphone and camera exist...
    "--remote-debugging-port=0",
    "--window-size=1280,900",
]  # ...but no permission prompt is auto-accepted: each test grants or denies


def settings(**env: str) -> Settings:
    return load_settings(env, dotenv=None)


def with_keys(**env: str) -> Settings:
    return settings(LIVEKIT_API_KEY=API_KEY, LIVEKIT_API_SECRET=API_SECRET, **env)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``worker.web.create_app`` on a loopback port."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self.url = ""

    async def start(self) -> Server:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[Server]:
    server = await Server(app).start()
    try:
        yield server
    finally:
        await server.stop()


# --- the served page (the token endpoint: tests/test_web_security.py) ---------------------


async def test_the_page_and_its_files_never_carry_a_secret() -> None:
    s = with_keys(LIVEKIT_URL="wss://example.livekit.cloud", AGENT_NAME="alice")
    async with serving(create_app(s)) as server, aiohttp.ClientSession() as http:
        bodies = {}
        for path in ("/", "/static/app.js", "/static/style.css", "/api/config"):
            response = await http.get(server.url + path)
            assert response.status == 200, path
            bodies[path] = await response.text()
        page = await http.get(server.url + "/")
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert page.content_type == "text/html"
        for path in ("/static/web.py", "/static/..%2Fweb.py", "/static/index.html.bak"):
            assert (await http.get(server.url + path)).status == 404, path
    for path, text in bodies.items():
        assert API_SECRET not in text, path
        assert API_KEY not in text, path
    assert json.loads(bodies["/api/config"]) == {
        "livekit_url": "wss://example.livekit.cloud",
        "metrics_topic": "agent.metrics",
        "tokens": True,
        "agent_name": "alice",
        "room_prefix": "web-",
    }


def test_the_built_page_matches_its_sources(tmp_path: Path) -> None:
    """worker/static/app.js is the committed build of web/src: rebuilt and compared (node and
    `npm ci` in web/ are part of the test setup: .ci/run installs them)."""
    assert (STATIC_DIR / "app.js").stat().st_size > 100_000  # livekit-client is bundled in
    node = shutil.which("node")
    assert node is not None, "node is not installed (apt-get install nodejs npm)"
    assert (ROOT / "web" / "node_modules" / "esbuild").is_dir(), "run `npm ci` in web/"
    subprocess.run(
        [node, str(ROOT / "web" / "build.mjs"), "--outdir", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (tmp_path / "app.js").read_bytes() == (STATIC_DIR / "app.js").read_bytes(), (
        "worker/static/app.js is stale: run `npm run build` in web/"
    )


async def test_web_command_serves_until_interrupted_and_refuses_bad_arguments(
    tmp_path: Path,
) -> None:
    code = "import sys; from worker.web import web_command; web_command(sys.argv[1:])"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, "--port", "70000",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(bad.communicate(), 60)
    assert bad.returncode == 2
    assert err.decode().strip() == "error: --port: must be between 0 and 65535"

    for stop in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a container stopping
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, "--port", "0",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            lines: list[str] = []
            while not (lines and lines[-1].startswith("Open http://")):
                line = await asyncio.wait_for(proc.stdout.readline(), 60)
                assert line, f"exited early: {lines}"
                lines.append(line.decode())
            assert "LIVEKIT_API_KEY and LIVEKIT_API_SECRET are not set" in lines[0]
            url = lines[-1].split()[1]
            async with aiohttp.ClientSession() as http:
                assert "<title>Voice agent</title>" in await (await http.get(url)).text()
            proc.send_signal(stop)
            _, err = await asyncio.wait_for(proc.communicate(), 90)
            assert proc.returncode == 0, stop
            assert b"Traceback" not in err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# --- recorded metrics: what the worker publishes ---------------------------------------------


@dataclass(frozen=True)
class ReplyScript:
    """One agent reply, as the session observes it (seconds after the user stopped)."""

    sequence_id: str
    user_turn: bool  # False: a greeting (no end of speech, so e2e is null)
    eou_delay: float
    llm_ttfts: tuple[float, ...]  # one per LLM round
    tool_rounds: tuple[float, ...]
    first_text: float
    first_audio: float
    prompt_tokens: int
    completion_tokens: int
    characters: int
    interrupted: bool = False


REPLIES = [
    ReplyScript("SH_greet", False, 0.0, (0.2811,), (), 0.3410, 0.5123, 180, 12, 41),
    ReplyScript("SH_a1", True, 0.5902, (0.3021,), (), 0.9534, 1.2147, 236, 27, 86),
    ReplyScript("SH_b2", True, 0.6117, (0.2914, 0.3388), (1.0042,), 1.8861, 2.1013, 412, 31, 97),
    ReplyScript("SH_c3", True, 0.5734, (0.4102,), (), 1.0876, 1.3391, 520, 19, 54, True),
    ReplyScript("SH_d4", True, 0.6385, (0.2733,), (0.4127, 0.2219), 1.7442, 1.9808, 611, 22, 70),
    ReplyScript("SH_e5", True, 0.5488, (0.3307,), (), 0.9902, 1.2265, 690, 25, 81),
]


async def recorded_metrics(replies: list[ReplyScript] = REPLIES) -> list[bytes]:
    """The data messages ``SessionMetrics`` publishes into the in-process room for ``replies``."""
    room = LocalRoom()
    try:
        metrics = SessionMetrics([RoomSink(room.local_participant)], MetricsOptions(topic=TOPIC))
        metrics.start()
        base, ts = 1000.0, 1_795_675_248.0
        for i, r in enumerate(replies):
            t0, ts = base + 10 * i, ts + 10
            stt = PipelineSTTMetrics(
                request_id=f"stt-{i}", timestamp=ts, duration=2.1, label="deepgram.STT",
                audio_duration=1.6 + 0.1 * i, streamed=True, error=None,
            )  # fmt: skip
            metrics.collect(stt)
            if r.user_turn:
                metrics.turns.user_stopped_speaking(t0)
                eou = PipelineEOUMetrics(
                    sequence_id=r.sequence_id, timestamp=ts,
                    end_of_utterance_delay=r.eou_delay, transcription_delay=0.18,
                )  # fmt: skip
                metrics.collect(eou)
            for n, ttft in enumerate(r.llm_ttfts):
                metrics.collect(
                    PipelineLLMMetrics(
                        request_id=f"llm-{i}-{n}",
                        timestamp=ts,
                        ttft=ttft,
                        duration=ttft + 0.4,
                        label="plugins.openai_llm.LLM",
                        cancelled=False,
                        completion_tokens=r.completion_tokens if n == 0 else 0,
                        prompt_tokens=r.prompt_tokens if n == 0 else 0,
                        total_tokens=0,
                        tokens_per_second=40.0,
                        error=None,
                        sequence_id=r.sequence_id,
                    )
                )
            for seconds in r.tool_rounds:
                metrics.turns.tool_round(r.sequence_id, seconds)
            metrics.turns.first_text(r.sequence_id, t0 + r.first_text)
            metrics.collect(
                PipelineTTSMetrics(
                    request_id=f"tts-{i}",
                    timestamp=ts,
                    ttfb=r.first_audio + 0.4,
                    duration=1.5,
                    audio_duration=3.2,
                    cancelled=False,
                    characters_count=r.characters,
                    label="deepgram.TTS",
                    streamed=True,
                    error=None,
                    sequence_id=r.sequence_id,
                )
            )
            metrics.turns.first_audio(r.sequence_id, t0 + r.first_audio)
            metrics.turns.reply_finished(r.sequence_id, r.interrupted)
            vad = PipelineVADMetrics(
                timestamp=ts, idle_time=0.4, inference_duration_total=0.04,
                inference_count=31, label="silero.VAD",
            )  # fmt: skip
            metrics.collect(vad)
        await metrics.aclose()
        return [d.payload for d in room.outbox.data_on(TOPIC)]
    finally:
        await room.aclose()


def js_ms(value: float | None) -> str:
    """How the page writes a duration (Math.round of milliseconds)."""
    return "\u2013" if value is None else f"{math.floor(value * 1000 + 0.5)} ms"


# --- headless Chromium over the DevTools protocol --------------------------------------------


class CdpError(Exception):
    pass


class Cdp:
    """One browser websocket; page sessions are multiplexed on it (flattened sessions)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read(), name="test:cdp-reader")

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id", -1), None)
            if fut is None:
                self.events.append(data)
            elif not fut.done():
                if "error" in data:
                    fut.set_exception(CdpError(f"{data['error']}"))
                else:
                    fut.set_result(data.get("result", {}))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CdpError("browser connection closed"))

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self._ws.send_str(json.dumps(message))
        return await asyncio.wait_for(fut, 60)

    async def aclose(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class Page:
    """One tab in its own browser context (fresh permissions and storage)."""

    def __init__(self, cdp: Cdp, session: str, context: str) -> None:
        self.cdp, self.session, self.context = cdp, session, context

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.cdp.call(method, params, self.session)

    async def eval(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(details.get("exception", {}).get("description") or details["text"])
        return result["result"].get("value")

    async def wait_for(self, condition: str, timeout: float = 30.0) -> Any:
        """Wait (in the page) until the JS expression ``condition`` is truthy; return it."""
        return await self.eval(
            f"""new Promise((resolve, reject) => {{
              const end = performance.now() + {timeout * 1000};
              const poll = () => {{
                let value;
                try {{ value = ({condition}); }} catch (e) {{ value = undefined; }}
                if (value) return resolve(value);
                if (performance.now() > end) {{
                  return reject(new Error("timed out: " + {json.dumps(condition)}));
                }}
                setTimeout(poll, 25);
              }};
              poll();
            }})"""
        )

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", {"url": url})
        await self.wait_for("document.body && document.body.dataset.ready === 'true'")

    async def click(self, element_id: str) -> None:
        await self.eval(f"document.getElementById({json.dumps(element_id)}).click()")

    async def text(self, element_id: str) -> str:
        return str(
            await self.eval(f"document.getElementById({json.dumps(element_id)}).textContent")
        )

    async def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call(
                "Input.dispatchKeyEvent",
                {"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
                | ({"text": "\r"} if kind == "keyDown" else {}),
            )

    async def set_permission(self, name: str, setting: str, origin: str) -> None:
        await self.cdp.call(
            "Browser.setPermission",
            {
                "permission": {"name": name},
                "setting": setting,
                "origin": origin,
                "browserContextId": self.context,
            },
        )

    async def screenshot(self, path: Path, width: int, mobile: bool = False) -> None:
        """A full-page PNG at ``width`` CSS pixels."""
        metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": mobile}
        await self.call("Emulation.setDeviceMetricsOverride", metrics)
        await self.call("Emulation.setScrollbarsHidden", {"hidden": True})
        height = await self.eval("document.documentElement.scrollHeight")
        await self.call("Emulation.setDeviceMetricsOverride", metrics | {"height": height})
        await self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        shot = await self.call("Page.captureScreenshot", {"format": "png"})
        await asyncio.to_thread(save, path, base64.b64decode(shot["data"]))

    def exceptions(self) -> list[str]:
        return [
            e["params"]["exceptionDetails"].get("exception", {}).get("description", "")
            or e["params"]["exceptionDetails"]["text"]
            for e in self.cdp.events
            if e.get("sessionId") == self.session and e.get("method") == "Runtime.exceptionThrown"
        ]


class Browser:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        http: aiohttp.ClientSession,
        cdp: Cdp,
        drain: asyncio.Task[None],
    ) -> None:
        self.proc, self._http, self.cdp, self._drain = proc, http, cdp, drain

    @classmethod
    async def launch(cls, user_data_dir: Path) -> Browser:
        assert CHROMIUM is not None
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        ws_url = ""
        async with asyncio.timeout(60):
            while not ws_url:
                line = (await proc.stderr.readline()).decode()
                if not line:
                    raise RuntimeError("chromium exited before its DevTools endpoint was up")
                if line.startswith("DevTools listening on "):
                    ws_url = line.split()[-1]

        async def drain() -> None:  # keep reading so chromium never blocks on a full pipe
            assert proc.stderr is not None
            while await proc.stderr.readline():
                pass

        http = aiohttp.ClientSession()
        ws = await http.ws_connect(ws_url, max_msg_size=0)
        return cls(proc, http, Cdp(ws), asyncio.create_task(drain(), name="test:chromium-stderr"))

    async def new_page(self) -> Page:
        context = (await self.cdp.call("Target.createBrowserContext"))["browserContextId"]
        target = await self.cdp.call(
            "Target.createTarget", {"url": "about:blank", "browserContextId": context}
        )
        attached = await self.cdp.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self.cdp, attached["sessionId"], context)
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        return page

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.cdp.call("Browser.close")
        await self.cdp.aclose()
        await self._http.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._drain.cancel()
        await asyncio.gather(self._drain, return_exceptions=True)


def _need_chromium() -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    _need_chromium()
    b = await Browser.launch(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    await b.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    p = await browser.new_page()
    yield p
    await browser.cdp.call("Target.disposeBrowserContext", {"browserContextId": p.context})


browser_test = pytest.mark.asyncio(loop_scope="module")


# --- feeding the page's livekit-client Room what a LiveKit server would send ------------------
#
# No LiveKit server runs here, so the packets the server would forward are handed to the page's
# own Room (window.agentRoom) where its signalling and data channel code delivers them:
# ``handleDataPacket`` (a decoded DataPacket), ``handleTranscription`` and
# ``handleParticipantUpdates`` (ParticipantInfo, as in a ParticipantUpdate). livekit-client then
# builds its RemoteParticipant, transcription segments and attribute diffs and emits the Room
# events (DataReceived, TranscriptionReceived, ParticipantConnected,
# ParticipantAttributesChanged) the page subscribes to. A page that does not subscribe shows
# nothing.

AGENT_KIND = int(models.ParticipantInfo.Kind.AGENT)
ACTIVE = int(models.ParticipantInfo.State.ACTIVE)
RELIABLE = int(models.DataPacket.Kind.RELIABLE)

FEED_ROOM = """(async (events) => {
  const room = window.agentRoom, frame = () => new Promise((r) => requestAnimationFrame(r));
  const states = [];
  for (const e of events) {
    if (e.kind === 'joined') {
      room.localParticipant.identity = e.identity;  // what the join response sets
      room.state = 'connected';
    } else if (e.kind === 'data') {
      const payload = Uint8Array.from(atob(e.payload), (c) => c.charCodeAt(0));
      room.handleDataPacket({participantIdentity: e.from, kind: e.reliable,
        destinationIdentities: [], value: {case: 'user', value: {participantIdentity: e.from,
                                                                payload, topic: e.topic,
                                                                destinationIdentities: []}}});
    } else if (e.kind === 'transcription') {
      room.handleTranscription(undefined, {transcribedParticipantIdentity: e.identity,
        trackId: e.track, segments: e.segments.map((s) => ({...s, startTime: BigInt(s.startTime),
                                                              endTime: BigInt(s.endTime)}))});
    } else if (e.kind === 'participant') {
      room.handleParticipantUpdates([{sid: 'PA_' + e.identity, identity: e.identity, name: '',
        metadata: '', attributes: e.attributes, kind: e.participantKind, state: e.state,
        version: e.version, tracks: [], dataTracks: [], disconnectReason: 0}]);
      await frame();
      states.push(document.getElementById('agent-state').textContent);
    }
  }
  await frame();
  return states;
})"""


def joined(identity: str) -> dict[str, Any]:
    return {"kind": "joined", "identity": identity}


def data_packet(payload: bytes, topic: str = TOPIC, sender: str = "agent") -> dict[str, Any]:
    return {
        "kind": "data",
        "payload": base64.b64encode(payload).decode(),
        "topic": topic,
        "from": sender,
        "reliable": RELIABLE,
    }


def transcription_packet(sent: SentTranscription) -> dict[str, Any]:
    return {
        "kind": "transcription",
        "identity": sent.participant_identity,
        "track": sent.track_sid,
        "segments": [
            {
                "id": s.id,
                "text": s.text,
                "startTime": s.start_time,
                "endTime": s.end_time,
                "final": s.final,
                "language": s.language,
            }
            for s in sent.segments
        ],
    }


def participant_update(
    identity: str, attributes: dict[str, str], version: int, kind: int = AGENT_KIND
) -> dict[str, Any]:
    return {
        "kind": "participant",
        "identity": identity,
        "attributes": attributes,
        "version": version,
        "participantKind": kind,
        "state": ACTIVE,
    }


async def feed_room(page: Page, events: list[dict[str, Any]]) -> list[str]:
    """Deliver ``events`` to the page's Room in order; the agent-state badge's text after each
    participant update."""
    return list(await page.eval(f"{FEED_ROOM}({json.dumps(events)})"))


async def feed(page: Page, payloads: list[bytes], topic: str = TOPIC) -> None:
    """Data messages from the agent, as the Room receives them."""
    await feed_room(page, [data_packet(p, topic) for p in payloads])


READ_VIEW = """(() => {
  const text = (id) => document.getElementById(id).textContent;
  const rows = [...document.querySelectorAll('#turns-table tbody tr')].map((tr) =>
    [...tr.children].map((c) => c.textContent));
  const points = {};
  for (const p of document.querySelectorAll('#latency-chart .point')) {
    const s = p.parentNode.dataset.series;
    (points[s] ||= []).push([Number(p.dataset.turn), Number(p.dataset.value)]);
  }
  const ids = ['e2e-last', 'e2e-median', 'e2e-max', 'e2e-count', 'usage-prompt',
    'usage-completion', 'usage-tts', 'usage-stt', 'usage-turns', 'usage-duration',
    'usage-dropped', 'usage-source'];
  return {rows, points, text: Object.fromEntries(ids.map((id) => [id, text(id)]))};
})()"""


# --- the page in the browser -----------------------------------------------------------------


@browser_test
async def test_page_loads_labelled_and_fits_a_phone(page: Page) -> None:
    async with serving(create_app(with_keys())) as server:
        await page.open(server.url)
        assert await page.text("server-url") == "ws://localhost:7880"
        unlabelled = await page.eval(
            """[...document.querySelectorAll('input, select, button, meter, video')]
                 .filter((el) => !(el.labels?.length || el.getAttribute('aria-label')
                                   || el.textContent.trim()))
                 .map((el) => el.outerHTML)"""
        )
        assert unlabelled == []
        # keyboard: every control is reachable with Tab, in page order
        focusable = await page.eval(
            """[...document.querySelectorAll('input, select, button, [tabindex="0"]')]
                 .filter((el) => !el.disabled && el.offsetParent !== null && el.tabIndex >= 0)
                 .map((el) => el.id)"""
        )
        assert focusable[:3] == ["room-name", "connect", "mic-toggle"]
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
        widths = await page.eval("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1] == 390
        assert page.exceptions() == []


@browser_test
async def test_recorded_metrics_render_as_chart_table_and_usage(page: Page) -> None:
    messages = await recorded_metrics()
    payloads = [json.loads(m) for m in messages]
    turns = [p for p in payloads if p["type"] == "turn"]
    session = next(p for p in payloads if p["type"] == "session")
    assert len(turns) == len(REPLIES)

    async with serving(create_app(with_keys())) as server:
        await page.open(server.url)
        live, final = messages[:-1], messages[-1:]
        assert payloads[-1]["type"] == "session"
        await feed(page, live)
        view = await page.eval(READ_VIEW)

        # live usage: the page adds up the llm/tts/stt messages itself
        def total(kind: str, field: str) -> float:  # null: not measured (a later LLM round)
            return sum(p[field] or 0 for p in payloads if p["type"] == kind)

        assert view["text"]["usage-prompt"] == f"{total('llm', 'prompt_tokens'):,}"
        assert view["text"]["usage-completion"] == str(total("llm", "completion_tokens"))
        assert view["text"]["usage-tts"] == str(total("tts", "characters"))
        assert view["text"]["usage-stt"] == f"{total('stt', 'audio_duration'):.1f} s"
        assert view["text"]["usage-turns"] == "6 (1)"
        assert view["text"]["usage-source"].startswith("Live totals")

        # the chart: one point per measured value, at the payload's value
        series = {
            "e2e": "e2e_latency",
            "eou": "end_of_utterance_delay",
            "llm": "llm_ttft",
            "tts": "tts_ttfb",
            "tool": "tool_time",
        }
        for key, field in series.items():
            expected = [[n, t[field]] for n, t in enumerate(turns, 1) if t[field] is not None]
            assert sorted(view["points"][key]) == expected, key
        assert len(view["points"]["e2e"]) == 5  # the greeting has no e2e

        # the table, newest first, in milliseconds
        rows = [
            [str(n), *(js_ms(t[f]) for f in series.values())]
            for n, t in reversed(list(enumerate(turns, 1)))
        ]
        assert [r[:6] for r in view["rows"]] == rows
        notes = {r[0]: r[6] for r in view["rows"]}
        assert notes == {
            "1": "no user turn",
            "2": "",
            "3": "1 tool round",
            "4": "interrupted",
            "5": "2 tool rounds",
            "6": "",
        }
        e2e = sorted(t["e2e_latency"] for t in turns if t["e2e_latency"] is not None)
        assert view["text"]["e2e-last"] == js_ms(turns[-1]["e2e_latency"])
        assert view["text"]["e2e-median"] == js_ms(e2e[2])
        assert view["text"]["e2e-max"] == js_ms(e2e[-1])
        assert view["text"]["e2e-count"] == "6"

        # the session message's totals replace the live ones
        await feed(page, final)
        view = await page.eval(READ_VIEW)
        assert view["text"]["usage-prompt"] == f"{session['llm_prompt_tokens']:,}"
        assert view["text"]["usage-completion"] == str(session["llm_completion_tokens"])
        assert view["text"]["usage-tts"] == str(session["tts_characters"])
        assert view["text"]["usage-stt"] == f"{session['stt_audio_duration']:.1f} s"
        assert view["text"]["usage-turns"] == f"{session['turns']} ({session['interrupted_turns']})"
        assert view["text"]["usage-duration"] == f"{session['duration']:.1f} s"
        assert view["text"]["usage-source"].startswith("Final totals")

        # not ours: other topics, unknown schema versions, broken JSON; `dropped` is shown
        turn = json.dumps({"v": 1, "type": "turn", "ts": 1, "e2e_latency": 0.5}).encode()
        await feed(page, [turn], topic="chat")
        await feed(page, [turn.replace(b'"v": 1', b'"v": 2'), b'{"v":1,'])
        assert await page.text("e2e-count") == "6"
        stt = {"v": 1, "type": "stt", "ts": 1, "audio_duration": 0, "dropped": 3}
        await feed(page, [json.dumps(stt).encode()])
        assert await page.text("usage-dropped") == "3"
        assert await page.text("e2e-count") == "6"

        await page.eval("document.querySelector('details').open = true")
        await page.screenshot(ARTIFACTS / "web.png", 1280)
        await page.screenshot(ARTIFACTS / "web-phone.png", 390, mobile=True)
        width = await page.eval("document.documentElement.scrollWidth")
        assert width <= 390
        assert page.exceptions() == []


@dataclass(frozen=True)
class RecordedSession:
    """What a real session (make_session's harness: VAD, Deepgram and LLM loopbacks, the
    in-process room) sent into the room for one greeting and one question, in order."""

    agent: str
    user: str
    events: list[dict[str, Any]]  # data, transcription and participant packets, in order
    states: list[str]  # every lk.agent.state value the agent set, in order


GREETING = "Hello, ask me anything."
QUESTION = "What time is it in Paris?"
ANSWER = "It is noon in Paris."


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def recorded_session() -> RecordedSession:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    h = await build_harness(
        lambda body: Reply(text=ANSWER), env={"AGENT_GREETING": GREETING, "METRICS_TOPIC": TOPIC}
    )
    agent = h.room.local_participant.identity
    try:
        await h.wait_for_replies(1, timeout=30)  # the greeting
        await h.utter(QUESTION)
        await h.wait_for_replies(2, timeout=30)
        await h.room.outbox.wait_for(
            lambda: (
                h.room.outbox.attribute_values("lk.agent.state")[-1:] == ["listening"]
                and any(
                    t.final and t.text == ANSWER for t in h.room.outbox.transcriptions_of(agent)
                )
            )
        )
    finally:
        await h.aclose()  # the session message is published while the room is connected
        gc.collect()  # futures whose exception nobody retrieved report it when collected
        loop.set_exception_handler(previous)
    unexpected = [e for e in errors if not _known_plugin_error(e)]
    assert not unexpected, "\n".join(_describe_error(e) for e in unexpected)
    outbox = h.room.outbox
    timed: list[tuple[float, dict[str, Any]]] = [
        (d.at, data_packet(d.payload, d.topic, agent)) for d in outbox.data
    ]
    timed += [(t.at, transcription_packet(t)) for t in outbox.transcriptions]
    attributes: dict[str, str] = {}
    for version, update in enumerate(outbox.attribute_updates, 1):
        attributes = {**attributes, **update.changed}
        timed.append((update.at, participant_update(agent, attributes, version)))
    timed.sort(key=lambda item: item[0])
    return RecordedSession(
        agent=agent,
        user=h.user.identity,
        events=[event for _, event in timed],
        states=outbox.attribute_values("lk.agent.state"),
    )


STATE_TEXT = {
    "initializing": "Getting ready",
    "listening": "Listening",
    "thinking": "Thinking",
    "speaking": "Speaking",
}
READ_TRANSCRIPT = """[...document.querySelectorAll('#transcript li')].map((li) => [li.className,
  li.querySelector('.speaker').textContent, li.querySelector('.text').textContent])"""


@browser_test
async def test_a_recorded_session_through_the_room_events(
    page: Page, recorded_session: RecordedSession
) -> None:
    """The page shows what its Room receives: the agent's state after every attribute change,
    both speakers' transcripts, and the session's metrics."""
    rec = recorded_session
    assert rec.states[0] == "initializing"
    assert rec.states[-1] == "listening"
    assert {"thinking", "speaking"} <= set(rec.states)
    async with serving(create_app(with_keys())) as server:
        await page.open(server.url)
        assert await page.text("agent-state") == "Not in the room"
        shown = await feed_room(page, [joined(rec.user), *rec.events])
        assert shown == [STATE_TEXT[s] for s in rec.states]
        assert await page.eval(READ_TRANSCRIPT) == [
            ["agent", "Agent", GREETING],
            ["you", "You", QUESTION],
            ["agent", "Agent", ANSWER],
        ]
        # two turns (the greeting has no end of speech, so no e2e), final totals
        assert await page.text("e2e-count") == "2"
        assert (
            len(
                await page.eval(
                    "[...document.querySelectorAll('#latency-chart .point')]"
                    ".filter((p) => p.parentNode.dataset.series === 'e2e')"
                )
            )
            == 1
        )
        assert await page.text("usage-turns") == "2 (0)"
        assert (await page.text("usage-source")).startswith("Final totals")
        assert page.exceptions() == []


async def error_shown(page: Page) -> dict[str, str]:
    await page.wait_for("!document.getElementById('error').hidden")
    return {k: await page.text(f"error-{k}") for k in ("title", "detail", "hint")} | {
        "status": await page.text("connection-status")
    }


@browser_test
async def test_unreachable_livekit_server_is_reported(page: Page) -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    async with serving(create_app(with_keys(LIVEKIT_URL=url))) as server:
        await page.open(server.url)
        await page.set_permission("microphone", "granted", server.url)
        # keyboard only: type a room name, press Enter
        await page.eval("document.getElementById('room-name').value = ''")
        await page.eval("document.getElementById('room-name').focus()")
        await page.call("Input.insertText", {"text": "web-kitchen"})
        await page.press_enter()
        error = await error_shown(page)
        assert error["title"] == f"Cannot reach the LiveKit server at {url}"
        assert "LIVEKIT_URL" in error["hint"]
        assert error["status"] == "Not connected"
        assert await page.eval("document.getElementById('connect').textContent") == "Connect"


@browser_test
async def test_each_visit_proposes_a_fresh_room_with_the_servers_prefix(page: Page) -> None:
    """The server hands out tokens only for WEB_ROOM_PREFIX rooms; the page proposes a new
    random one per visit, so two visitors never share a room by default."""
    async with serving(create_app(with_keys(WEB_ROOM_PREFIX="kiosk_"))) as server:
        names = []
        for _ in range(2):
            await page.open(server.url)
            names.append(await page.eval("document.getElementById('room-name').value"))
    assert names[0] != names[1]
    assert all(re.fullmatch(r"kiosk_[0-9a-f]{12}", name) for name in names), names


@pytest_asyncio.fixture(loop_scope="module")
async def refusing_livekit() -> AsyncIterator[str]:
    """A LiveKit server that refuses every token, as livekit-server answers a bad signature."""

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(
            status=401,
            text="invalid token: go-jose/go-jose: error in cryptographic primitive",
            headers={"Access-Control-Allow-Origin": "*"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    async with serving(app) as server:
        yield server.url.replace("http://", "ws://")


@browser_test
async def test_refused_token_is_reported(page: Page, refusing_livekit: str) -> None:
    async with serving(create_app(with_keys(LIVEKIT_URL=refusing_livekit))) as server:
        await page.open(server.url)
        await page.set_permission("microphone", "granted", server.url)
        await page.click("connect")
        error = await error_shown(page)
        assert error["title"] == "The LiveKit server refused the token"
        assert "invalid token" in error["detail"]
        assert "LIVEKIT_API_SECRET" in error["hint"]
        assert error["status"] == "Not connected"


@browser_test
async def test_page_server_gone_or_without_keys_is_reported(page: Page) -> None:
    async with serving(create_app(settings())) as server:
        await page.open(server.url)
        await page.click("connect")
        error = await error_shown(page)
        assert error["title"] == "This server does not hand out tokens"
        assert "LIVEKIT_API_KEY and LIVEKIT_API_SECRET are not set" in error["detail"]

    server = await Server(create_app(with_keys())).start()
    await page.open(server.url)
    await server.stop()  # the page stays open, its server is gone
    await page.click("connect")
    error = await error_shown(page)
    assert error["title"] == "Cannot reach this page's server"
    assert "python -m worker web" in error["hint"]


@browser_test
async def test_microphone_denied_then_granted_and_the_camera_preview(page: Page) -> None:
    async with serving(create_app(with_keys())) as server:
        await page.open(server.url)
        await page.set_permission("microphone", "denied", server.url)
        await page.click("mic-toggle")
        error = await error_shown(page)
        assert error["title"] == "Permission to use the microphone was denied"
        assert "Turn microphone on" in error["hint"]
        assert await page.eval("document.getElementById('mic-select').disabled") is True

        await page.set_permission("microphone", "granted", server.url)
        await page.click("mic-toggle")
        await page.wait_for("document.getElementById('error').hidden")
        await page.wait_for("!document.getElementById('mic-select').disabled")
        options = await page.eval("document.getElementById('mic-select').options.length")
        assert options >= 1
        assert await page.text("mic-toggle") == "Mute microphone"
        await page.click("mic-toggle")
        await page.wait_for(
            "document.getElementById('mic-toggle').textContent === 'Unmute microphone'"
        )
        pressed = await page.eval(
            "document.getElementById('mic-toggle').getAttribute('aria-pressed')"
        )
        assert pressed == "true"

        # the camera: a live preview of the (fake) device, and off again
        await page.set_permission("camera", "granted", server.url)
        await page.click("cam-toggle")
        await page.wait_for("document.getElementById('cam-preview').videoWidth > 0")
        assert await page.eval("document.getElementById('cam-preview').hidden") is False
        assert await page.eval("document.getElementById('cam-select').options.length") >= 1
        await page.click("cam-toggle")
        await page.wait_for("document.getElementById('cam-preview').hidden")
        assert await page.text("cam-toggle") == "Turn camera on"
