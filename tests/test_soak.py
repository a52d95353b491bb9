"""The short soak (CI): every fault kind of bench/soak.py once, four sessions side by side.

Each turn is a spoken utterance through the in-process room, real VAD, the real Deepgram plugin
and the LLM plugin against loopback servers, with one fault injected (bench/soak.py says how the
run is fast-forwarded). Nothing may be lost: every turn has its ``turn`` metric with the
expected outcome, and afterwards no task, stream or connection is left, the event loop saw no
unhandled error and no fake key appeared anywhere. The long run: ``python -m bench.soak``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict

import pytest

from bench.soak import KINDS, MemorySample, SoakOptions, SoakReport, run_soak

pytestmark = pytest.mark.timeout(180)


@contextlib.contextmanager
def without_log_capture() -> Iterator[None]:
    """pytest keeps every log record for its report, and records of exceptions keep their
    tracebacks, whose frames keep streams alive: the soak's leak check would count those.
    The soak formats and scans every record itself (for the fake keys)."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    for handler in handlers:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.addHandler(handler)


async def test_every_fault_kind_is_survived_and_every_turn_accounted_for() -> None:
    options = SoakOptions(turns=len(KINDS), sessions=4, round_robin=True, turn_timeout=60)
    with without_log_capture():
        report = await run_soak(options)
    summary = report.summary()

    assert summary["problems"] == []
    assert summary["turns"] == len(KINDS)
    assert summary["turns_lost"] == 0
    assert set(summary["faults"]) == set(KINDS)
    assert all(row["survived"] == row["injected"] for row in summary["faults"].values())
    # the turns ended every way a turn can end, each as its fault predicts
    assert set(summary["outcomes"]) == {"answered", "apologised", "interrupted", "cut_short"}
    assert [t.outcome for t in report.turns if t.kind == "barge_in"] == ["interrupted"]
    assert [t.error for t in report.turns if t.kind == "tts_down"] == ["tts"]
    assert sum(summary["bad_inputs"].values()) >= 8
    assert summary["streams_left"] == []
    assert summary["tasks"]["left"] == []
    assert summary["connections_left"] == 0
    assert summary["leaked_keys"] == 0
    memory = summary["memory"]
    assert [s["turns"] for s in memory["samples"]] == list(range(1, len(KINDS) + 1))
    growth = memory["growth_per_100_turns"]
    assert all(growth[k] is not None for k in ("rss_mb", "heap_blocks_k", "malloc_used_mb"))
    assert growth["traced_mb"] is None  # not tracing
    assert memory["heap_growth"]["from_turn"] == memory["warmup_turns"]


def sample(turns: int, rss: float, heap: float) -> MemorySample:
    return MemorySample(
        turns=turns,
        rss_mb=rss,
        heap_blocks_k=heap,
        gc_objects_k=100.0,
        tasks=40,
        malloc_used_mb=50.0,
        malloc_free_mb=None,
    )


def test_growth_per_100_turns_is_the_slope_after_the_warm_up() -> None:
    """The first turns fill caches and pools (a steep climb that is no leak): the growth
    reported is the least-squares slope over the samples after the warm-up only."""
    report = SoakReport(options=asdict(SoakOptions(turns=1000, warmup=300)))
    warming = [sample(t, 100.0 + t, 500.0 + t) for t in (100, 200)]  # +100 MB per 100 turns
    # after it: RSS +2 MB per 100 turns under +-1 MB of noise, the heap flat
    after = [
        sample(t, 400.0 + t / 50 + (1 if i % 2 else -1), 800.0)
        for i, t in enumerate(range(300, 1001, 100))
    ]
    report.memory = warming + after

    growth = report.growth_per_100_turns()

    assert growth["rss_mb"] is not None
    assert 1.5 < growth["rss_mb"] < 2.5
    assert growth["heap_blocks_k"] == 0.0
    assert growth["gc_objects_k"] == 0.0
    assert growth["malloc_free_mb"] is None  # never sampled
    summary = report.summary()["memory"]
    assert summary["warmup_turns"] == 300
    assert summary["growth_per_100_turns"] == growth
