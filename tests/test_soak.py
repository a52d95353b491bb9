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

import pytest

from bench.soak import KINDS, SoakOptions, run_soak

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
