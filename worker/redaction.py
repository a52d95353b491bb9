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
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            # Handlers get the (masked) traceback text, never the exception object: third-party
            # exceptions carry request data (aiohttp's ClientResponseError keeps the request's
            # headers, Authorization included) that a handler serialising them would leak.
            exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, redact(exc_text, _installed)
        return record

    base_make_record = logging.Logger.makeRecord

    def make_record(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        # `extra=` fields are set on the record after the factory ran: mask them here.
        record = base_make_record(self, *args, **kwargs)
        _mask_extra(record)
        return record

    logging.setLogRecordFactory(factory)
    logging.Logger.makeRecord = make_record  # type: ignore[method-assign]


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message"}


def _mask_extra(record: logging.LogRecord) -> None:
    """Mask secrets in ``extra=`` values; a non-string value holding one becomes masked text."""
    for key, value in list(record.__dict__.items()):
        if key in _STANDARD_ATTRS or value is None or isinstance(value, bool | int | float):
            continue
        try:
            text = value if isinstance(value, str) else str(value)
        except Exception:  # an object that cannot print itself cannot leak through str() either
            continue
        cleaned = redact(text, _installed)
        if cleaned != text:
            record.__dict__[key] = cleaned
