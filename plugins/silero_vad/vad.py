"""Silero VAD with its RNN state carried between windows (see state_carry)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnxruntime
from livekit.plugins import silero

from .log import logger
from .state_carry import StateCarryingSession

if TYPE_CHECKING:
    # Type only (private in 0.7.6, no public name): the options VAD.load() passes to __init__.
    from livekit.plugins.silero.vad import _VADOptions


class VAD(silero.VAD):
    """``livekit.plugins.silero.VAD`` whose streams carry the model's RNN state.

    Same API as the stock class, all inherited: ``VAD.load(...)`` with the same
    options (blocking: call it in the worker's prewarm), ``stream()``,
    ``update_options(...)``, the ``metrics_collected`` event. The model file is
    the one inside the plugin wheel. The only change: the ONNX session handed to
    each stream's model carries the state (see ``state_carry``).
    """

    def __init__(self, *, session: onnxruntime.InferenceSession, opts: _VADOptions) -> None:
        if not isinstance(session, StateCarryingSession):
            session = StateCarryingSession(session)
        super().__init__(session=session, opts=opts)
        logger.debug(
            "silero vad loaded, rnn state carried",
            extra={
                "sample_rate": opts.sample_rate,
                "activation_threshold": opts.activation_threshold,
                "min_silence_duration": opts.min_silence_duration,
            },
        )
