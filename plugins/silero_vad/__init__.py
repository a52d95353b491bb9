"""Silero VAD for livekit-agents 0.12 (livekit-plugins-silero 0.7.6) with its RNN state carried.

A drop-in for ``livekit.plugins.silero.VAD``: the same ``VAD.load(...)`` keyword arguments
and defaults, the same streams and metrics; only the model's recurrent state now reaches the
next window (see ``state_carry`` and docs/vad.md). The model file is the plugin wheel's.

Install: part of the base install (``pip install -e .``; livekit-plugins-silero is a
dependency).

Usage::

    from plugins.silero_vad import VAD

    proc.userdata["vad"] = VAD.load(min_silence_duration=0.4)  # in prewarm (blocking)
"""

from livekit.plugins.silero import VADStream

from .state_carry import StateCarryingSession
from .vad import VAD

__all__ = ["VAD", "StateCarryingSession", "VADStream"]
