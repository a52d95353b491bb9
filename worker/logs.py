"""One log format per command: JSON lines (the framework's formatter, as ``start`` writes them)
or plain text, for the commands that configure logging themselves (``talk``, ``web``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from livekit.agents.cli.log import JsonFormatter

from worker.config import LogFormat

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def setup_logs(log_format: LogFormat, level: int) -> None:
    """Every record at ``level`` or above goes to stderr, in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


class JobFields(logging.Filter):
    """Adds ``job_id`` and ``room`` to records that lack them: fixed values in a job process (it
    runs one job), or looked up by the record's ``job_id`` in the main process (``room_of``)."""

    def __init__(
        self,
        job_id: str | None = None,
        room: str | None = None,
        room_of: Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__()
        self._job_id, self._room, self._room_of = job_id, room, room_of

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if self._job_id is not None:
            fields.setdefault("job_id", self._job_id)
        if "room" not in fields:
            room = self._room
            job_id = fields.get("job_id")
            if room is None and self._room_of is not None and isinstance(job_id, str):
                room = self._room_of(job_id)
            if room is not None:
                fields["room"] = room
        return True


def tag_records(fields: JobFields) -> None:
    """Apply ``fields`` to everything the root logger's handlers emit from now on."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(fields)
