"""Why a job failed, carried from its job process to the main process that reports it.

A job runs in its own process; the worker's connection to the server lives in the main process.
The job process logs its failure once (``worker.entrypoint``: "job failed", with ``job_id`` and
``job_error``); the framework forwards every job-process log record to the main process, where
:class:`JobFailures` keeps the error by job id until the job's final status is reported.
"""

from __future__ import annotations

import logging
import threading

FAILURE_FIELD = "job_error"
MAX_ERROR_CHARS = 200


def describe(error: BaseException) -> str:
    """The error as the server sees it: class and message, one line, bounded."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return " ".join(text.split())[:MAX_ERROR_CHARS]


class JobFailures(logging.Handler):
    """Collects ``job_error`` fields of forwarded log records (records arrive on a thread)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self._errors: dict[str, str] = {}
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        error = getattr(record, FAILURE_FIELD, None)
        job_id = getattr(record, "job_id", None)
        if isinstance(error, str) and isinstance(job_id, str):
            with self._guard:
                self._errors[job_id] = error

    def pop(self, job_id: str) -> str | None:
        """The job's error (None: it did not fail), forgotten once asked for."""
        with self._guard:
            return self._errors.pop(job_id, None)

    def install(self, logger_name: str = "worker.entrypoint") -> None:
        logging.getLogger(logger_name).addHandler(self)
