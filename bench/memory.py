"""Part 4, memory: a 2-hour conversation, fast-forwarded; RSS and context size per turn.

Each pipeline runs in a process of its own (``python -m bench.memory --child ours|stock``),
the providers in a third one, so the RSS measured is the session's process. Every turn is
a real turn through the room: a short utterance into the microphone (camera at 15 fps all
along), VAD, STT, the LLM request, the reply played, then the pipeline's commit path (ours:
user text + utterance audio + camera image into the rolling context, then the trim).

Fast-forward (only waits shrink; the code path is the one a job runs): a 0.46 s utterance,
VAD min silence 0.2 s, endpointing delay 0.1 s, providers that answer at once with a short
reply. ``LLM_AUDIO_INPUT=on`` for ours, so every turn also carries its audio. 720 turns =
two hours at one exchange every 10 s; time-driven state (per-second metrics, camera frames)
only gets the run's real duration.

Reported: RSS after a full collection every few turns, the estimated context tokens
(``worker.pipeline.context.estimate_tokens``, same estimator for both) and the media kept. Growth =
median of the last three samples - median of the three samples right after the warm-up
(the first quarter of the turns, at least 40).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]  # no stubs installed

from .harness import PIPELINES, Pipeline, ProviderScript, exit_child, ratio, summarize

logger = logging.getLogger("bench.memory")

FAST_SCRIPT = ProviderScript(
    stt_final_delay=0.05,
    llm_ttft=0.0,
    llm_tokens_per_second=1000.0,
    tts_ttfb=0.0,
    tts_seconds_per_char=0.01,
)
REPLY = "Okay, noted."
UTTERANCE = "Tell me more"
UTTERANCE_WPM = 260
VAD_MIN_SILENCE = 0.2
ENDPOINTING_DELAY = 0.1


def _media(chat_ctx: Any) -> tuple[int, int]:
    from livekit.agents import llm

    images = audio = 0
    for msg in chat_ctx.messages:
        content = msg.content if isinstance(msg.content, list) else [msg.content]
        images += sum(isinstance(c, llm.ChatImage) for c in content)
        audio += sum(isinstance(c, llm.ChatAudio) for c in content)
    return images, audio


async def _child(
    kind: Pipeline, turns: int, every: int, endpoints: dict[str, str]
) -> dict[str, Any]:
    from livekit.plugins import silero

    from plugins.silero_vad import VAD as OursVAD
    from worker.pipeline.context import estimate_tokens

    from .harness import SessionOptions, open_session, push_speech, voiced_clip

    vad_cls = OursVAD if kind == "ours" else silero.VAD
    session = await open_session(
        kind,
        FAST_SCRIPT,
        SessionOptions(
            env={"LLM_AUDIO_INPUT": "on"},
            record_rate=None,
            vad=vad_cls.load(min_silence_duration=VAD_MIN_SILENCE),
            min_endpointing_delay=ENDPOINTING_DELAY,
        ),
        endpoints=endpoints,
    )
    proc = psutil.Process()
    clip = voiced_clip(UTTERANCE, UTTERANCE_WPM)
    samples: list[dict[str, Any]] = []
    failed = 0
    started = time.perf_counter()
    await asyncio.sleep(1.0)
    try:
        for i in range(1, turns + 1):
            _, e = await push_speech(session.mic, clip)
            try:
                await session.wait_reply_done(e, timeout=10.0)
            except TimeoutError:
                failed += 1
            await asyncio.sleep(0.05)
            session.trim_records(time.perf_counter())
            if i % every == 0 or i == turns:
                gc.collect()
                images, audio = _media(session.chat_ctx)
                samples.append(
                    {
                        "turn": i,
                        "seconds": round(time.perf_counter() - started, 1),
                        "rss_mb": round(proc.memory_info().rss / 2**20, 2),
                        "context_tokens": estimate_tokens(session.chat_ctx),
                        "messages": len(session.chat_ctx.messages),
                        "images": images,
                        "audio": audio,
                    }
                )
    finally:
        await session.aclose()
    return {"pipeline": kind, "turns": turns, "failed_turns": failed, "samples": samples}


def _growth(samples: list[dict[str, Any]], key: str, warmup_turn: int) -> dict[str, Any]:
    after = [s for s in samples if s["turn"] >= warmup_turn]
    if len(after) < 2:
        return {
            "after_warmup": None,
            "end": None,
            "growth": None,
            "growth_second_half": None,
            "per_100_turns": None,
        }
    first = float(np.median([s[key] for s in after[:3]]))
    last = float(np.median([s[key] for s in after[-3:]]))
    xs = np.array([s["turn"] for s in after], dtype=float)
    ys = np.array([s[key] for s in after], dtype=float)
    slope = float(np.polyfit(xs, ys, 1)[0]) * 100 if len(after) >= 3 else None
    half = after[len(after) // 2 :]
    mid = float(np.median([s[key] for s in half[:3]]))
    return {
        "after_warmup": round(first, 2),
        "end": round(last, 2),
        "growth": round(last - first, 2),
        "growth_second_half": round(last - mid, 2),
        "per_100_turns": None if slope is None else round(slope, 3),
    }


async def _run_child(kind: Pipeline, turns: int, every: int, env: dict[str, str]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.memory",
        "--child",
        kind,
        "--turns",
        str(turns),
        "--every",
        str(every),
        "--endpoints",
        json.dumps(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory child ({kind}) failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def run(quick: bool = False) -> dict[str, Any]:
    from .provider_proc import ProviderProcess, ProviderProcessConfig

    turns, every = (12, 3) if quick else (720, 10)
    warmup = max(turns // 4, min(40, turns // 2))
    cfg = ProviderProcessConfig(script=FAST_SCRIPT, reply=REPLY, transcript="Tell me more.")
    started = time.perf_counter()
    async with ProviderProcess(cfg) as providers:
        results = await asyncio.gather(
            *(_run_child(kind, turns, every, providers.env) for kind in PIPELINES)
        )
    wall = time.perf_counter() - started
    per: dict[str, Any] = {}
    for r in results:
        samples = r["samples"]
        per[r["pipeline"]] = {
            "turns": r["turns"],
            "failed_turns": r["failed_turns"],
            "seconds": samples[-1]["seconds"] if samples else None,
            "rss_mb": _growth(samples, "rss_mb", warmup),
            "context_tokens": _growth(samples, "context_tokens", warmup),
            "context_tokens_per_turn": summarize(
                s["context_tokens"] for s in samples if s["turn"] >= warmup
            ),
            "end": samples[-1] if samples else None,
            "samples": samples,
        }
    o, s = per["ours"], per["stock"]
    return {
        "part": "memory",
        "config": {
            "turns": turns,
            "sample_every": every,
            "warmup_turns": warmup,
            "fast_forward": {
                "providers": FAST_SCRIPT.__dict__,
                "reply": REPLY,
                "utterance": f"{UTTERANCE!r} at {UTTERANCE_WPM} words/min (0.46 s)",
                "vad_min_silence": VAD_MIN_SILENCE,
                "min_endpointing_delay": ENDPOINTING_DELAY,
                "ours_env": {"LLM_AUDIO_INPUT": "on"},
                "camera": "640x480 I420 at 15 fps",
            },
            "equivalent": "720 turns = 2 hours at one exchange every 10 s",
            "rss": "after gc.collect(), the session's own process (providers elsewhere)",
            "growth": "median of the last 3 samples - median of the 3 after the warm-up "
            "(growth_second_half: - median of the 3 at the middle of the post-warm-up samples)",
        },
        "wall_seconds": round(wall, 1),
        "pipelines": per,
        "ratios_ours_over_stock": {
            "rss_end": ratio(o["rss_mb"]["end"], s["rss_mb"]["end"]),
            "context_tokens_end": ratio(o["context_tokens"]["end"], s["context_tokens"]["end"]),
        },
        "goals": {
            "ours_rss_growth_below_5mb": (
                None if o["rss_mb"]["growth"] is None else o["rss_mb"]["growth"] < 5.0
            ),
        },
    }


def table(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    per = result["pipelines"]
    o, s = per["ours"], per["stock"]
    turns = result["config"]["turns"]

    def mb(x: float | None) -> str:
        return "-" if x is None else f"{x:+.1f} MB"

    rat = result["ratios_ours_over_stock"]
    return [
        (
            f"memory: RSS growth after warm-up ({turns} turns)",
            mb(o["rss_mb"]["growth"]),
            mb(s["rss_mb"]["growth"]),
            "",
        ),
        (
            "memory: RSS at the end",
            f"{o['rss_mb']['end']} MB",
            f"{s['rss_mb']['end']} MB",
            "-" if rat["rss_end"] is None else f"{rat['rss_end']:.2f}",
        ),
        (
            "memory: context tokens at the end (est.)",
            f"{o['context_tokens']['end']:.0f}" if o["context_tokens"]["end"] is not None else "-",
            f"{s['context_tokens']['end']:.0f}" if s["context_tokens"]["end"] is not None else "-",
            "-" if rat["context_tokens_end"] is None else f"{rat['context_tokens_end']:.2f}",
        ),
    ]


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for kind, color in (("ours", "tab:blue"), ("stock", "tab:gray")):
        samples = result["pipelines"][kind]["samples"]
        turns = [s["turn"] for s in samples]
        ax1.plot(turns, [s["rss_mb"] for s in samples], color=color, label=kind)
        ax2.plot(turns, [s["context_tokens"] for s in samples], color=color, label=kind)
    for ax in (ax1, ax2):
        ax.axvline(result["config"]["warmup_turns"], color="k", linestyle=":", linewidth=0.8)
        ax.set_xlabel("turn")
        ax.legend()
    ax1.set_ylabel("RSS (MB, after gc.collect)")
    ax1.set_title("session process memory")
    ax2.set_ylabel("estimated context tokens")
    ax2.set_title("context size (worker.pipeline.context.estimate_tokens)")
    fig.suptitle(
        f"memory: {result['config']['turns']} turns fast-forwarded (audio + image per turn)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=PIPELINES, required=True)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--endpoints", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("livekit").setLevel(logging.ERROR)
    result = asyncio.run(_child(args.child, args.turns, args.every, json.loads(args.endpoints)))
    print(json.dumps(result), flush=True)
    exit_child()


if __name__ == "__main__":
    main()
