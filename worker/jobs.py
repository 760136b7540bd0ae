"""A job: parsed from a Pub/Sub message or an HTTP body and checked against schemas/job.schema.json.

Pure: no cloud library is imported here. Every problem with a job is collected and
reported at once in one :class:`~worker.errors.InvalidJob`.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from worker.errors import InvalidJob

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAX_JOB_BYTES = 64 * 1024
_ECHO_LIMIT = 1024  # longest bucket/prefix echoed back in an invalid_job result


@dataclass(frozen=True)
class Job:
    """One validated job."""

    bucket: str
    prefix: str
    job_id: str
    message_id: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    publish_time: str | None = None
    mode: str = "metadata"
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class JobRef:
    """What is known of a message that may not be a valid job: enough to key its result."""

    job_id: str
    message_id: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    mode: str | None = None


class InvalidJobMessage(InvalidJob):
    """Raised when a message is not a valid job; ``ref`` keys the error result."""

    def __init__(self, message: str, ref: JobRef, problems: list[str] | None = None):
        super().__init__(message, problems=problems or [message])
        self.ref = ref


@cache
def load_schema(name: str) -> dict:
    """A JSON Schema from schemas/, by file stem (``job`` or ``result``)."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


@cache
def _validator() -> Draft202012Validator:
    schema = load_schema("job")
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def new_job_id() -> str:
    """A random job ID, for jobs that arrive with neither a job_id nor a message ID."""
    return uuid.uuid4().hex


def parse_job(body: bytes | str, *, message_id: str | None = None, attributes: Mapping[str, str] | None = None,
              publish_time: str | None = None) -> Job:
    """Parse and validate a job from its JSON text; raise InvalidJobMessage listing every problem."""
    fallback_id = message_id or new_job_id()
    ref = JobRef(job_id=fallback_id, message_id=message_id)
    if isinstance(body, str):
        body = body.encode("utf-8", errors="surrogatepass")
    if len(body) > MAX_JOB_BYTES:
        raise InvalidJobMessage(f"job is {len(body)} bytes; a job is at most {MAX_JOB_BYTES} bytes", ref)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidJobMessage(f"job is not UTF-8 text (byte {e.start})", ref) from None
    if not text.strip():
        raise InvalidJobMessage("job is empty; expected a JSON object with bucket and prefix", ref)
    try:
        payload = json.loads(text)
    except RecursionError:
        raise InvalidJobMessage("job JSON is nested too deeply", ref) from None
    except json.JSONDecodeError as e:
        raise InvalidJobMessage(f"job is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", ref) from None
    return validate_job(payload, message_id=message_id, attributes=attributes, publish_time=publish_time,
                        fallback_id=fallback_id)


def validate_job(payload: Any, *, message_id: str | None = None, attributes: Mapping[str, str] | None = None,
                 publish_time: str | None = None, fallback_id: str | None = None) -> Job:
    """Check a decoded JSON value against the job schema; raise InvalidJobMessage listing every problem."""
    fallback_id = fallback_id or message_id or new_job_id()
    if not isinstance(payload, dict):
        ref = JobRef(job_id=fallback_id, message_id=message_id)
        raise InvalidJobMessage(f"job must be a JSON object, not {_json_type(payload)}", ref)
    ref = _best_effort_ref(payload, fallback_id, message_id)
    problems = [_describe(error) for error in sorted(_validator().iter_errors(payload), key=_error_sort_key)]
    if problems:
        raise InvalidJobMessage("invalid job: " + "; ".join(problems), ref, problems)
    return Job(
        bucket=payload["bucket"],
        prefix=payload["prefix"],
        job_id=payload.get("job_id") or fallback_id,
        message_id=message_id,
        attributes=dict(attributes or {}),
        publish_time=publish_time,
        mode=payload.get("mode", "metadata"),
        columns=tuple(payload["columns"]) if "columns" in payload else None,
    )


def job_from_pubsub(data: Any, event_id: str | None = None) -> Job:
    """A job from a ``messagePublished`` CloudEvent's data: ``{"message": {"data": base64, ...}}``."""
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict):
        raise InvalidJobMessage("event has no Pub/Sub message (data.message)", JobRef(job_id=event_id or new_job_id(),
                                                                                      message_id=event_id))
    message_id = _str_or_none(message.get("messageId") or message.get("message_id")) or event_id
    ref = JobRef(job_id=message_id or new_job_id(), message_id=message_id)
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        attributes = {}
    attributes = {str(k): str(v) for k, v in attributes.items()}
    encoded = message.get("data")
    if not encoded:
        raise InvalidJobMessage("Pub/Sub message has no data; the job is its JSON body", ref)
    if not isinstance(encoded, str):
        raise InvalidJobMessage("Pub/Sub message data is not a base64 string", ref)
    try:
        body = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidJobMessage("Pub/Sub message data is not valid base64", ref) from None
    publish_time = _str_or_none(message.get("publishTime") or message.get("publish_time"))
    return parse_job(body, message_id=message_id, attributes=attributes, publish_time=publish_time)


def _best_effort_ref(payload: dict, fallback_id: str, message_id: str | None) -> JobRef:
    job_id = payload.get("job_id")
    if not (isinstance(job_id, str) and _validator().is_valid({"bucket": "abc", "prefix": "", "job_id": job_id})):
        job_id = fallback_id
    mode = payload.get("mode", "metadata")
    return JobRef(job_id=job_id, message_id=message_id, bucket=_echo(payload.get("bucket")),
                  prefix=_echo(payload.get("prefix")), mode=mode if mode in ("metadata", "full") else None)


def _echo(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= _ECHO_LIMIT:
        return value
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _error_sort_key(error) -> tuple:
    return (list(map(str, error.absolute_path)), error.validator)


def _describe(error) -> str:
    text = _describe_untrimmed(error)
    return text if len(text) <= 300 else text[:297] + "..."


def _describe_untrimmed(error) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "job"
    if error.validator == "pattern" or error.validator in ("minLength", "maxLength"):
        value = error.instance
        shown = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
        rule = error.schema.get("description", "")
        return f"{where}: {shown} is not valid ({error.validator}): {rule}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "additionalProperties":
        return f"{where}: {error.message}; allowed fields are {sorted(error.schema.get('properties', {}))}"
    return f"{where}: {error.message}"


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)
