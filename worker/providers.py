"""Which STT/TTS/LLM/VAD a session uses, from the settings. The one place providers are chosen."""

from __future__ import annotations

from livekit.agents import vad as agents_vad
from livekit.plugins import silero


def load_vad() -> agents_vad.VAD:
    """The Silero VAD (model shipped in the plugin wheel); loaded once per job process."""
    return silero.VAD.load()
