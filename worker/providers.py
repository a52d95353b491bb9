"""Which STT/TTS/LLM/VAD a session uses, from the settings. The one place providers are chosen."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from livekit.agents import llm, stt, tts, vad
from livekit.agents.stt.stream_adapter import StreamAdapterWrapper
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.plugins import deepgram

from plugins.openai_llm import LLM, LLMOptions
from plugins.silero_vad import VAD as SileroVAD

from .config import Settings
from .llm_fallback import ClosingFallbackAdapter
from .stt_resilience import ResilientSTT
from .tts_segmenter import SegmentingTTS

LOCAL_MAX_OUTPUT_TOKENS = 120
"""Tiny local models ramble: keep their spoken answers short."""
NO_KEY = "no-key"
"""Sent as the API key to servers that were given none (local servers ignore it)."""


def load_vad() -> vad.VAD:
    """Silero VAD with its RNN state carried (model from the plugin wheel); once per process."""
    return SileroVAD.load()


def prewarm_providers(settings: Settings) -> None:
    """Load the local models a session will use, once per job process (blocking)."""
    if settings.stt_provider == "whisper":
        from plugins.whisper_stt import STT as WhisperSTT

        WhisperSTT().prewarm()
    if settings.tts_provider == "piper":
        from plugins.piper_tts import TTS as PiperTTS

        PiperTTS().prewarm()


@dataclass
class Providers:
    stt: stt.STT
    tts: tts.TTS
    llm: llm.LLM

    async def aclose(self) -> None:
        await self.llm.aclose()
        await self.tts.aclose()
        await self.stt.aclose()


class VADSegmentedSTT(stt.StreamAdapter):
    """The framework's StreamAdapter, but its streams close the VAD stream they open
    (0.12.21 leaves it running: two tasks per session)."""

    def stream(
        self,
        *,
        language: str | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _ClosingAdapterStream(
            self, vad=self._vad, wrapped_stt=self._stt, language=language, conn_options=conn_options
        )


class _ClosingAdapterStream(StreamAdapterWrapper):
    async def aclose(self) -> None:
        await super().aclose()
        await self._vad_stream.aclose()


def build_stt(
    settings: Settings, *, vad: vad.VAD, http_session: aiohttp.ClientSession | None
) -> stt.STT:
    if settings.stt_provider == "whisper":
        from plugins.whisper_stt import STT as WhisperSTT

        # Batch recognizer: segment by the (untapped) VAD, one recognition per utterance.
        return VADSegmentedSTT(stt=WhisperSTT(), vad=vad)
    # A refused or long-lost connection ends a Deepgram stream for good: replace it instead.
    return ResilientSTT(
        deepgram.STT(
            api_key=settings.deepgram_api_key.reveal(),
            base_url=settings.deepgram_stt_url,
            http_session=http_session,
        )
    )


def build_tts(settings: Settings, *, http_session: aiohttp.ClientSession | None) -> tts.TTS:
    if settings.tts_provider == "piper":
        from plugins.piper_tts import TTS as PiperTTS

        return PiperTTS()  # already streams sentence by sentence
    # Deepgram 0.7.4 flushes once per reply; segmenting starts speech at the first sentence.
    return SegmentingTTS(
        deepgram.TTS(
            api_key=settings.deepgram_api_key.reveal(),
            base_url=settings.deepgram_tts_url,
            http_session=http_session,
        )
    )


def build_llm(settings: Settings, *, base_url: str | None = None) -> llm.LLM:
    """``base_url`` overrides OPENAI_BASE_URL (the offline `talk` starts its own server; no
    fallback then). With LLM_FALLBACK_* set, a fallback LLM takes over when the primary fails
    before its first chunk (``ClosingFallbackAdapter``)."""
    url = base_url or settings.openai_base_url or None
    local = base_url is not None
    primary = LLM(
        LLMOptions(
            model=settings.llm_model,
            base_url=url,
            api_key=settings.openai_api_key.reveal() or None,
            audio_input=settings.llm_audio_input,
            max_output_tokens=LOCAL_MAX_OUTPUT_TOKENS if local else None,
            max_tokens_field="max_tokens" if local else "max_completion_tokens",
            image_input=not local,  # the bundled local model (SmolLM2) has no vision
        )
    )
    if local or not settings.llm_fallback:
        return primary
    return ClosingFallbackAdapter([primary, build_fallback_llm(settings)])


def build_fallback_llm(settings: Settings) -> LLM:
    """The fallback LLM. Its key: LLM_FALLBACK_API_KEY, else OPENAI_API_KEY only when the
    fallback runs on the primary's server: the OpenAI key never goes to another host."""
    same_server = settings.llm_fallback_base_url in ("", settings.openai_base_url)
    key = settings.llm_fallback_api_key.reveal()
    if not key and same_server:
        key = settings.openai_api_key.reveal()
    return LLM(
        LLMOptions(
            model=settings.llm_fallback_model or settings.llm_model,
            base_url=settings.llm_fallback_base_url or settings.openai_base_url or None,
            # never None: the plugin would then read OPENAI_API_KEY from the environment
            api_key=key or NO_KEY,
            audio_input=settings.llm_audio_input,
        )
    )


def build_providers(
    settings: Settings,
    *,
    vad: vad.VAD,
    http_session: aiohttp.ClientSession | None = None,
    llm_base_url: str | None = None,
) -> Providers:
    """``http_session`` is needed outside a job (inside one the framework provides it)."""
    return Providers(
        stt=build_stt(settings, vad=vad, http_session=http_session),
        tts=build_tts(settings, http_session=http_session),
        llm=build_llm(settings, base_url=llm_base_url),
    )
