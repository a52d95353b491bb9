"""docs/metrics.md shows one example per message type, with exactly the fields the code sends."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from livekit.agents.metrics import UsageSummary

from tests.test_metrics_payloads import TS, eou, llm, stt, tts, vad
from worker.metrics.payloads import TurnCounts, VadAggregator, metric_payload, session_payload
from worker.metrics.turns import TurnTracker
from worker.room_io.data_messages import DataMessageRouter

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def documented() -> dict[str, dict[str, Any]]:
    examples: dict[str, dict[str, Any]] = {}
    for block in re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        for line in block.splitlines():
            value = json.loads(line)
            if value.get("v") == 1:
                assert value["type"] not in examples, f"two examples of {value['type']}"
                examples[value["type"]] = value
    return examples


def produced() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in (stt(), eou(), llm(), tts()):
        p = metric_payload(m)
        assert p is not None
        out[p["type"]] = p
    agg = VadAggregator()
    agg.add(vad(TS))
    vad_payload = agg.flush()
    assert vad_payload is not None
    out["vad"] = vad_payload
    turns: list[dict[str, Any]] = []
    tracker = TurnTracker(turns.append)
    tracker.metrics(eou())
    tracker.reply_finished("SH_1", interrupted=False)
    out["turn"] = turns[0]
    out["session"] = session_payload(
        UsageSummary(0, 0, 0, 0.0),
        TurnCounts(0, 0),
        duration=1.0,
        data_messages=DataMessageRouter().stats(),
    )
    return out


def test_every_type_is_documented_with_the_fields_sent() -> None:
    docs, code = documented(), produced()
    assert sorted(docs) == sorted(code)
    for kind, payload in code.items():
        assert list(docs[kind]) == list(payload), kind
    assert list(docs["session"]["data_messages"]) == list(code["session"]["data_messages"])
