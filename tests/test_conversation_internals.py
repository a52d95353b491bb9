"""The private members of livekit-agents 0.12.21 that ``worker.conversation`` reaches (its last
section) still exist with the meaning it relies on: this fails loudly on a framework upgrade,
before any conversation misbehaves. The end-to-end tests (tests/test_conversation_*.py) show what
each access is for.
"""

from __future__ import annotations

import asyncio
import inspect

from livekit import rtc
from livekit.agents.pipeline import (
    VoicePipelineAgent,
    agent_output,
    agent_playout,
    human_input,
    pipeline_agent,
)
from livekit.agents.pipeline.speech_handle import SpeechHandle

from worker.config import load_settings
from worker.providers import build_providers, load_vad

AGENT_MEMBERS: dict[str, object] = {
    "_playing_speech": None,
    "_pending_agent_reply": None,
    "_speech_q": [],
    "_human_input": None,
    "_agent_output": None,
    "_agent_reply_task": None,
    "_update_state_task": None,
    "_transcribed_text": "",
}
"""Instance members (and their value before ``start()``)."""
AGENT_METHODS = (
    "_update_state",
    "_link_participant",
    "_on_participant_connected",
    "_synthesize_agent_reply",
)


async def test_the_pipeline_internals_conversation_uses_are_there() -> None:
    settings = load_settings(
        {"DEEPGRAM_API_KEY": "dg-test", "OPENAI_API_KEY": "sk-test"}, dotenv=None
    )
    vad = load_vad()
    providers = build_providers(settings, vad=vad)
    agent = VoicePipelineAgent(vad=vad, stt=providers.stt, llm=providers.llm, tts=providers.tts)
    try:
        for name, value in AGENT_MEMBERS.items():
            assert getattr(agent, name) == value, name
        assert isinstance(agent._track_published_fut, asyncio.Future)
        assert not agent._track_published_fut.done()
        assert hasattr(agent._deferred_validation, "aclose")
        # the transcript the next end-of-turn decision looks at (reset when it validates)
        assert agent._deferred_validation._last_final_transcript == ""
        assert list(inspect.signature(agent._synthesize_agent_reply).parameters) == []
        for name in AGENT_METHODS:
            assert callable(getattr(agent, name)), name
        assert list(inspect.signature(agent._update_state).parameters) == ["state", "delay"]
        assert list(inspect.signature(agent._link_participant).parameters) == ["identity"]
        # the name _link_participant builds its input by, and what MicrophoneInput overrides
        assert pipeline_agent.HumanInput is human_input.HumanInput
        recognize = human_input.HumanInput._recognize_task
        assert list(inspect.signature(recognize).parameters) == ["self", "audio_stream"]
        assert "_subscribed_track" in inspect.getsource(human_input.HumanInput.__init__)
        assert "_noise_cancellation" in inspect.getsource(human_input.HumanInput.__init__)

        # a speech's nesting future: None until it plays, done once its nested speeches are
        speech = SpeechHandle.create_assistant_reply(
            allow_interruptions=True, add_to_chat_ctx=True, user_question="hi"
        )
        assert speech._nested_speech_done_fut is None
        assert speech.nested_speech_done  # "True if not started or done"

        # the playout's task, and the output holding the playout
        source = rtc.AudioSource(24000, 1)
        playout = agent_playout.AgentPlayout(audio_source=source)
        assert playout._playout_atask is None
        output = agent_output.AgentOutput(
            room=None,  # type: ignore[arg-type]  # only stored
            agent_playout=playout,
            llm=providers.llm,
            tts=providers.tts,
        )
        assert output._agent_playout is playout
        await source.aclose()
    finally:
        await providers.aclose()
