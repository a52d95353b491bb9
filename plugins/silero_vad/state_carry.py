"""Carry Silero's RNN state from one 32 ms window to the next.

livekit-plugins-silero 0.7.6 ``OnnxModel.__call__`` feeds its own state array
(``self._rnn_state``) as the ONNX ``state`` input, then stores the returned state
under another name (``out, self._state = ...``, onnx_model.py:85). The state fed
to the model is therefore zeros on every window: the recurrent model never sees
its past, and its speech probability collapses in noise (see docs/vad.md).
Upstream 1.x fixed the assignment.

The fix here touches no private member: the model is given a session proxy whose
``run`` copies the new state, in place, into the array it was just fed. The
model's next call then feeds the carried state. It relies on ONE behaviour of the
plugin's internals, checked by ``tests/test_silero_vad.py::test_plugin_contract``:
the model feeds the same writable state array on every call. If upstream ever
assigns the new state itself, the copy is harmless (it writes the same values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime

STATE_INPUT = "state"
"""Name of the Silero ONNX model's recurrent-state input."""

STATE_OUTPUT = "stateN"
"""Name of the Silero ONNX model's recurrent-state output."""


class StateCarryingSession:
    """An ``onnxruntime.InferenceSession`` proxy that writes each new RNN state
    back into the state array it was fed.

    Stateless apart from the wrapped session, so one instance can serve every
    stream of a VAD (each stream's model owns its own state array; onnxruntime's
    ``run`` is thread-safe).
    """

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self._session = session
        names = [o.name for o in session.get_outputs()]
        if STATE_OUTPUT not in names:
            raise RuntimeError(
                f"Silero ONNX model has no {STATE_OUTPUT!r} output (outputs: {names}): "
                "the model file changed, the RNN state cannot be carried"
            )
        self._output_names: list[str] = names
        self._state_index = names.index(STATE_OUTPUT)

    @property
    def session(self) -> onnxruntime.InferenceSession:
        """The wrapped onnxruntime session."""
        return self._session

    def run(
        self,
        output_names: list[str] | None,
        input_feed: dict[str, np.ndarray],
        run_options: Any = None,
    ) -> list[np.ndarray]:
        names = output_names if output_names is not None else self._output_names
        if STATE_OUTPUT in names:
            outputs: list[np.ndarray] = self._session.run(names, input_feed, run_options)
            new_state = outputs[names.index(STATE_OUTPUT)]
        else:
            outputs = self._session.run([*names, STATE_OUTPUT], input_feed, run_options)
            new_state = outputs.pop()
        carry_state(input_feed, new_state)
        return outputs

    def __getattr__(self, name: str) -> Any:
        # Anything else (get_inputs, get_providers, ...) is the real session's.
        if name == "_session":  # not yet set (e.g. during copy): no recursion
            raise AttributeError(name)
        return getattr(self._session, name)


def carry_state(input_feed: dict[str, np.ndarray], new_state: np.ndarray) -> None:
    """Copy ``new_state`` into the state array of ``input_feed`` (in place).

    The single place that depends on the plugin's internals: the array under
    ``"state"`` must be the model's persistent state, fed again on the next call.
    """
    state = input_feed.get(STATE_INPUT)
    if not isinstance(state, np.ndarray) or state.shape != new_state.shape:
        raise RuntimeError(
            "Silero OnnxModel no longer feeds a persistent state array of shape "
            f"{new_state.shape}: plugins.silero_vad must be updated for this plugin version"
        )
    np.copyto(state, new_state)
