"""Structured logs: one JSON object per line, in Cloud Logging's format.

``severity`` and ``message`` are Cloud Logging's own keys; anything passed as
``extra={"fields": {...}}`` lands beside them (job_id, message_id, ...). Never pass a
credential or token: as a last line of defence the formatter masks what looks like one
(a JWT, an AWS secret or session token, a presigned URL's signature), since stack traces
and third-party messages are logged as they come.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
import uuid
from datetime import UTC, datetime

_SEVERITY = {"WARNING": "WARNING", "CRITICAL": "CRITICAL", "ERROR": "ERROR", "INFO": "INFO", "DEBUG": "DEBUG"}
# Error Reporting groups log entries of this type, with the stack trace in ``message``.
REPORTED_ERROR_EVENT = "type.googleapis.com/google.devtools.clouderrorreporting.v1beta1.ReportedErrorEvent"
_SECRETS = re.compile(
    r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]+"  # a JWT (a Google ID token)
    r"|(?i:(?<=SecretAccessKey)|(?<=SessionToken)|(?<=Signature)|(?<=Security-Token)|(?<=Credential))"
    r"[\"'=:>\s]{1,4}[^\s\"'&<,;]{8,}"  # the value after a credential-bearing name
    r"|\b(?:ASIA|AKIA)[A-Z0-9]{12,}\b"  # an AWS access key ID
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a token or AWS credential replaced by ``[redacted]``."""
    return _SECRETS.sub("[redacted]", text)


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as one line of JSON that Cloud Logging parses into jsonPayload."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": _SEVERITY.get(record.levelname, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "logger": record.name,
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


def new_incident_id() -> str:
    """A short ID that ties an ``internal`` result to its log entry."""
    return uuid.uuid4().hex[:12]


def report_incident(logger: logging.Logger, exc: BaseException, incident_id: str, *, stage: str,
                    fields: dict | None = None) -> None:
    """Log an unexpected exception so that Cloud Error Reporting picks it up: severity ERROR, the
    ReportedErrorEvent type, the service context, and the stack trace in ``message``."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    logger.error("%s", f"internal error while {stage} (incident {incident_id})\n{trace}", extra={"fields": {
        "@type": REPORTED_ERROR_EVENT,
        "serviceContext": {"service": os.environ.get("K_SERVICE", "parquet-summary"),
                           "version": os.environ.get("K_REVISION", "local")},
        "incident_id": incident_id,
        "stage": stage,
        **(fields or {}),
    }})


def setup_logging(level: int = logging.INFO) -> None:
    """Send the root logger's records to stdout as structured JSON lines (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    root.addHandler(handler)
    root.setLevel(level)
