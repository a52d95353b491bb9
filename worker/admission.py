"""Which jobs this worker accepts: a per-worker job limit, answered in ``request_fnc``.

The framework's request_fnc only sees the JobRequest, and its load_fnc only sees the Worker; so
the limiter learns the Worker from load_fnc (called at registration and every few seconds) and
counts jobs that were accepted but not launched yet itself, so a burst of requests cannot slip
past the limit between two load updates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from livekit.agents import JobRequest, Worker

from worker.pipeline.adapter import cpu_load, worker_draining

logger = logging.getLogger("worker.admission")


@dataclass(frozen=True)
class AdmissionOptions:
    max_jobs: int
    agent_identity: str
    agent_display_name: str = "Agent"
    load_threshold: float = 0.75
    """The CPU load at or above which the server offers no jobs (the framework's production
    threshold by default); ``math.inf``: the CPU does not count, the load reported is the share
    of ``max_jobs`` running (a node that runs nothing else)."""


Decision = Literal["accepted", "rejected"]


class JobLimiter:
    """``request_fnc`` + ``load_fnc`` pair enforcing ``max_jobs`` running jobs per worker."""

    def __init__(
        self, options: AdmissionOptions, on_decision: Callable[[Decision], None] | None = None
    ) -> None:
        self._opts = options
        self._worker: Worker | None = None
        self._pending = 0
        self._last_load = 0.0
        self._on_decision = on_decision

    @property
    def options(self) -> AdmissionOptions:
        return self._opts

    @property
    def framework_threshold(self) -> float:
        """The threshold for 0.12's own full/available status, on the figure :meth:`load`
        reports."""
        return min(self._opts.load_threshold, 1.0)

    @property
    def full(self) -> bool:
        """No job would be taken now (job limit reached, or load at the threshold)."""
        return self.running >= self._opts.max_jobs or self._last_load >= self.framework_threshold

    def _decided(self, decision: Decision) -> None:
        if self._on_decision is not None:
            self._on_decision(decision)

    @property
    def running(self) -> int:
        active = len(self._worker.active_jobs) if self._worker is not None else 0
        return active + self._pending

    def load(self, worker: Worker) -> float:
        """Worker load in [0, 1]: CPU load (or the share of the job limit in use, when the CPU
        does not count), 1.0 once the job limit is reached."""
        self._worker = worker
        if self.running >= self._opts.max_jobs:
            self._last_load = 1.0
        elif math.isinf(self._opts.load_threshold):
            self._last_load = self.running / self._opts.max_jobs
        else:
            self._last_load = min(cpu_load(worker), 1.0)
        return self._last_load

    async def request(self, req: JobRequest) -> None:
        if self._worker is not None and worker_draining(self._worker):
            # The server stops offering jobs once it sees the drain; an offer already on its way
            # must not start a call that the drain would then have to wait for.
            logger.info(
                "rejecting job: worker is draining",
                extra={"job_id": req.id, "room": req.room.name},
            )
            await req.reject()
            return
        if self.running >= self._opts.max_jobs:
            logger.info(
                "rejecting job: worker is at its job limit",
                extra={"job_id": req.id, "room": req.room.name, "max_jobs": self._opts.max_jobs},
            )
            await req.reject()
            self._decided("rejected")
            return
        self._pending += 1
        try:
            # accept() returns once the server assigned the job and its process was launched.
            await req.accept(
                name=self._opts.agent_display_name,
                identity=self._opts.agent_identity,  # empty: the framework's "agent-<job id>"
            )
            self._decided("accepted")
        finally:
            self._pending -= 1
