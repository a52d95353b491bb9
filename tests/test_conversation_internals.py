"""The seam to livekit-agents 0.12: ``worker.pipeline.adapter`` is the one module that reaches the
framework's private members, exactly the ones it lists, and they still exist with the meaning it
relies on. This fails loudly on a framework upgrade, before any conversation misbehaves; the
end-to-end tests (tests/test_conversation_*.py) show what each access is for.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path

import aiohttp
from livekit import rtc
from livekit.agents import llm, stt, tts
from livekit.agents.pipeline import (
    VoicePipelineAgent,
    agent_output,
    agent_playout,
    human_input,
    pipeline_agent,
)
from livekit.agents.pipeline.speech_handle import SpeechHandle
from livekit.agents.stt.stream_adapter import StreamAdapter, StreamAdapterWrapper
from livekit.agents.worker import Worker, _DefaultLoadCalc

from worker.config import load_settings
from worker.pipeline import adapter
from worker.providers.fallback_llm import FallbackLLM
from worker.providers.selection import build_llm, build_stt, build_tts, load_vad

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = ROOT / "worker" / "pipeline" / "adapter.py"

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
    "_validate_reply_if_possible",
)

STATED_ELSEWHERE = {
    ("plugins/openai_llm/media.py", "_cache"): "ChatImage._cache: documented for LLM plugins",
    ("plugins/silero_vad/vad.py", "_VADOptions"): "type-only import: VAD.load()'s options",
    ("plugins/openai_llm/tool_calls.py", "_create_ai_function_info"): "what LLM plugins call",
}
"""Private names reached outside the adapter, each explained next to its line."""


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _names_reached(tree: ast.AST, *, own: set[str], include_self: bool) -> set[str]:
    """Private attribute names a module reaches on objects (``self.x`` only if include_self),
    private names it imports from livekit, and private names passed to getattr()."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if include_self or not on_self:
                found.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("livekit"):
            found.update(a.name for a in node.names if _private(a.name))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.add(node.args[1].value)
    return found


def _own_members(tree: ast.Module, class_name: str) -> set[str]:
    """Names a class of ours defines itself (methods and ``self.x = ...``)."""
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    own: set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            own.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            own.add(node.attr)
    return own


def test_the_adapter_lists_exactly_the_private_members_it_reaches() -> None:
    tree = ast.parse(ADAPTER.read_text())
    own = _own_members(tree, "VoicePipeline")
    reached = _names_reached(tree, own=own, include_self=True)
    assert reached == set(adapter.PRIVATE_MEMBERS)
    docstring = ast.get_docstring(tree) or ""
    undocumented = sorted(n for n in reached if n not in docstring)
    assert undocumented == [], "each private member is explained in the adapter's docstring"


def test_no_other_module_reaches_a_framework_private() -> None:
    """Without types, ``x._room`` on a class of ours and on the framework's look alike: names our
    own classes define (``self._room = ...`` somewhere) are left to the adapter's review."""
    paths = [
        p
        for p in sorted([*ROOT.glob("worker/**/*.py"), *ROOT.glob("plugins/**/*.py")])
        if p != ADAPTER
    ]
    trees = {p: ast.parse(p.read_text()) for p in paths}
    ours = set().union(*(_self_stores(tree) for tree in trees.values()))
    offenders: list[str] = []
    for path, tree in trees.items():
        rel = path.relative_to(ROOT).as_posix()
        reached = _names_reached(tree, own=ours, include_self=False)
        framework = {
            n
            for n in reached
            if n in adapter.PRIVATE_MEMBERS
            or n in ("_VADOptions", "_cache", "_is_optional_type")
            or _imports_private_from_livekit(tree, n)
        }
        offenders += [f"{rel}: {n}" for n in framework if (rel, n) not in STATED_ELSEWHERE]
    assert offenders == []


def _self_stores(tree: ast.Module) -> set[str]:
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }


def _imports_private_from_livekit(tree: ast.Module, name: str) -> bool:
    return any(
        isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("livekit")
        and any(a.name == name for a in node.names)
        for node in ast.walk(tree)
    )


async def test_the_pipeline_internals_the_adapter_uses_are_there() -> None:
    settings = load_settings(
        {"DEEPGRAM_API_KEY": "dg-test", "OPENAI_API_KEY": "sk-test"}, dotenv=None
    )
    vad = load_vad()
    async with aiohttp.ClientSession() as http:
        speech_to_text = build_stt(settings, http_session=http)
        text_to_speech = build_tts(settings, http_session=http)
        language_model = build_llm(settings)
        agent = VoicePipelineAgent(
            vad=vad, stt=speech_to_text, llm=language_model, tts=text_to_speech
        )
        try:
            for name, value in AGENT_MEMBERS.items():
                assert getattr(agent, name) == value, name
            assert isinstance(agent._track_published_fut, asyncio.Future)
            assert not agent._track_published_fut.done()
            assert hasattr(agent._deferred_validation, "aclose")
            assert list(inspect.signature(agent._synthesize_agent_reply).parameters) == []
            # the end-of-turn decision calls back the agent's own (overridable) method
            validate = agent._validate_reply_if_possible
            assert list(inspect.signature(validate).parameters) == []
            assert agent._deferred_validation._validate_fnc == validate
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
            assert "_main_atask" in inspect.getsource(VoicePipelineAgent.start)
            assert "self._room" in inspect.getsource(VoicePipelineAgent.start)

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
                llm=language_model,
                tts=text_to_speech,
            )
            assert output._agent_playout is playout
            await source.aclose()

            # stream internals: flush markers, a TTS's connection options
            assert isinstance(stt.RecognizeStream._FlushSentinel, type)
            assert isinstance(tts.SynthesizeStream._FlushSentinel, type)
            assert adapter.tts_conn_options(text_to_speech).max_retry >= 0
            tts_stream = adapter.without_retries(text_to_speech.stream())
            assert tts_stream._conn_options.max_retry == 0
            await tts_stream.aclose()
            segmented = StreamAdapter(stt=speech_to_text, vad=vad)
            assert segmented._vad is vad
            # the STT a StreamAdapterWrapper wraps is asked only to recognize (VADSegmentedSTT
            # hands it a counter of recognitions instead of the STT itself)
            wrapper_run = inspect.getsource(StreamAdapterWrapper._run)
            assert wrapper_run.count("self._wrapped_stt.") == 1
            assert "self._wrapped_stt.recognize(" in wrapper_run
            assert "_vad_stream" in inspect.getsource(StreamAdapterWrapper.__init__)

            # the fallback adapter's per-LLM status with its probe task
            fallback = FallbackLLM([language_model, build_llm(settings)])
            assert [s.recovering_task for s in fallback._status] == [None, None]
            assert adapter.fallback_recovery_tasks(fallback) == []
            assert isinstance(fallback, llm.FallbackAdapter)

            # the worker's load figure, and its drain flag (set by drain(), read per offer)
            assert callable(_DefaultLoadCalc.get_load)
            assert "self._draining = True" in inspect.getsource(Worker.drain)
        finally:
            await language_model.aclose()
            await text_to_speech.aclose()
            await speech_to_text.aclose()


async def test_real_tracks_have_the_rtc_internals_the_local_room_sets() -> None:
    source = rtc.AudioSource(16000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    adapter.set_track_sid(track, "TR_test")
    assert track.sid == "TR_test"
    stream = rtc.AudioStream(track, sample_rate=16000, num_channels=1)
    adapter.end_track(track)
    # ending the track ends the stream on it
    assert [event async for event in stream] == []
    await stream.aclose()
    await source.aclose()
