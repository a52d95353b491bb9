"""Metrics of a session, on the side of the voice path.

``collector`` turns every ``metrics_collected`` event into a payload, ``turns`` joins one
reply's measurements into a ``turn`` payload, ``payloads`` is the wire format (docs/metrics.md),
``publisher`` sends payloads to the room (and to files) from background tasks.
"""
