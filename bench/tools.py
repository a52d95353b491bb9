"""Part 2, tools: one reply with N tool calls of 1 s each, ours vs stock.

The user asks; the LLM answers with N ``lookup`` calls (no text), then, given their results,
with a two-sentence answer. Measured from the moment the server finished sending the
tool-call response (``T``):

- tool phase = the follow-up LLM request (with the results) reaching the server - T;
- answer start = the answer's first audible frame at the room's recorder - T;
- tools span = first tool start to last tool end, and how many ran at once.

Ours runs the calls concurrently inside the LLM stream (``worker.tools.runner``); stock gets
the same tools as ``fnc_ctx`` and runs them one after another (pipeline_agent.py:985-1006).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from livekit.agents import llm

from tests.loopback.openai_server import Reply, ToolCall

from .harness import (
    PIPELINES,
    BenchSession,
    Pipeline,
    ProviderScript,
    SessionOptions,
    first_after,
    first_audible_after,
    open_session,
    push_speech,
    ratio,
    rounded,
    summarize,
    voiced_clip,
)

logger = logging.getLogger("bench.tools")

UTTERANCE = "Please look these up for me"
ANSWER = (
    "I found everything you asked for. Each item is in stock and can be delivered to you "
    "tomorrow morning before ten o'clock."
)


class SlowTools(llm.FunctionContext):
    """The benchmark's tool: a lookup that takes ``seconds`` (class-wide, set by the bench)."""

    seconds: ClassVar[float] = 1.0
    calls: ClassVar[list[tuple[float, float]]] = []
    """(start, end) perf_counter of every finished call."""

    @llm.ai_callable()
    async def lookup(
        self, item: Annotated[str, llm.TypeInfo(description="what to look up")]
    ) -> str:
        """Look an item up in the slow inventory system."""
        started = time.perf_counter()
        await asyncio.sleep(SlowTools.seconds)
        SlowTools.calls.append((started, time.perf_counter()))
        return f"{item}: in stock"


TOOLS_SPEC = f"{__name__}:SlowTools"


@dataclass(frozen=True)
class ToolsConfig:
    counts: tuple[int, ...]
    repeats: int
    tool_seconds: float

    @staticmethod
    def for_mode(quick: bool) -> ToolsConfig:
        if quick:
            return ToolsConfig(counts=(1, 4), repeats=1, tool_seconds=0.3)
        return ToolsConfig(counts=(1, 2, 4, 8), repeats=3, tool_seconds=1.0)


def _max_overlap(calls: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in calls] + [(e, -1) for _, e in calls])
    best = cur = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


async def tool_turn(session: BenchSession, n: int) -> dict[str, Any]:
    prov = session.providers

    def reply_for(body: dict[str, Any]) -> Reply:
        if body["messages"][-1].get("role") == "tool":
            return prov.reply(ANSWER)
        calls = [
            ToolCall("lookup", json.dumps({"item": f"item {i + 1}"}), id=f"call_{i}")
            for i in range(n)
        ]
        return prov.reply(tool_calls=calls)

    prov.reply_for = reply_for
    prov.dg.listen.default_transcript = "Please look these up for me."
    first_request = len(prov.oai.requests)
    SlowTools.calls.clear()
    _, e = await push_speech(session.mic, voiced_clip(UTTERANCE))
    timeout = 20.0 + n * SlowTools.seconds

    def answered() -> bool:
        reqs = prov.oai.requests[first_request:]
        return any(r.body["messages"][-1].get("role") == "tool" for r in reqs)

    await session.wait_for(answered, timeout, "follow-up request")
    follow_at = next(
        r.received_at
        for r in prov.oai.requests[first_request:]
        if r.body["messages"][-1].get("role") == "tool"
    )
    await session.wait_reply_done(follow_at, timeout=20.0)
    await session.wait_quiet(0.5, timeout=timeout)
    requests = list(enumerate(prov.oai.requests))[first_request:]
    call_index = max(
        (i for i, r in requests if r.body["messages"][-1].get("role") != "tool"), default=None
    )
    follow = next((r for i, r in requests if r.body["messages"][-1].get("role") == "tool"), None)
    t_resp = prov.done_at.get(call_index) if call_index is not None else None
    r2 = follow.received_at if follow is not None else None
    p = first_audible_after(session.recorder, r2) if r2 is not None else None
    calls = list(SlowTools.calls)
    started_speaking = first_after(session.probe.events["agent_started_speaking"], r2 or e)
    return {
        "pipeline": session.kind,
        "n": n,
        "tool_phase": None if t_resp is None or r2 is None else round(r2 - t_resp, 4),
        "answer_start": None if t_resp is None or p is None else round(p - t_resp, 4),
        "answer_start_event": (
            None
            if t_resp is None or started_speaking is None
            else round(started_speaking - t_resp, 4)
        ),
        "e2e": rounded(None if p is None else p - e),
        "tools_finished": len(calls),
        "tools_span": round(max(c[1] for c in calls) - min(c[0] for c in calls), 4)
        if calls
        else None,
        "tools_at_once": _max_overlap(calls),
        "first_tool_after_response": (
            None if t_resp is None or not calls else round(min(c[0] for c in calls) - t_resp, 4)
        ),
    }


async def run(quick: bool = False) -> dict[str, Any]:
    cfg = ToolsConfig.for_mode(quick)
    SlowTools.seconds = cfg.tool_seconds
    script = ProviderScript(tts_seconds_per_char=0.01) if quick else ProviderScript()
    sessions: dict[Pipeline, BenchSession] = {}
    rows: list[dict[str, Any]] = []
    try:
        for kind in PIPELINES:
            sessions[kind] = await open_session(kind, script, SessionOptions(tools=TOOLS_SPEC))
        await asyncio.sleep(1.0)
        for rep in range(cfg.repeats):
            for n in cfg.counts:
                order = PIPELINES if (rep + n) % 2 == 0 else PIPELINES[::-1]
                for kind in order:
                    row = await tool_turn(sessions[kind], n)
                    row["repeat"] = rep
                    rows.append(row)
                    sessions[kind].trim_records(time.perf_counter())
                    logger.info("tool turn", extra=row)
    finally:
        for session in sessions.values():
            await session.aclose()
    per: dict[str, dict[str, Any]] = {}
    for kind in PIPELINES:
        per[kind] = {}
        for n in cfg.counts:
            mine = [r for r in rows if r["pipeline"] == kind and r["n"] == n]
            per[kind][str(n)] = {
                "tool_phase": summarize(r["tool_phase"] for r in mine),
                "answer_start": summarize(r["answer_start"] for r in mine),
                "tools_at_once": max((r["tools_at_once"] for r in mine), default=0),
                "tools_finished": summarize(r["tools_finished"] for r in mine),
            }
    ratios = {
        str(n): {
            "tool_phase_p50": ratio(
                per["ours"][str(n)]["tool_phase"]["p50"], per["stock"][str(n)]["tool_phase"]["p50"]
            ),
            "answer_start_p50": ratio(
                per["ours"][str(n)]["answer_start"]["p50"],
                per["stock"][str(n)]["answer_start"]["p50"],
            ),
        }
        for n in cfg.counts
    }
    ours_phase = [per["ours"][str(n)]["tool_phase"]["p50"] for n in cfg.counts]
    goal = None
    if all(x is not None for x in ours_phase):
        # "about one tool duration for every N": within 20% of it
        goal = bool(max(p for p in ours_phase if p is not None) <= 1.2 * cfg.tool_seconds)
    return {
        "part": "tools",
        "config": {
            "counts": list(cfg.counts),
            "repeats": cfg.repeats,
            "tool_seconds": cfg.tool_seconds,
            "providers": script.__dict__,
            "definitions": {
                "T": "the loopback LLM finished sending the tool-call response",
                "tool_phase": "follow-up LLM request (with the tool results) at the server - T",
                "answer_start": "first audible frame of the answer at the recorder - T",
            },
        },
        "pipelines": per,
        "ratios_ours_over_stock": ratios,
        "goals": {"ours_tool_phase_about_one_tool_for_every_n": goal},
        "turns": rows,
    }


def table(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    per = result["pipelines"]
    measures = (
        ("tool_phase", "tool response -> next LLM request p50"),
        ("answer_start", "tool response -> answer audio p50"),
    )
    for key, label in measures:
        for n in result["config"]["counts"]:
            o = per["ours"][str(n)][key]["p50"]
            s = per["stock"][str(n)][key]["p50"]
            r = ratio(o, s)
            rows.append(
                (
                    f"tools: N={n} x {result['config']['tool_seconds']:g} s, {label}",
                    "-" if o is None else f"{o:.2f} s",
                    "-" if s is None else f"{s:.2f} s",
                    "-" if r is None else f"{r:.2f}",
                )
            )
    return rows


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = result["config"]["counts"]
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = np.arange(len(counts))
    colors = {"ours": "tab:blue", "stock": "tab:gray"}
    for off, kind in ((-0.2, "ours"), (0.2, "stock")):
        per = result["pipelines"][kind]
        phase = [per[str(n)]["tool_phase"]["p50"] or 0 for n in counts]
        answer = [per[str(n)]["answer_start"]["p50"] or 0 for n in counts]
        ax.bar(xs + off, answer, 0.4, color=colors[kind], alpha=0.45)
        ax.bar(
            xs + off,
            phase,
            0.4,
            color=colors[kind],
            label=f"{kind}: tool phase (answer start: light)",
        )
    ax.set_xticks(xs, [f"N={n}" for n in counts])
    ax.set_ylabel("seconds after the tool-call response")
    ax.set_title(
        f"{result['config']['tool_seconds']:g} s tools: "
        "concurrent (ours) vs sequential (stock), p50"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
