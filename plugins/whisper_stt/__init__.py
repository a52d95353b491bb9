"""Offline speech-to-text: faster-whisper with the Whisper tiny.en model shipped in a wheel.

Whisper is a batch recognizer, so :class:`STT` declares ``streaming=False``; VoicePipelineAgent
wraps it in ``stt.StreamAdapter(stt, vad)`` by itself, which makes it VAD-segmented (one
recognition per utterance). The model is loaded once per process.
"""

from .audio import WHISPER_SAMPLE_RATE, to_whisper_input
from .model import default_model_path, load_model
from .stt import STT, WhisperOptions

__all__ = [
    "STT",
    "WHISPER_SAMPLE_RATE",
    "WhisperOptions",
    "default_model_path",
    "load_model",
    "to_whisper_input",
]
