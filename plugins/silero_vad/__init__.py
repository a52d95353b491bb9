"""The Silero VAD plugin (livekit-plugins-silero 0.7.6) with its RNN state carried.

Drop-in for ``livekit.plugins.silero.VAD``::

    from plugins.silero_vad import VAD
    proc.userdata["vad"] = VAD.load()  # in prewarm
"""

from livekit.plugins.silero import VADStream

from .state_carry import StateCarryingSession
from .vad import VAD

__all__ = ["VAD", "StateCarryingSession", "VADStream"]
