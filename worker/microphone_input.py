"""The participant's microphone as the agent hears it: 16 kHz mono in 50 ms frames.

0.12's HumanInput reads the track in the FFI's default 10 ms frames. Every frame costs the same
Python work whatever its length (an FFI event parsed and handed to every audio stream's queue,
an event-loop wake-up, a push into the VAD and the STT stream), and at 100 frames a second that
work was the largest share of a session's CPU. At 50 ms frames:

- the STT hears nothing later: the Deepgram plugin sends 50 ms chunks anyway;
- the VAD decides up to 40 ms later, well inside its own silence window, and the reply is
  played on the final transcript plus the end-of-turn delay rather than on the VAD's decision
  (with Whisper, whose transcript waits for the VAD's end of speech, up to 40 ms later).
"""

from __future__ import annotations

from livekit import rtc
from livekit.agents.pipeline.human_input import HumanInput

INPUT_FRAME_MS = 50
INPUT_SAMPLE_RATE = 16000  # what 0.12's HumanInput asks for (the VAD's and the STT's rate)


class MicrophoneInput(HumanInput):
    """HumanInput reading the microphone in ``INPUT_FRAME_MS`` frames."""

    async def _recognize_task(self, audio_stream: rtc.AudioStream) -> None:
        # 0.12 opens the stream itself, with no say in its frame size: read the same track
        # through a stream of our own and close 0.12's unread (once per subscription; ours is
        # opened first, so no audio waits for that close)
        track = self._subscribed_track
        if track is None:  # 0.12 sets it before it starts this task
            await audio_stream.aclose()
            return
        ours = rtc.AudioStream(
            track,
            sample_rate=INPUT_SAMPLE_RATE,
            num_channels=1,
            frame_size_ms=INPUT_FRAME_MS,
            noise_cancellation=self._noise_cancellation,
        )
        try:
            await audio_stream.aclose()
            await super()._recognize_task(ours)
        finally:
            await ours.aclose()  # 0.12 leaves its stream open when the task ends
