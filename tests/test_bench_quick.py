"""CI sanity run of the benchmarks: ``python -m bench all --quick --json ...``.

This checks that every part ran both pipelines, produced sane numbers and wrote its chart, and
that the table was printed. The headline claims are guarded as ratios measured in this one run
(both pipelines on the same machine at the same moment, so the machine's speed cancels out), never
as absolute times: ours answers faster than stock, tool calls run concurrently, the context stays
bounded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PARTS = ("voice", "turn_taking", "tools", "capacity", "memory", "startup")
PIPELINES = ("ours", "stock")


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _summary_ok(summary: dict[str, Any]) -> bool:
    return (
        summary["n"] > 0
        and _positive(summary["p50"])
        and _positive(summary["p95"])
        and summary["min"] <= summary["p50"] <= summary["p95"] <= summary["max"]
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "all",
            "--quick",
            "--json",
            str(out / "all.json"),
            "--out-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data: dict[str, Any] = json.loads((out / "all.json").read_text())
    data["_out"] = out
    data["_stdout"] = done.stdout
    return data


@pytest.mark.timeout(570)
def test_every_part_ran_with_its_chart_and_table(report: dict[str, Any]) -> None:
    assert report["quick"] is True
    assert set(report["parts"]) == set(PARTS)
    machine = report["machine"]
    assert machine["cpu_cores"] >= 1
    assert machine["python"].startswith("3.")
    assert machine["versions"]["livekit-agents"] == "0.12.21"
    for part in PARTS:
        assert (report["_out"] / f"{part}.png").stat().st_size > 1000
        assert json.loads((report["_out"] / f"{part}.json").read_text())["part"] == part
    table = report["_stdout"]
    headings = (
        "| metric",
        "ours/stock",
        "voice e2e",
        "barge-in",
        "tools",
        "capacity",
        "memory",
        "startup",
    )
    for heading in headings:
        assert heading in table


@pytest.mark.timeout(570)
def test_voice_measured_both_pipelines(report: dict[str, Any]) -> None:
    voice = report["parts"]["voice"]
    for kind in PIPELINES:
        per = voice["pipelines"][kind]
        assert per["missing"] == 0
        assert _summary_ok(per["e2e"])
        assert _summary_ok(per["floor"])
        assert per["overhead"]["n"] == per["turns"] > 0
        stages = per["stages"]
        # the timeline is ordered: final transcript, request, flush, TTS audio, recorder
        assert (
            stages["stt_final"]["p50"]
            < stages["llm_request"]["p50"]
            < stages["first_flush"]["p50"]
            < stages["tts_audio"]["p50"]
            <= stages["first_audio"]["p50"]
        )
        for pause_range in voice["config"]["pause_ranges"]:
            assert voice["cutoffs"][kind][pause_range]["pauses"] > 0
    ratio = voice["ratios_ours_over_stock"]["e2e_p50"]
    e2e = {kind: voice["pipelines"][kind]["e2e"]["p50"] for kind in PIPELINES}
    assert math.isclose(ratio, e2e["ours"] / e2e["stock"], rel_tol=0.01), (ratio, e2e)
    # ours requests at the final transcript and speaks the first sentence at once: its median
    # end-to-end latency is well under stock's
    assert ratio < 0.8, e2e


SENTENCE_END = (".", "?", "!")


@pytest.mark.timeout(570)
def test_voice_turns_without_a_sentence_end(report: dict[str, Any]) -> None:
    voice = report["parts"]["voice"]
    config = voice["config"]
    for kind in PIPELINES:
        rows = [t for t in voice["turns"] if t["pipeline"] == kind]
        ending = [t for t in rows if t["ends_sentence"]]
        unended = [t for t in rows if not t["ends_sentence"]]
        # the loopback STT really sent the finals that way
        assert all(t["transcript"].endswith(SENTENCE_END) for t in ending)
        assert not any(t["transcript"].endswith(SENTENCE_END) for t in unended)
        assert len(ending) == voice["pipelines"][kind]["turns"] == config["turns_per_pipeline"]
        per = voice["pipelines_no_sentence_end"][kind]
        assert len(unended) == per["turns"] == config["no_sentence_end_turns_per_pipeline"] > 0
        assert per["missing"] == 0
        assert _summary_ok(per["e2e"])
        assert per["stages"]["stt_final"]["p50"] < per["stages"]["first_audio"]["p50"]
    ratios = voice["ratios_ours_over_stock"]
    e2e = {kind: voice["pipelines_no_sentence_end"][kind]["e2e"]["p50"] for kind in PIPELINES}
    assert math.isclose(ratios["e2e_no_sentence_end_p50"], e2e["ours"] / e2e["stock"], rel_tol=0.01)
    assert voice["goals"]["e2e_p50_no_sentence_end_at_most_0.85s"] is (e2e["ours"] <= 0.85)
    assert voice["goals"]["e2e_p50_sentence_end_at_most_0.79s"] is (
        voice["pipelines"]["ours"]["e2e"]["p50"] <= 0.79
    )
    ours = config["ours_turn_taking"]
    if ours["turn_detector"] == "delay":
        # the delay rule waits its whole delay after a final without a sentence end (3/4 of it
        # after one with), counted from the end of speech at the earliest
        delay = ours["end_of_turn_delay_ms"] / 1000
        for t in voice["turns"]:
            if t["pipeline"] == "ours" and not t["ends_sentence"]:
                assert t["stages"]["end_of_turn"] >= delay - 0.005, t


@pytest.mark.timeout(570)
def test_voice_cutoffs_per_pause_range(report: dict[str, Any]) -> None:
    voice = report["parts"]["voice"]
    config = voice["config"]
    ranges = config["pause_ranges"]
    assert list(ranges) == ["0.3-0.8", "0.8-1.5"]
    for kind in PIPELINES:
        for name, values in ranges.items():
            low, high = (float(x) for x in name.split("-"))
            assert all(low <= v <= high for v in values)
            rows = [
                r for r in voice["pause_utterances"] if r["pipeline"] == kind and r["range"] == name
            ]
            assert all(p in values for r in rows for p in r["pauses"])
            cut = voice["cutoffs"][kind][name]
            assert cut["utterances"] == len(rows) == config["pause_utterances_per_range"]
            assert cut["pauses"] == sum(len(r["pauses"]) for r in rows) == 2 * len(rows)
            assert set(cut["by_pause"]) == {f"{v:.1f}" for v in values}
            assert sum(b["pauses"] for b in cut["by_pause"].values()) == cut["pauses"]
            # a cut-off before the first pause counts in no pause's column
            assert 0 <= sum(b["cutoffs"] for b in cut["by_pause"].values()) <= cut["cutoffs"]
            assert cut["utterances_cut"] <= cut["utterances"]
            # a pause with two replies started in it (the first withdrawn) is one pause cut
            assert cut["utterances_cut"] <= cut["pauses_cut"] <= min(cut["cutoffs"], cut["pauses"])
    short, long = voice["cutoffs"]["ours"]["0.3-0.8"], voice["cutoffs"]["ours"]["0.8-1.5"]
    goals = voice["goals"]
    assert goals["no_cutoff_in_0.3-0.8s_pauses"] is (short["pauses_cut"] == 0)
    assert goals["cutoffs_in_0.8-1.5s_pauses_at_most_2_of_24"] is (
        long["pauses_cut"] * 12 <= long["pauses"]
    )
    table = report["_stdout"]
    for row in ("final not ending a sentence p50", "cut-offs (pauses 0.3-0.8 s)", "0.8-1.5 s"):
        assert row in table


@pytest.mark.timeout(570)
def test_turn_taking_barge_in_and_short_sounds(report: dict[str, Any]) -> None:
    turn_taking = report["parts"]["turn_taking"]
    config = turn_taking["config"]
    summary = turn_taking["summary"]
    for kind in PIPELINES:
        per = summary[kind]
        assert per["barge_in_stop"]["n"] == config["barge_ins_per_pipeline"] > 0
        assert _summary_ok(per["barge_in_stop"])
        assert per["backchannels"] == config["sounds_per_pipeline"] > 0
        assert sum(per["lost_by_sound"].values()) == per["replies_lost"]
    ours, stock = summary["ours"], summary["stock"]
    # ours holds its audio back after 0.1 s of speech over it, stock interrupts after 0.5 s
    assert ours["barge_in_stop"]["p50"] < 0.6 * stock["barge_in_stop"]["p50"], (ours, stock)
    # a short sound lets ours' reply go on; stock's rule (Silero's speech duration counts its
    # trailing silence) interrupts and loses it
    assert ours["replies_lost"] < stock["replies_lost"], (ours, stock)
    goals = turn_taking["goals"]
    assert goals["barge_in_stop_p50_at_most_0.3_s"] is (ours["barge_in_stop"]["p50"] <= 0.3)
    assert goals["no_reply_lost_to_a_backchannel"] is (ours["replies_lost"] == 0)


@pytest.mark.timeout(570)
def test_tools_capacity_memory_startup_fields(report: dict[str, Any]) -> None:
    parts = report["parts"]
    tools = parts["tools"]
    for kind in PIPELINES:
        for n in tools["config"]["counts"]:
            row = tools["pipelines"][kind][str(n)]
            assert _summary_ok(row["tool_phase"])
            assert _summary_ok(row["answer_start"])
            assert row["tools_finished"]["p50"] == n
    # ours runs a round's tool calls concurrently: four take about as long as one (stock runs
    # them one after another: about four times as long)
    ours = {n: tools["pipelines"]["ours"][str(n)]["tool_phase"]["p50"] for n in (1, 4)}
    assert ours[4] < 1.5 * ours[1], ours
    capacity = parts["capacity"]
    kinds = {r["kind"] for r in capacity["runs"]}
    assert kinds == {"ours", "stock", "none"}
    for r in capacity["runs"]:
        assert _positive(r["cpu_percent_per_session"]["mean"])
        assert _positive(r["uss_mb_per_session"]["mean"])
        assert isinstance(r["real_time"], bool)
        if r["kind"] != "none":
            assert r["turns"] > 0
    memory = parts["memory"]
    for kind in PIPELINES:
        per = memory["pipelines"][kind]
        assert per["failed_turns"] == 0
        assert len(per["samples"]) >= 2
        assert all(_positive(s["rss_mb"]) and s["context_tokens"] > 0 for s in per["samples"])
    ours_end = memory["pipelines"]["ours"]["end"]
    assert ours_end["images"] >= 1  # media reached the context
    assert ours_end["audio"] >= 1
    # ...and is bounded (ContextLimits' documented defaults: images in the last 2 turns, audio
    # in the last one, at most 6000 estimated tokens) while a new image and audio come every turn
    for s in memory["pipelines"]["ours"]["samples"]:
        assert s["images"] <= 2, s
        assert s["audio"] <= 1, s
        assert s["context_tokens"] <= 6000, s
    startup = parts["startup"]
    for kind in PIPELINES:
        per = startup["pipelines"][kind]
        assert _summary_ok(per["listening"])
        assert _summary_ok(per["milestones"]["track_published"])
