"""The participant leaves in the middle of a turn: the conversation ends with "participant_left",
and closing the session closes everything it opened (no task left, no ResourceWarning, every
provider connection closed), like a job's shutdown does.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import pytest

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply

pytestmark = pytest.mark.timeout(60)  # a hang fails fast (the default is 300 s)


async def test_participant_leaving_mid_turn_ends_and_closes_everything(
    make_session: SessionFactory,
) -> None:
    own = asyncio.current_task()
    before = asyncio.all_tasks()
    answer = " ".join(["This answer takes a long time to stream and to speak."] * 6)

    def respond(body: dict[str, Any]) -> Reply:
        return Reply(text=answer, ttft=0.1, tokens_per_second=8)  # still streaming at the leave

    h = await make_session(respond)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        await h.utter("tell me a long story")
        await h.wait_for_event("agent_started_speaking", timeout=20)
        assert not h.oai.requests[0].done.is_set()  # the LLM is still streaming: mid-turn

        await h.stop_camera()  # the participant's devices stop with them
        await h.room.remove_participant(h.user.identity)
        reason = await asyncio.wait_for(h.conversation.wait_done(), timeout=5)
        assert reason == "participant_left"

        await h.parts.aclose()  # what run_session does once the conversation is done
        request = h.oai.requests[0]
        await asyncio.wait_for(request.done.wait(), timeout=5)  # the server saw the client go
        await h.aclose()  # then the room and the loopback servers go
        gc.collect()

    # every connection the session opened was closed by the session
    assert request.client_disconnected  # the LLM stream was closed mid-answer
    assert h.dg.listen_connections
    assert all(c.closed_at is not None for c in h.dg.listen_connections)
    assert h.dg.speak_connections
    assert all(c.closed_at is not None for c in h.dg.speak_connections)
    # nothing is left running but this test, and nothing leaked a resource
    left = asyncio.all_tasks() - before - {own}
    assert not left, [t.get_name() for t in left]
    assert asyncio.all_tasks() - before == set()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
