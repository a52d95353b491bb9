"""Part 5, startup: job assignment -> agent listening, in a process like a job process.

Each measurement is a fresh Python process (``python -m bench.startup --child ours|stock``)
that does what the framework's job process does before a job arrives (imports the
entrypoint's module, runs prewarm), with the user already in the in-process room (microphone
and camera published). Then, like ``ipc/job_proc_lazy_main.py`` on ``StartJobRequest``, it
opens the job's HTTP session context, builds a real ``JobContext`` on the room and runs the
entrypoint: ``worker.entrypoint.entrypoint`` (ours) or the documented stock one (connect,
wait for the participant, ``VoicePipelineAgent(...).start``). Milestones after ``t0`` (the
job assignment reaching the process):

- ``track_published``: the agent's audio track is published;
- ``mic_subscribed``: the agent opened its audio stream on the participant's microphone;
- ``first_vad_inference``: the first VAD inference on that audio (the agent is listening);
- ``stt_connected``: the STT websocket reached the (loopback) provider.

listening = max(track_published, first_vad_inference). Not included: the room connection to
a LiveKit server (a network round trip; the in-process room is connected already).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped]  # no stubs installed

from .harness import PIPELINES, Pipeline, Row, exit_child, ms_row, ratio, summarize

logger = logging.getLogger("bench.startup")

# ------------------------------------------------------------------ the child (a job process)


async def stock_entrypoint(ctx: Any) -> None:
    """The entrypoint a stock 0.12 user writes (as in the framework's examples)."""
    from livekit.agents import AutoSubscribe, llm
    from livekit.agents.pipeline import VoicePipelineAgent
    from livekit.plugins import deepgram

    from plugins.openai_llm import LLM
    from worker.config import Settings

    env = ctx.proc.userdata["env"]
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    participant = await ctx.wait_for_participant()
    agent = VoicePipelineAgent(
        vad=ctx.proc.userdata["vad"],
        stt=deepgram.STT(api_key="dg-bench", base_url=env["DEEPGRAM_STT_URL"]),
        llm=LLM(base_url=env["OPENAI_BASE_URL"], api_key="sk-bench"),
        tts=deepgram.TTS(api_key="dg-bench", base_url=env["DEEPGRAM_TTS_URL"]),
        chat_ctx=llm.ChatContext().append(role="system", text=Settings().instructions),
    )
    ctx.proc.userdata["agent"] = agent
    agent.start(ctx.room, participant.identity)


async def _child(kind: Pipeline) -> dict[str, Any]:

    from livekit.agents import JobContext
    from livekit.agents.job import JobAcceptArguments, RunningJobInfo
    from livekit.agents.pipeline import VoicePipelineAgent
    from livekit.agents.utils import http_context
    from livekit.protocol import agent as agent_proto
    from livekit.protocol import models

    import worker.entrypoint
    from worker.local_room import LocalRoom, as_rtc_room
    from worker.pipeline.adapter import close_pipeline_agent

    from .harness import (
        BENCH_LIVEKIT_ENV,
        CAMERA_FPS,
        CAMERA_SIZE,
        MIC_RATE,
        CameraFeed,
        LoopbackProviders,
        ProviderScript,
        first_audible_after,
        prewarmed_job_process,
        push_speech,
        voiced_clip,
    )
    from .voice import TURNS

    # The providers stand for remote services: started before the job, not measured.
    providers = LoopbackProviders(ProviderScript())
    turn = TURNS[0]
    providers.reply_for = lambda body: providers.reply(turn.reply)
    providers.dg.listen.default_transcript = turn.transcript
    clip = voiced_clip(turn.utterance)
    await providers.start()
    t_prewarm = time.perf_counter()
    proc = prewarmed_job_process(kind, providers.env())
    prewarm_s = time.perf_counter() - t_prewarm
    if kind == "ours":
        entrypoint = worker.entrypoint.entrypoint
    else:
        proc.userdata["env"] = providers.env()
        entrypoint = stock_entrypoint
    process_age = time.time() - psutil.Process().create_time()

    room = LocalRoom("bench-room")
    user = room.add_participant("user")
    mic = user.publish_microphone(sample_rate=MIC_RATE)
    camera = CameraFeed(
        user.publish_camera(width=CAMERA_SIZE[0], height=CAMERA_SIZE[1]), CAMERA_SIZE, CAMERA_FPS
    )
    camera.start()
    await asyncio.sleep(0.5)  # the participant is in the room, media flowing

    stamps: dict[str, float] = {}
    agents: list[VoicePipelineAgent] = []

    is_listening = asyncio.Event()

    def stamp(name: str) -> None:
        stamps.setdefault(name, time.perf_counter())
        if {"track_published", "first_vad_inference"} <= stamps.keys():
            is_listening.set()

    def on_track(*_: Any) -> None:
        stamp("track_published")

    room.on("local_track_published", on_track)

    # Observe the agent whichever entrypoint builds it (both build a VoicePipelineAgent).
    original_start = VoicePipelineAgent.start

    def observed_start(self: VoicePipelineAgent, room: Any, participant: Any = None) -> None:
        original_start(self, room, participant)
        stamps.setdefault("agent_started", time.perf_counter())
        agents.append(self)
        hi = self._human_input
        if hi is not None:
            if hi._subscribed_track is not None:
                stamps.setdefault("mic_subscribed", time.perf_counter())
            hi.on("vad_inference_done", lambda *_: stamp("first_vad_inference"))

    VoicePipelineAgent.start = observed_start  # type: ignore[method-assign]

    job = agent_proto.Job(
        id="AJ_bench", room=models.Room(name="bench-room"), type=agent_proto.JobType.JT_ROOM
    )
    info = RunningJobInfo(
        accept_arguments=JobAcceptArguments(name="", identity="agent", metadata=""),
        job=job,
        url=BENCH_LIVEKIT_ENV["LIVEKIT_URL"],
        token="bench",
        worker_id="W_bench",
    )
    shutdown = asyncio.Event()

    # --- t0: the job reaches the process (StartJobRequest) ---------------------------------
    t0 = time.perf_counter()
    http_context._new_session_ctx()
    ctx = JobContext(
        proc=proc,
        info=info,
        room=as_rtc_room(room),
        on_connect=lambda: None,
        on_shutdown=lambda reason: shutdown.set(),
        inference_executor=None,  # type: ignore[arg-type]
    )
    job_task = asyncio.create_task(entrypoint(ctx), name="bench:job")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(is_listening.wait(), 15.0)
    conns = providers.dg.listen_connections
    with contextlib.suppress(TimeoutError):
        await providers.dg.wait_until(lambda: bool(conns), timeout=5.0)
    if conns:
        stamps["stt_connected"] = conns[0].opened_at - time.monotonic() + time.perf_counter()

    # The job's first reply: one-time costs (lazy imports, first connections) land here.
    first_reply = None
    if room.outbox.audio:
        await asyncio.sleep(0.5)
        _, e = await push_speech(mic, clip)
        recorder = room.outbox.audio[0]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_audible_after(recorder, e), 15.0)
        p = first_audible_after(recorder, e)
        first_reply = None if p is None else round(p - e, 4)

    rel = {k: round(v - t0, 4) for k, v in stamps.items()}
    listening = None
    if "track_published" in rel and "first_vad_inference" in rel:
        listening = max(rel["track_published"], rel["first_vad_inference"])
    result = {
        "pipeline": kind,
        "process_start_to_prewarmed_s": round(process_age, 3),
        "prewarm_s": round(prewarm_s, 4),
        "milestones": rel,
        "listening": listening,
        "first_reply_e2e": first_reply,
    }
    # out before the teardown: a failure there must not lose the measurement
    print(json.dumps(result), flush=True)

    # --- teardown (not measured) -----------------------------------------------------------
    await camera.aclose()
    if kind == "ours":
        await room.remove_participant(user.identity)  # the conversation ends, the job closes
        await asyncio.wait_for(shutdown.wait(), 15)
    for agent in agents:
        if kind == "stock":
            await close_pipeline_agent(agent)
            await agent.llm.aclose()
            await agent.stt.aclose()
            await agent.tts.aclose()
    await asyncio.wait_for(job_task, 15)
    await room.aclose()
    await http_context._close_http_ctx()
    await providers.aclose()
    return result


async def _audible_after(recorder: Any, t: float) -> None:
    from .harness import first_audible_after

    while first_audible_after(recorder, t) is None:
        await recorder.wait_for_audio(recorder.audible_seconds + 0.01, timeout=15.0)


# ------------------------------------------------------------------ the orchestrator


def _errors(stderr: str) -> str:
    """stderr without the framework's known shutdown noise (a cancelled Deepgram receive
    reported as "_GatheringFuture exception was never retrieved")."""
    blocks = stderr.split("Traceback (most recent call last):")
    kept = [b for b in blocks[1:] if "CancelledError" not in b.strip().splitlines()[-1]]
    return (blocks[0][-1500:] + "".join(kept)[-3000:]) or stderr[-2000:]


async def _measure(kind: Pipeline) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.startup",
        "--child",
        kind,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"startup child ({kind}) failed: {_errors(err.decode())}")
    result: dict[str, Any] = json.loads(lines[0])
    result["exit_code"] = proc.returncode
    if proc.returncode != 0:
        result["teardown_error"] = _errors(err.decode())[-1000:]
    return result


async def run(quick: bool = False) -> dict[str, Any]:
    repeats = 1 if quick else 10
    rows: list[dict[str, Any]] = []
    for i in range(repeats):
        order = PIPELINES if i % 2 == 0 else PIPELINES[::-1]
        for kind in order:
            rows.append(await _measure(kind))
    per: dict[str, dict[str, Any]] = {}
    milestones = ("agent_started", "track_published", "mic_subscribed", "first_vad_inference")
    for kind in PIPELINES:
        mine = [r for r in rows if r["pipeline"] == kind]
        per[kind] = {
            "runs": len(mine),
            "listening": summarize(r["listening"] for r in mine),
            "milestones": {
                m: summarize(r["milestones"].get(m) for r in mine)
                for m in (*milestones, "stt_connected")
            },
            "process_start_to_prewarmed_s": summarize(
                r["process_start_to_prewarmed_s"] for r in mine
            ),
            "prewarm_s": summarize(r["prewarm_s"] for r in mine),
            "first_reply_e2e": summarize(r["first_reply_e2e"] for r in mine),
        }
    o, s = per["ours"]["listening"], per["stock"]["listening"]
    return {
        "part": "startup",
        "config": {
            "repeats": repeats,
            "process": "fresh python process per measurement: imports, prewarm, then the job",
            "t0": "a StartJobRequest reaches the job process (JobContext built, entrypoint run)",
            "listening": "max(agent track published, first VAD inference on the microphone)",
            "excluded": "the room connection to a LiveKit server (network)",
            "first_reply_e2e": "then one user turn: end of speech -> first audible reply frame "
            "(the job's first reply pays one-time costs)",
        },
        "pipelines": per,
        "ratios_ours_over_stock": {
            "listening_p50": ratio(o["p50"], s["p50"]),
            "listening_p95": ratio(o["p95"], s["p95"]),
        },
        "goals": {"ours_listening_p95_below_300ms": None if o["p95"] is None else o["p95"] < 0.3},
        "runs": rows,
    }


def table(result: dict[str, Any]) -> list[Row]:
    rows = []
    per, rat = result["pipelines"], result["ratios_ours_over_stock"]
    for q in ("p50", "p95"):
        rows.append(
            ms_row(
                f"startup: job assignment -> listening {q}",
                per["ours"]["listening"][q],
                per["stock"]["listening"][q],
                rat[f"listening_{q}"],
            )
        )
    return rows


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("agent_started", "track_published", "mic_subscribed", "first_vad_inference")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = np.arange(len(names))
    for off, kind, color in ((-0.2, "ours", "tab:blue"), (0.2, "stock", "tab:gray")):
        ms = result["pipelines"][kind]["milestones"]
        ax.bar(
            xs + off,
            [(ms[n]["p50"] or 0) * 1000 for n in names],
            0.4,
            color=color,
            label=kind,
            yerr=[
                [0] * len(names),
                [((ms[n]["p95"] or 0) - (ms[n]["p50"] or 0)) * 1000 for n in names],
            ],
        )
    ax.axhline(300, color="k", linestyle=":", linewidth=0.8, label="target 300 ms")
    ax.set_xticks(xs, names)
    ax.set_ylabel("ms after job assignment (p50, bar to p95)")
    ax.set_title("startup in a prewarmed job process")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=PIPELINES, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("livekit").setLevel(logging.ERROR)
    logging.getLogger("worker").setLevel(logging.ERROR)
    asyncio.run(_child(args.child))
    exit_child()


if __name__ == "__main__":
    main()
