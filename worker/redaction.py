"""Keep secrets out of every log line, whoever logs it (our code, the framework, a plugin).

Our own code never logs secrets; this is defence in depth for third-party messages that might
echo a URL, a header or an exception carrying a key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

MASK = "***"
_installed: list[str] = []


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def install_log_redaction(secrets: Iterable[str]) -> None:
    """Make every LogRecord created in this process mask the given secret values.

    Works through the record factory, so it applies to handlers set up later (the framework's
    CLI configures logging after we start) and to every logger, with no handler to find.
    """
    new = [s for s in secrets if len(s) >= 4 and s not in _installed]
    if not new:
        return
    first = not _installed
    _installed.extend(new)
    if not first:
        return
    base_factory = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base_factory(*args, **kwargs)
        message = record.getMessage()
        cleaned = redact(message, _installed)
        exc_text = record.exc_info and logging.Formatter().formatException(record.exc_info)
        if cleaned != message or (exc_text and redact(exc_text, _installed) != exc_text):
            record.msg, record.args = cleaned, None
            if exc_text:
                record.exc_info, record.exc_text = None, redact(exc_text, _installed)
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and key not in ("msg", "exc_text"):
                record.__dict__[key] = redact(value, _installed)
        return record

    logging.setLogRecordFactory(factory)
