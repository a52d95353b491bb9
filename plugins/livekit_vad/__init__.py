"""LiveKit's on-device VAD (``livekit-local-inference``) as a livekit-agents 0.12 VAD.

The same ``VAD.load(...)`` keyword options, events and metrics as ``plugins.silero_vad`` (and
``livekit.plugins.silero``): START_OF_SPEECH / INFERENCE_DONE / END_OF_SPEECH with speech and
silence durations, the utterance frames, ``metrics_collected``. The model is LiveKit's native
streaming VAD (512-sample windows at 16 kHz, its state per stream, the GIL released while it
runs); its licence allows it together with LiveKit Agents, which this worker is.

One difference from Silero's streams, on purpose: ``speech_duration`` counts the windows
judged speech, not the trailing silence the stream waits through before END_OF_SPEECH. 0.12's
interrupt rule compares it with ``interrupt_speech_duration``; counted Silero's way, any short
sound it flags ("mm-hm", a cough) reaches that duration during its own trailing silence and
stops the agent. See docs/vad.md.

Install: part of the base install (``pip install -e .``; livekit-local-inference is a
dependency).

Usage::

    from plugins.livekit_vad import VAD

    proc.userdata["vad"] = VAD.load(min_silence_duration=0.4)  # in prewarm (loads the model)
"""

from .vad import VAD, VADStream

__all__ = ["VAD", "VADStream"]
