"""openai SDK errors -> livekit.agents API errors (which the LLMStream base class retries).

Retryable: timeouts, connection errors, HTTP 408/409/429/5xx and errors the server streams
in place of a completion -- but only while nothing has reached the consumer; once a chunk has
been handed out a retry would duplicate output, so every error is final. Other 4xx are final.
The message is the server's own; the API key is masked if a server echoes it. The endpoint
asked (scheme, host, port and path only) rides along as a note (``ENDPOINT_NOTE``): the error
loses its cause on the way through the framework's stream, and a log line needs to say which
server failed.
"""

from __future__ import annotations

import openai
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError

RETRYABLE_STATUS = frozenset({408, 409, 429})
ENDPOINT_NOTE = "endpoint: "


def _server_message(e: openai.APIError) -> str:
    body = e.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return e.message


def _mask(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def _mask_body(body: object, secret: str | None) -> object:
    if not secret or secret not in repr(body):
        return body
    return _mask(repr(body), secret)


def endpoint(e: openai.APIError) -> str | None:
    """The URL `e`'s request went to, without credentials, query or fragment."""
    request = getattr(e, "request", None)
    if request is None:
        return None
    url = request.url
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


def to_api_error(e: openai.APIError, *, output_started: bool, api_key: str | None) -> APIError:
    """The livekit.agents error for `e`; `output_started`: a chunk already reached the consumer."""
    error = _to_api_error(e, output_started=output_started, api_key=api_key)
    url = endpoint(e)
    if url is not None:
        error.add_note(ENDPOINT_NOTE + url)
    return error


def _to_api_error(e: openai.APIError, *, output_started: bool, api_key: str | None) -> APIError:
    may_retry = not output_started
    if isinstance(e, openai.APITimeoutError):
        return APITimeoutError(_mask(e.message, api_key), retryable=may_retry)
    if isinstance(e, openai.APIConnectionError):
        return APIConnectionError(_mask(e.message, api_key), retryable=may_retry)
    if isinstance(e, openai.APIStatusError):
        status = e.status_code
        return APIStatusError(
            _mask(_server_message(e), api_key),
            status_code=status,
            request_id=e.request_id,
            body=_mask_body(e.body, api_key),
            retryable=may_retry and (status in RETRYABLE_STATUS or status >= 500),
        )
    # An error event inside the stream (the server failed after answering 200).
    return APIError(
        _mask(_server_message(e), api_key), body=_mask_body(e.body, api_key), retryable=may_retry
    )
