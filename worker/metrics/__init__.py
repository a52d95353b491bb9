"""Metrics of a session, on the side of the voice path.

``collector`` turns every ``metrics_collected`` event into a payload, ``turns`` joins one
reply's measurements into a ``turn`` payload, ``payloads`` is the wire format (docs/metrics.md),
``publisher`` sends payloads to the room (and to files) from background tasks; ``prometheus``
and ``traces`` are more sinks of the same payloads, for the operator.
"""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (by ``start``, for itself and its job processes) when the worker exports Prometheus
figures; named here so a process can check it without importing prometheus_client."""
