"""A WSGI middleware in front of functions-framework for raw Pub/Sub pushes.

Pub/Sub leaves ``message.data`` out of a push when the message has no body (attributes only).
functions-framework's conversion of a raw push into a CloudEvent reads that key unconditionally
and answers 400, so such a message would be redelivered until it expires or is dead-lettered,
and never answered. The middleware adds an empty ``data`` to such pushes, so the worker sees the
message and answers it once with ``invalid_job``. Everything else passes through untouched.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

MAX_BODY = 16 * 1024 * 1024  # larger than any Pub/Sub push (10 MB message, base64)

WSGIApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]


def complete(body: bytes) -> bytes | None:
    """The push body with ``message.data`` added when a raw push lacks it; None when nothing changes."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        return None
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict) or "data" in message or "messageId" not in message:
        return None
    return json.dumps({**envelope, "message": {**message, "data": ""}}).encode("utf-8")


class CompletePushEnvelopes:
    """Wraps a WSGI app; see the module's docstring."""

    def __init__(self, app: WSGIApp):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and "json" in environ.get("CONTENT_TYPE", ""):
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if 0 < length <= MAX_BODY:
                body = environ["wsgi.input"].read(length)
                fixed = complete(body)
                if fixed is not None:
                    body = fixed
                    environ["CONTENT_LENGTH"] = str(len(body))
                environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)


def install(app: Any) -> None:
    """Put the middleware in front of a Flask app's WSGI callable (once)."""
    if not isinstance(app.wsgi_app, CompletePushEnvelopes):
        app.wsgi_app = CompletePushEnvelopes(app.wsgi_app)
