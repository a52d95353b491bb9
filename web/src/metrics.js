// The agent's metrics data messages (docs/metrics.md, schema v1) -> per-turn latency and usage.
// No DOM here: app.js renders what this model holds.

export const SCHEMA_VERSION = 1;

/** The per-turn series the chart draws, in legend order. `field` is the `turn` payload's. */
export const SERIES = [
  { key: "e2e", field: "e2e_latency", label: "Voice to voice (e2e)" },
  { key: "eou", field: "end_of_utterance_delay", label: "End of utterance" },
  { key: "llm", field: "llm_ttft", label: "LLM first token" },
  { key: "tts", field: "tts_ttfb", label: "TTS first audio" },
  { key: "tool", field: "tool_time", label: "Tool time" },
];

const MAX_TURNS = 200;
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Bytes of one data message -> the payload object, or null if it is not a v1 metrics message. */
export function decodePayload(bytes) {
  let value;
  try {
    value = JSON.parse(decoder.decode(bytes));
  } catch {
    return null;
  }
  return isPayload(value) ? value : null;
}

function isPayload(value) {
  return (
    value !== null &&
    typeof value === "object" &&
    !Array.isArray(value) &&
    value.v === SCHEMA_VERSION &&
    typeof value.type === "string"
  );
}

/** A finite, non-negative number (seconds), or null for "not measured". */
function secondsOf(value) {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : null;
}

function countOf(value) {
  return typeof value === "number" && Number.isFinite(value) && value >= 0 ? value : 0;
}

function emptyUsage() {
  return {
    llmPromptTokens: 0,
    llmCompletionTokens: 0,
    ttsCharacters: 0,
    sttAudioSeconds: 0,
    turns: 0,
    interruptedTurns: 0,
    vadInferences: 0,
    vadInferenceSeconds: 0,
    sessionSeconds: null,
    final: false, // true once the agent's `session` message replaced the live totals
  };
}

export class MetricsModel {
  constructor() {
    this.reset();
  }

  reset() {
    /** One entry per `turn` payload, in arrival order: {n, sequenceId, values{key: s|null}, ...}. */
    this.turns = [];
    this.usage = emptyUsage();
    this.dropped = 0;
    this.received = 0;
    this.ignored = 0;
    this._turnCount = 0;
  }

  /**
   * One payload object. Returns true if it was a known message (and the view should update).
   * Unknown versions and types are ignored, as the protocol asks of consumers.
   */
  handle(payload) {
    if (!isPayload(payload)) {
      this.ignored += 1;
      return false;
    }
    const known = this._apply(payload);
    if (!known) {
      this.ignored += 1;
      return false;
    }
    this.received += 1;
    this.dropped += countOf(payload.dropped);
    return true;
  }

  _apply(p) {
    const u = this.usage;
    switch (p.type) {
      case "turn":
        this._addTurn(p);
        if (!u.final) {
          u.turns += 1;
          if (p.interrupted === true) u.interruptedTurns += 1;
        }
        return true;
      case "llm":
        u.llmPromptTokens += countOf(p.prompt_tokens);
        u.llmCompletionTokens += countOf(p.completion_tokens);
        return true;
      case "tts":
        u.ttsCharacters += countOf(p.characters);
        return true;
      case "stt":
        u.sttAudioSeconds += countOf(p.audio_duration);
        return true;
      case "vad":
        u.vadInferences += countOf(p.inference_count);
        u.vadInferenceSeconds += countOf(p.inference_duration_total);
        return true;
      case "eou":
        return true; // its numbers come again, joined, in the reply's `turn`
      case "session":
        // The agent's own totals for the whole job win over what this page added up.
        u.llmPromptTokens = countOf(p.llm_prompt_tokens);
        u.llmCompletionTokens = countOf(p.llm_completion_tokens);
        u.ttsCharacters = countOf(p.tts_characters);
        u.sttAudioSeconds = countOf(p.stt_audio_duration);
        u.turns = countOf(p.turns);
        u.interruptedTurns = countOf(p.interrupted_turns);
        u.sessionSeconds = secondsOf(p.duration);
        u.final = true;
        return true;
      default:
        return false;
    }
  }

  _addTurn(p) {
    const values = {};
    for (const s of SERIES) values[s.key] = secondsOf(p[s.field]);
    this._turnCount += 1;
    this.turns.push({
      n: this._turnCount,
      sequenceId: typeof p.sequence_id === "string" ? p.sequence_id : "",
      values,
      interrupted: p.interrupted === true,
      toolRounds: countOf(p.tool_rounds),
      ttsSource: typeof p.tts_ttfb_source === "string" ? p.tts_ttfb_source : null,
    });
    if (this.turns.length > MAX_TURNS) this.turns.splice(0, this.turns.length - MAX_TURNS);
  }

  /** Voice-to-voice summary over the turns that have one: {count, last, median, max} (s). */
  e2eSummary() {
    const all = this.turns.map((t) => t.values.e2e).filter((v) => v !== null);
    if (all.length === 0) return { count: 0, last: null, median: null, max: null };
    const sorted = [...all].sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    return { count: all.length, last: all[all.length - 1], median, max: sorted[sorted.length - 1] };
  }
}
