"""The shape every provider wrapper shares: it owns an inner provider, re-emits its metrics as its
own (so the pipeline tags them with the reply's ``sequence_id``), and closes it.

``ReconnectingSTT``, ``SegmentingTTS`` and ``ToolRunningLLM`` mix it in before the framework's
base class (``class ReconnectingSTT(Wrapper[stt.STT], stt.STT)``); ``FallbackLLM`` is the
framework's adapter, which measures its own stream, so it only closes its LLMs.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar


class _Provider(Protocol):
    def on(self, event: Any, callback: Any = None) -> Any: ...
    def off(self, event: Any, callback: Any) -> None: ...
    def emit(self, event: Any, *args: Any) -> None: ...
    async def aclose(self) -> None: ...


P = TypeVar("P", bound=_Provider)


class Wrapper(Generic[P]):
    """Owns ``inner``: forwards its ``metrics_collected`` and closes it in :meth:`aclose`."""

    _inner: P

    def _own_inner(self, inner: P) -> None:
        """Call from ``__init__``, after the framework base class's ``__init__``."""
        self._inner = inner
        inner.on("metrics_collected", self._forward_metrics)

    @property
    def inner(self) -> P:
        return self._inner

    def _forward_metrics(self, metrics: Any) -> None:
        self.emit("metrics_collected", metrics)  # type: ignore[attr-defined]

    async def _close_inner(self) -> None:
        self._inner.off("metrics_collected", self._forward_metrics)
        await self._inner.aclose()
