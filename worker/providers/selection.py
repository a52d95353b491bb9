"""Which STT, TTS, LLM and VAD a session uses, from the settings: the plain providers.

The resilient wrappers around them are put on in one place, ``worker.session.build_session``.
"""

from __future__ import annotations

import aiohttp
from livekit.agents import stt, tts, vad
from livekit.plugins import deepgram

from plugins.livekit_vad import VAD as LiveKitVAD
from plugins.openai_llm import LLM
from plugins.silero_vad import VAD as SileroVAD
from worker.config import Settings, TurnDetectorKind, VadProvider, default_deepgram_voice
from worker.pipeline import turn_detector
from worker.providers.segmenting_tts import SentenceTokenizer

LOCAL_MAX_OUTPUT_TOKENS = 60
"""Tiny local models ramble: keep their spoken answers to a sentence or two."""
LOCAL_TEMPERATURE = 0.2
"""A 135M model drifts into other languages and invented words at the default temperature."""
LOCAL_INSTRUCTIONS = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face. "
    "Answer in one short sentence."
)
"""The bundled local model's own system prompt (used unless AGENT_INSTRUCTIONS is set): the
identity it was tuned with plus one plain instruction; a 135M model loses the thread in the
longer voice-assistant prompt (bench/offline_answers.py, README's offline section)."""
NO_KEY = "no-key"
"""Sent as the API key to servers that were given none (local servers ignore it)."""
SERVER_TOOL_CHOICE = None
"""``tool_choice`` is not sent: each server's own default. Sending "auto" (the plugin's default,
as LiveKit's) changes what servers do: vLLM rejects it unless started with
--enable-auto-tool-choice, and llama_cpp.server's chatml-function-calling only puts the tools
into the prompt when it is sent."""


def load_vad(
    provider: VadProvider = Settings.vad_provider,
    turn: TurnDetectorKind = Settings.turn_detector,
) -> vad.VAD:
    """The VAD (VAD_PROVIDER): LiveKit's native one, or Silero with its RNN state carried. Loads
    the model: once per process (prewarm). With the audio turn detector its end of speech is
    when the detector decides, so it comes after the detector's silence, not the plugin's."""
    loader = SileroVAD.load if provider == "silero" else LiveKitVAD.load
    if turn == "audio":
        return loader(min_silence_duration=turn_detector.AudioTurnOptions().decide_after)
    return loader()


def prewarm_providers(settings: Settings) -> None:
    """Load the local models a session will use, once per job process (blocking)."""
    if settings.turn_detector == "audio":
        turn_detector.prewarm()
    if settings.stt_provider == "whisper":
        from plugins.whisper_stt import STT as WhisperSTT

        WhisperSTT().prewarm()
    if settings.tts_provider == "piper":
        from plugins.piper_tts import TTS as PiperTTS

        PiperTTS().prewarm()


def build_stt(settings: Settings, *, http_session: aiohttp.ClientSession | None) -> stt.STT:
    """Whisper is a batch recognizer (``capabilities.streaming`` False); Deepgram streams."""
    if settings.stt_provider == "whisper":
        from plugins.whisper_stt import STT as WhisperSTT

        return WhisperSTT()
    return deepgram.STT(
        api_key=settings.deepgram_api_key.reveal(),
        base_url=settings.deepgram_stt_url,
        http_session=http_session,
        model=settings.deepgram_stt_model,
        language=settings.language,  # "multi": code-switching (checked against the model)
    )


def build_tts(settings: Settings, *, http_session: aiohttp.ClientSession | None) -> tts.TTS:
    if settings.tts_provider == "piper":
        from plugins.piper_tts import TTS as PiperTTS

        return PiperTTS(
            voice=settings.piper_voice or None,
            sentence_tokenizer=SentenceTokenizer(settings.language),
        )
    return deepgram.TTS(
        api_key=settings.deepgram_api_key.reveal(),
        base_url=settings.deepgram_tts_url,
        http_session=http_session,
        model=settings.deepgram_tts_voice or default_deepgram_voice(settings.language),
    )


def tts_segments_itself(settings: Settings) -> bool:
    """Piper synthesises sentence by sentence as text arrives; Deepgram 0.7.4 flushes once per
    reply and needs ``SegmentingTTS`` to start at the first sentence."""
    return settings.tts_provider == "piper"


def build_llm(settings: Settings, *, base_url: str | None = None) -> LLM:
    """The primary LLM. ``base_url`` overrides OPENAI_BASE_URL (the offline `talk` starts its
    own server)."""
    local = base_url is not None
    return LLM(
        model=settings.llm_model,
        base_url=base_url or settings.openai_base_url or None,
        api_key=settings.openai_api_key.reveal() or None,
        audio_input=settings.llm_audio_input,
        max_output_tokens=LOCAL_MAX_OUTPUT_TOKENS if local else settings.llm_max_tokens,
        temperature=LOCAL_TEMPERATURE if local else None,
        max_tokens_field="max_tokens" if local else "max_completion_tokens",
        image_input=not local,  # the bundled local model (SmolLM2) has no vision
        tool_choice=SERVER_TOOL_CHOICE,
    )


def build_fallback_llm(settings: Settings) -> LLM | None:
    """The fallback LLM (LLM_FALLBACK_*), or None. Its key: LLM_FALLBACK_API_KEY, else
    OPENAI_API_KEY only when the fallback runs on the primary's server: the OpenAI key never
    goes to another host."""
    if not settings.llm_fallback:
        return None
    same_server = settings.llm_fallback_base_url in ("", settings.openai_base_url)
    key = settings.llm_fallback_api_key.reveal()
    if not key and same_server:
        key = settings.openai_api_key.reveal()
    return LLM(
        model=settings.llm_fallback_model or settings.llm_model,
        base_url=settings.llm_fallback_base_url or settings.openai_base_url or None,
        # never None: the plugin would then read OPENAI_API_KEY from the environment
        api_key=key or NO_KEY,
        audio_input=settings.llm_audio_input,
        max_output_tokens=settings.llm_max_tokens,
        tool_choice=SERVER_TOOL_CHOICE,
    )
