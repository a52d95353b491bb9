"""The participant's microphone as the agent hears it: 16 kHz mono in 50 ms frames.

The FFI's default is 10 ms frames. Every frame costs the same Python work whatever its length
(an FFI event parsed and handed to every audio stream's queue, an event-loop wake-up, a push
into the VAD and the STT stream), and at 100 frames a second that work was the largest share of
a session's CPU. At 50 ms frames:

- the STT hears nothing later: the Deepgram plugin sends 50 ms chunks anyway;
- the VAD decides up to 40 ms later, well inside its own silence window, and the reply is
  played on the final transcript plus the end-of-turn delay rather than on the VAD's decision
  (with Whisper, whose transcript waits for the VAD's end of speech, up to 40 ms later).
"""

from __future__ import annotations

from livekit import rtc

INPUT_FRAME_MS = 50
INPUT_SAMPLE_RATE = 16000  # the rate the VAD and the STT take


def open_microphone(
    track: rtc.Track, *, noise_cancellation: rtc.NoiseCancellationOptions | None = None
) -> rtc.AudioStream:
    """An audio stream on the participant's microphone track, as the pipeline reads it."""
    return rtc.AudioStream(
        track,
        sample_rate=INPUT_SAMPLE_RATE,
        num_channels=1,
        frame_size_ms=INPUT_FRAME_MS,
        noise_cancellation=noise_cancellation,
    )
