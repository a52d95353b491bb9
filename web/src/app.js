// The page: join a room, publish microphone/camera, show the agent's state, transcripts,
// per-turn latency and usage. Plain DOM; livekit-client is bundled in at build time.

import {
  ConnectionError,
  ConnectionErrorReason,
  ConnectionState,
  MediaDeviceFailure,
  ParticipantKind,
  Room,
  RoomEvent,
  Track,
  createAudioAnalyser,
  createLocalAudioTrack,
  createLocalVideoTrack,
} from "livekit-client";

import { STYLE, ms, renderChart } from "./chart.js";
import { setupChat } from "./chat.js";
import { MetricsModel, SERIES, decodePayload } from "./metrics.js";

const AGENT_STATE_ATTRIBUTE = "lk.agent.state";
const CONTROL_TOPIC = "agent.control";
const MAX_TRANSCRIPT_ITEMS = 300;

const $ = (id) => document.getElementById(id);

const page = {
  config: { livekit_url: "", metrics_topic: "agent.metrics", tokens: false, agent_name: "", room_prefix: "web-" },
  accessToken: takeAccessToken(),
  room: null, // `lkRoom` while connecting or connected
  mic: null, // LocalAudioTrack, kept across connections
  cam: null, // LocalVideoTrack
  micMeter: null,
  agentIdentity: null,
  hiddenSeries: new Set(),
  segments: new Map(), // transcription segment id -> <li>
};
const model = new MetricsModel();
/** One livekit-client Room for the page's lifetime (a Room connects again after a disconnect),
 * wired once: what the page shows comes from its events. */
const lkRoom = new Room({ adaptiveStream: true, dynacast: true });

// --- errors a person can act on ------------------------------------------------------------

function showError({ title, detail = "", hint = "" }) {
  $("error-title").textContent = title;
  $("error-detail").textContent = detail;
  $("error-detail").hidden = !detail;
  $("error-hint").textContent = hint;
  $("error-hint").hidden = !hint;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

/** What went wrong with room.connect, in words, with what to do about it. */
function explainConnectError(error, url) {
  if (error instanceof ConnectionError) {
    if (error.reason === ConnectionErrorReason.NotAllowed) {
      return {
        title: "The LiveKit server refused the token",
        detail: `${url}: ${error.status ?? ""} ${error.message}`.trim(),
        hint:
          "The token was signed with an API key pair this server does not accept (or the room is not allowed). " +
          "Give `python -m worker web` the same LIVEKIT_API_KEY and LIVEKIT_API_SECRET as the server, then connect again.",
      };
    }
    if (error.reason === ConnectionErrorReason.Cancelled) return null;
  }
  return {
    title: `Cannot reach the LiveKit server at ${url}`,
    detail: error?.message ? String(error.message) : String(error),
    hint:
      "Check that the server is running and that LIVEKIT_URL points to it " +
      "(ws://localhost:7880 for a local server, wss://<project>.livekit.cloud for LiveKit Cloud), then connect again.",
  };
}

/** getUserMedia failures, for the microphone or the camera. */
function explainMediaError(error, what) {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    return {
      title: `This page cannot use the ${what}`,
      hint:
        `Browsers allow the ${what} only on https:// pages or on localhost. ` +
        `Open the page as http://localhost:${location.port || 80}/ on this machine, or serve it over https.`,
    };
  }
  switch (MediaDeviceFailure.getFailure(error)) {
    case MediaDeviceFailure.PermissionDenied:
      return {
        title: `Permission to use the ${what} was denied`,
        hint:
          `Allow the ${what} for this site (the icon in the address bar, or the browser's site settings), ` +
          `then press "Turn ${what} on" again.`,
      };
    case MediaDeviceFailure.NotFound:
      return {
        title: `No ${what} found`,
        hint: `Connect a ${what} (or pick another one in the list) and try again.`,
      };
    case MediaDeviceFailure.DeviceInUse:
      return {
        title: `The ${what} is busy`,
        hint: `Another application or tab is using it. Close that one and try again.`,
      };
    default:
      return { title: `Could not start the ${what}`, detail: error?.message ?? String(error) };
  }
}

// --- server: page config and tokens --------------------------------------------------------

class PageServerError extends Error {
  constructor(info) {
    super(info.title);
    this.info = info;
  }
}

/**
 * WEB_ACCESS_TOKEN, when the server needs one: given once as `#access_token=...` in the page's
 * address (a fragment never reaches a server or a Referer), then kept for this tab only.
 */
function takeAccessToken() {
  const given = new URLSearchParams(location.hash.slice(1)).get("access_token");
  if (given) {
    sessionStorage.setItem("access_token", given);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("access_token") ?? "";
}

/** A room of its own for every visit: the server hands out tokens only for its prefix. */
function freshRoomName(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function loadConfig() {
  try {
    const resp = await fetch("/api/config", { cache: "no-store" });
    if (resp.ok) page.config = { ...page.config, ...(await resp.json()) };
  } catch {
    // The connect button reports an unreachable page server with a proper message.
  }
  $("server-url").textContent = page.config.livekit_url || "not configured";
  $("room-name").value = freshRoomName(page.config.room_prefix);
  if (page.config.agent_name) {
    const hint = $("dispatch-hint");
    hint.textContent =
      `The agent "${page.config.agent_name}" joins only when dispatched: ` +
      `run \`python -m worker dispatch --room ROOM\` after connecting.`;
    hint.hidden = false;
  }
}

async function fetchToken(roomName) {
  let resp;
  try {
    resp = await fetch("/api/token", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        ...(page.accessToken ? { Authorization: `Bearer ${page.accessToken}` } : {}),
      },
      body: JSON.stringify({ room: roomName }),
      cache: "no-store",
    });
  } catch (e) {
    throw new PageServerError({
      title: "Cannot reach this page's server",
      detail: `${location.origin}/api/token: ${e.message}`,
      hint: "Is `python -m worker web` still running? Start it again, then connect again.",
    });
  }
  let body = {};
  try {
    body = await resp.json();
  } catch {
    // a proxy's HTML error page, for example: the status says enough
  }
  if (!resp.ok) {
    const disabled = resp.status === 503 || resp.status === 404;
    const hints = {
      401: `Open the page as ${location.origin}/#access_token=… with the server's WEB_ACCESS_TOKEN.`,
      429: `Wait ${resp.headers.get("Retry-After") ?? "a minute"} s, then connect again.`,
    };
    throw new PageServerError({
      title: disabled ? "This server does not hand out tokens" : `The token request failed (HTTP ${resp.status})`,
      detail: body.error ?? resp.statusText,
      hint: disabled
        ? "Start `python -m worker web` with LIVEKIT_API_KEY and LIVEKIT_API_SECRET set (in the environment or .env)."
        : hints[resp.status] ?? "Fix the room name and connect again.",
    });
  }
  return body;
}

// --- connection ----------------------------------------------------------------------------

function setConnectionState(state, text) {
  const pill = $("connection-status");
  pill.dataset.state = state;
  pill.textContent = text;
  const button = $("connect");
  const busy = state === "connecting";
  button.disabled = busy;
  button.textContent = state === "connected" || state === "reconnecting" ? "Disconnect" : busy ? "Connecting…" : "Connect";
  $("room-name").disabled = state !== "disconnected";
  page.chat?.update();
}

async function connect() {
  const roomName = $("room-name").value.trim();
  if (!roomName) {
    showError({
      title: "Enter a room name",
      hint: `A name starting with ${page.config.room_prefix}: the agent joins the room you name.`,
    });
    $("room-name").focus();
    return;
  }
  clearError();
  setConnectionState("connecting", "Connecting…");
  resetSessionView();
  const room = lkRoom;
  page.room = room;
  let grant;
  try {
    grant = await fetchToken(roomName);
    await room.connect(grant.url, grant.token);
  } catch (e) {
    page.room = null; // before disconnecting: its Disconnected event is not a call ending
    await room.disconnect(false).catch(() => {}); // keep the microphone/camera the person turned on
    setConnectionState("disconnected", "Not connected");
    const info = e instanceof PageServerError ? e.info : explainConnectError(e, grant?.url ?? page.config.livekit_url);
    if (info) showError(info);
    return;
  }
  setConnectionState("connected", `Connected to ${room.name} as ${room.localParticipant.identity}`);
  await room.startAudio().catch(() => {});
  for (const p of room.remoteParticipants.values()) noticeParticipant(p);
  // A voice agent needs the microphone: turn it on if it is off (a muted one goes out muted).
  if (!page.mic) await startMic();
  if (page.mic) await publish(page.mic);
  if (page.cam) await publish(page.cam);
}

async function disconnect() {
  const room = page.room;
  page.room = null;
  if (room) await room.disconnect();
  ended("Not connected");
}

/** The call is over: release the microphone and camera (the browser's indicator goes off). */
function ended(status) {
  setConnectionState("disconnected", status);
  setAgentState(null);
  page.micMeter?.cleanup();
  page.micMeter = null;
  page.mic?.stop();
  page.mic = null;
  updateMicButton();
  if (page.cam) {
    page.cam.detach($("cam-preview"));
    page.cam.stop();
    page.cam = null;
  }
  updateCamButton();
  $("mic-select").disabled = true;
  $("cam-select").disabled = true;
}

async function publish(track) {
  const room = page.room;
  if (!room || room.state !== ConnectionState.Connected) return;
  try {
    await room.localParticipant.publishTrack(track, { source: track.source });
  } catch (e) {
    showError({ title: `Could not publish the ${track.kind === Track.Kind.Audio ? "microphone" : "camera"}`, detail: e.message });
  }
}

async function unpublish(track) {
  const room = page.room;
  if (!room) return;
  await room.localParticipant.unpublishTrack(track, false).catch(() => {});
}

function wireRoom(room) {
  room
    .on(RoomEvent.Reconnecting, () => setConnectionState("reconnecting", "Reconnecting…"))
    .on(RoomEvent.Reconnected, () => setConnectionState("connected", `Connected to ${room.name}`))
    .on(RoomEvent.Disconnected, () => {
      if (page.room !== room) return;
      page.room = null;
      ended("Disconnected");
    })
    .on(RoomEvent.ParticipantConnected, (p) => noticeParticipant(p))
    .on(RoomEvent.ParticipantAttributesChanged, (_changed, p) => noticeParticipant(p))
    .on(RoomEvent.ParticipantDisconnected, (p) => {
      if (p.identity === page.agentIdentity) setAgentState(null);
    })
    .on(RoomEvent.TrackSubscribed, (track) => {
      if (track.kind !== Track.Kind.Audio) return;
      $("remote-audio").appendChild(track.attach());
    })
    .on(RoomEvent.TrackUnsubscribed, (track) => track.detach().forEach((el) => el.remove()))
    .on(RoomEvent.AudioPlaybackStatusChanged, () => {
      $("start-audio").hidden = room.canPlaybackAudio;
    })
    .on(RoomEvent.DataReceived, (payload, _participant, _kind, topic) => receiveData(payload, topic))
    .on(RoomEvent.TranscriptionReceived, (segments, participant) => {
      const you = participant && participant.identity === room.localParticipant.identity;
      showSegments(segments, you ? "you" : "agent");
    })
    .on(RoomEvent.MediaDevicesChanged, () => refreshDevices());
}

// --- the agent -----------------------------------------------------------------------------

function noticeParticipant(p) {
  const state = p.attributes?.[AGENT_STATE_ATTRIBUTE];
  const isAgent = p.kind === ParticipantKind.AGENT || state !== undefined;
  if (!isAgent) return;
  page.agentIdentity = p.identity;
  setAgentState(state ?? "initializing");
}

const STATE_TEXT = {
  initializing: "Getting ready",
  listening: "Listening",
  thinking: "Thinking",
  speaking: "Speaking",
};

/** `lk.agent.state` value, or null when no agent is in the room. */
function setAgentState(state) {
  const badge = $("agent-state");
  if (state === null) {
    page.agentIdentity = null;
    badge.dataset.state = "absent";
    badge.textContent = "Not in the room";
    $("interrupt").disabled = true;
    return;
  }
  badge.dataset.state = state;
  badge.textContent = STATE_TEXT[state] ?? state;
  $("interrupt").disabled = !page.room;
}

async function interrupt() {
  const room = page.room;
  if (!room) return;
  const data = new TextEncoder().encode(JSON.stringify({ type: "interrupt" }));
  const destinationIdentities = page.agentIdentity ? [page.agentIdentity] : undefined;
  await room.localParticipant
    .publishData(data, { reliable: true, topic: CONTROL_TOPIC, destinationIdentities })
    .catch((e) => showError({ title: "Could not send the interrupt", detail: e.message }));
}

// --- transcripts ---------------------------------------------------------------------------

/** Segments (livekit-client TranscriptionSegment-like: id, text, final) of one speaker. */
function showSegments(segments, speaker) {
  const list = $("transcript");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.querySelector(".placeholder")?.remove();
  for (const s of segments) {
    let item = page.segments.get(s.id);
    if (!item) {
      item = document.createElement("li");
      item.className = speaker;
      const who = document.createElement("span");
      who.className = "speaker";
      who.textContent = speaker === "you" ? "You" : "Agent";
      item.append(who, document.createElement("span"));
      item.lastChild.className = "text";
      page.segments.set(s.id, item);
      list.appendChild(item);
      while (list.children.length > MAX_TRANSCRIPT_ITEMS) {
        const first = list.firstElementChild;
        for (const [id, el] of page.segments) if (el === first) page.segments.delete(id);
        first.remove();
      }
    }
    item.lastChild.textContent = s.text;
    item.classList.toggle("interim", !s.final);
  }
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// --- metrics -------------------------------------------------------------------------------

/** A data message from the room; only the metrics topic is ours. */
function receiveData(bytes, topic) {
  if (topic !== page.config.metrics_topic) return false;
  const payload = decodePayload(bytes);
  return payload !== null && handleMetrics(payload);
}

function handleMetrics(payload) {
  const known = model.handle(payload);
  if (known) scheduleRender();
  return known;
}

let renderPending = false;
function scheduleRender() {
  // Many messages can arrive in one burst: draw once per frame, and right away when hidden.
  if (renderPending) return;
  renderPending = true;
  const draw = () => {
    renderPending = false;
    renderMetrics();
  };
  if (document.hidden) queueMicrotask(draw);
  else requestAnimationFrame(draw);
}

function renderMetrics() {
  renderChart($("latency-chart"), model.turns, { hidden: page.hiddenSeries });
  const sum = model.e2eSummary();
  $("e2e-last").textContent = ms(sum.last);
  $("e2e-median").textContent = ms(sum.median);
  $("e2e-max").textContent = ms(sum.max);
  $("e2e-count").textContent = String(model.turns.length);
  $("chart-desc").textContent = sum.count
    ? `Voice-to-voice latency over ${sum.count} replies: last ${ms(sum.last)}, median ${ms(sum.median)}, ` +
      `slowest ${ms(sum.max)}. Each reply's numbers are in the table below.`
    : "No replies measured yet.";

  const body = $("turns-table").tBodies[0];
  body.replaceChildren(
    ...model.turns
      .slice()
      .reverse()
      .map((t) => {
        const row = document.createElement("tr");
        row.dataset.turn = String(t.n);
        const head = document.createElement("th");
        head.scope = "row";
        head.textContent = String(t.n);
        row.appendChild(head);
        for (const s of SERIES) {
          const cell = document.createElement("td");
          cell.dataset.series = s.key;
          cell.textContent = ms(t.values[s.key]);
          row.appendChild(cell);
        }
        const note = document.createElement("td");
        const notes = [];
        if (t.interrupted) notes.push("interrupted");
        if (t.toolRounds) notes.push(`${t.toolRounds} tool round${t.toolRounds > 1 ? "s" : ""}`);
        if (t.values.e2e === null) notes.push("no user turn");
        note.textContent = notes.join(", ");
        row.appendChild(note);
        return row;
      }),
  );

  const u = model.usage;
  $("usage-prompt").textContent = u.llmPromptTokens.toLocaleString("en-US");
  $("usage-completion").textContent = u.llmCompletionTokens.toLocaleString("en-US");
  $("usage-tts").textContent = u.ttsCharacters.toLocaleString("en-US");
  $("usage-stt").textContent = `${u.sttAudioSeconds.toFixed(1)} s`;
  $("usage-turns").textContent = `${u.turns} (${u.interruptedTurns})`;
  $("usage-duration").textContent = u.sessionSeconds === null ? "–" : `${u.sessionSeconds.toFixed(1)} s`;
  $("usage-dropped").textContent = String(model.dropped);
  $("usage-source").textContent = u.final
    ? "Final totals, as the agent counted them at the end of the session."
    : "Live totals from the agent's messages.";
}

function buildLegend() {
  const legend = $("legend");
  for (const s of SERIES) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.dataset.series = s.key;
    box.addEventListener("change", () => {
      if (box.checked) page.hiddenSeries.delete(s.key);
      else page.hiddenSeries.add(s.key);
      renderMetrics();
    });
    const swatch = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    swatch.setAttribute("viewBox", "-8 -8 16 16");
    swatch.setAttribute("aria-hidden", "true");
    renderLegendMarker(swatch, s.key);
    label.append(box, swatch, document.createTextNode(s.label));
    legend.appendChild(label);
  }
}

function renderLegendMarker(svg, key) {
  // The chart's marker shapes, centred on the origin.
  const { color, marker } = STYLE[key];
  const NS = "http://www.w3.org/2000/svg";
  const shape = {
    circle: ["circle", { cx: 0, cy: 0, r: 5, fill: color }],
    square: ["rect", { x: -4.5, y: -4.5, width: 9, height: 9, fill: color }],
    triangle: ["path", { d: "M0,-6L6,5L-6,5Z", fill: color }],
    diamond: ["path", { d: "M0,-6L6,0L0,6L-6,0Z", fill: color }],
    cross: ["path", { d: "M-5,-5L5,5M-5,5L5,-5", stroke: color, "stroke-width": 2.5, fill: "none" }],
  }[marker];
  const node = document.createElementNS(NS, shape[0]);
  for (const [k, v] of Object.entries(shape[1])) node.setAttribute(k, String(v));
  svg.appendChild(node);
}

function resetSessionView() {
  model.reset();
  page.segments.clear();
  const list = $("transcript");
  list.replaceChildren();
  const placeholder = document.createElement("li");
  placeholder.className = "placeholder";
  placeholder.textContent = "What you and the agent say appears here.";
  list.appendChild(placeholder);
  renderMetrics();
}

// --- microphone and camera -----------------------------------------------------------------

async function startMic() {
  const deviceId = $("mic-select").value || undefined;
  try {
    page.mic = await createLocalAudioTrack({
      deviceId,
      echoCancellation: true,
      noiseSuppression: true,
      autoGainControl: true,
    });
  } catch (e) {
    showError(explainMediaError(e, "microphone"));
    return;
  }
  clearErrorIfAbout("microphone");
  startMeter(page.mic);
  await refreshDevices();
  updateMicButton();
}

function updateMicButton() {
  const button = $("mic-toggle");
  if (!page.mic) {
    button.textContent = "Turn microphone on";
    button.setAttribute("aria-pressed", "false");
    return;
  }
  const muted = page.mic.isMuted;
  button.textContent = muted ? "Unmute microphone" : "Mute microphone";
  button.setAttribute("aria-pressed", String(muted));
}

async function toggleMic() {
  if (!page.mic) {
    await startMic();
    if (page.mic) await publish(page.mic);
    return;
  }
  if (page.mic.isMuted) await page.mic.unmute();
  else await page.mic.mute();
  updateMicButton();
}

function startMeter(track) {
  page.micMeter?.cleanup();
  let analyser;
  try {
    analyser = createAudioAnalyser(track, { cloneTrack: true });
  } catch {
    return; // no Web Audio: the meter just stays at 0
  }
  const meter = $("mic-level");
  let running = true;
  const tick = () => {
    if (!running) return;
    meter.value = track.isMuted ? 0 : Math.min(1, analyser.calculateVolume() * 2);
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  page.micMeter = {
    cleanup() {
      running = false;
      analyser.cleanup().catch(() => {});
      meter.value = 0;
    },
  };
}

function updateCamButton() {
  const button = $("cam-toggle");
  button.textContent = page.cam ? "Turn camera off" : "Turn camera on";
  button.setAttribute("aria-pressed", String(Boolean(page.cam)));
  $("cam-preview").hidden = !page.cam;
}

async function toggleCam() {
  const preview = $("cam-preview");
  if (page.cam) {
    const cam = page.cam;
    page.cam = null;
    await unpublish(cam);
    cam.detach(preview);
    cam.stop();
    updateCamButton();
    $("cam-select").disabled = true;
    return;
  }
  const deviceId = $("cam-select").value || undefined;
  try {
    page.cam = await createLocalVideoTrack({ deviceId, resolution: { width: 640, height: 480 } });
  } catch (e) {
    showError(explainMediaError(e, "camera"));
    return;
  }
  clearErrorIfAbout("camera");
  page.cam.attach(preview);
  updateCamButton();
  await refreshDevices();
  await publish(page.cam);
}

function clearErrorIfAbout(what) {
  if ($("error-title").textContent.includes(what)) clearError();
}

async function fillSelect(select, kind, track) {
  let devices = [];
  try {
    devices = await Room.getLocalDevices(kind, false);
  } catch {
    return;
  }
  const current = track?.mediaStreamTrack?.getSettings().deviceId ?? select.value;
  select.replaceChildren(
    ...devices.map((d, i) => new Option(d.label || `${kind === "audioinput" ? "Microphone" : "Camera"} ${i + 1}`, d.deviceId)),
  );
  if (current && devices.some((d) => d.deviceId === current)) select.value = current;
  select.disabled = !track || devices.length === 0;
}

async function refreshDevices() {
  await fillSelect($("mic-select"), "audioinput", page.mic);
  await fillSelect($("cam-select"), "videoinput", page.cam);
}

async function switchDevice(track, deviceId, what) {
  if (!track || !deviceId) return;
  try {
    await track.setDeviceId({ exact: deviceId });
  } catch (e) {
    showError(explainMediaError(e, what));
  }
}

// --- start ---------------------------------------------------------------------------------

function init() {
  buildLegend();
  renderMetrics();
  setConnectionState("disconnected", "Not connected");
  $("join-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (page.room) disconnect();
    else connect();
  });
  $("error-dismiss").addEventListener("click", () => {
    clearError();
    $("room-name").focus();
  });
  $("mic-toggle").addEventListener("click", () => toggleMic());
  $("cam-toggle").addEventListener("click", () => toggleCam());
  $("mic-select").addEventListener("change", (ev) => switchDevice(page.mic, ev.target.value, "microphone"));
  $("cam-select").addEventListener("change", (ev) => switchDevice(page.cam, ev.target.value, "camera"));
  $("interrupt").addEventListener("click", () => interrupt());
  page.chat = setupChat({
    form: $("chat-form"),
    input: $("chat-input"),
    button: $("chat-send"),
    getRoom: () => (page.room?.state === ConnectionState.Connected ? page.room : null),
    getAgentIdentity: () => page.agentIdentity,
    show: (segment) => showSegments([segment], "you"),
    fail: (e) => showError({ title: "Could not send the message", detail: e.message }),
  });
  $("start-audio").addEventListener("click", async () => {
    await page.room?.startAudio();
    $("start-audio").hidden = page.room?.canPlaybackAudio ?? true;
  });
  window.addEventListener("beforeunload", () => page.room?.disconnect());
  let chartWidth = 0;
  new ResizeObserver(([entry]) => {
    const width = Math.round(entry.contentRect.width);
    if (width !== chartWidth) {
      chartWidth = width;
      scheduleRender();
    }
  }).observe($("latency-chart"));

  wireRoom(lkRoom);
  // The page's Room, for the browser's console (and the tests, which feed it what a LiveKit
  // server would send: data packets, transcriptions, participant updates).
  window.agentRoom = lkRoom;
  loadConfig().then(() => {
    document.body.dataset.ready = "true";
  });
}

init();
