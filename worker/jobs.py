"""A job: parsed from a Pub/Sub message or an HTTP body and checked against schemas/job.schema.json.

Pure: no cloud library is imported here. Every problem with a job is collected and
reported at once in one :class:`~worker.errors.InvalidJob`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, validators

from worker import templates
from worker.errors import InvalidJob

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAX_JOB_BYTES = 64 * 1024
_ECHO_LIMIT = 1024  # longest bucket/prefix echoed back in an invalid_job result
# The attributes a result message carries of its own; a job cannot set them, and pass-through ones yield.
RESERVED_ATTRIBUTES = frozenset({"job_id", "status", "correlation_id", "source_message_id", "error_code"})
MAX_ATTRIBUTES = 100  # Pub/Sub's limit per message
MAX_ATTRIBUTE_BYTES = 1024  # Pub/Sub's limit on an attribute value, in UTF-8 bytes
MAX_PROBLEMS = 50  # problems listed in one invalid_job answer; the rest are counted
# A job's own fields nest two levels (fan_out.mode, reply_attributes.k, columns[i]); anything far deeper is refused
# before any code that recurses over values (jsonschema's checks and messages) sees it.
MAX_NESTING = 8


class _Routed:
    """Where a job's result belongs: its pipeline run and the attributes its message carries on."""

    job_id: str
    correlation_id: str | None
    attributes: Mapping[str, str]
    reply_attributes: Mapping[str, str]

    @property
    def correlation(self) -> str:
        """The pipeline run: the job's correlation_id, else its message's attribute, else its job_id."""
        return correlation_of(self.correlation_id, self.attributes, self.job_id)

    @property
    def pass_through(self) -> dict[str, str]:
        """The attributes its result message carries besides the worker's own."""
        return pass_through(self.attributes, self.reply_attributes)


@dataclass(frozen=True)
class Job(_Routed):
    """One validated job."""

    bucket: str
    prefix: str
    job_id: str
    message_id: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    publish_time: str | None = None
    mode: str = "metadata"
    columns: tuple[str, ...] | None = None
    correlation_id: str | None = None
    prefix_template: str | None = None
    reference_time: str | None = None
    reply_topic: str | None = None
    reply_attributes: Mapping[str, str] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)  # the job as sent, for the result to echo


@dataclass(frozen=True)
class JobRef(_Routed):
    """What is known of a message that may not be a valid job: enough to key its result."""

    job_id: str
    message_id: str | None = None
    bucket: str | None = None
    prefix: str | None = None
    mode: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str | None = None
    reply_attributes: Mapping[str, str] = field(default_factory=dict)
    prefix_template: str | None = None


def correlation_of(given: str | None, attributes: Mapping[str, str], job_id: str) -> str:
    from_attribute = attributes.get("correlation_id", "")
    if not given and valid_id(from_attribute, "correlation_id"):
        given = from_attribute
    return given or job_id


def pass_through(attributes: Mapping[str, str], reply_attributes: Mapping[str, str]) -> dict[str, str]:
    """The job message's attributes, then the job's reply_attributes over them: never the worker's own
    or Google's (goog*), and no more than Pub/Sub allows beside the worker's own."""
    merged = {k: v for k, v in attributes.items() if k not in RESERVED_ATTRIBUTES and not k.startswith("goog")}
    merged |= dict(reply_attributes)
    room = MAX_ATTRIBUTES - len(RESERVED_ATTRIBUTES)
    if len(merged) > room:  # the job's own reply_attributes first, then the message's, by name
        keep = list(reply_attributes) + sorted(k for k in merged if k not in reply_attributes)
        merged = {k: merged[k] for k in keep[:room]}
    return merged


@cache
def load_schema(name: str) -> dict:
    """A JSON Schema from schemas/, by file stem (``job`` or ``result``)."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


@cache
def _validator() -> Draft202012Validator:
    schema = load_schema("job")
    Draft202012Validator.check_schema(schema)
    strict = validators.extend(Draft202012Validator, {"pattern": _strict_pattern})
    return strict(schema)


def _strict_pattern(validator, pattern: str, instance: Any, schema: dict):
    """``pattern`` as JSON Schema means it (ECMA-262, where ``$`` is the end of the string), not as Python's
    ``re`` reads it (``$`` also matches before a final newline: "abc\n" would pass ``^[a-z]+$``)."""
    if isinstance(instance, str) and not _ecma(pattern).search(instance):
        from jsonschema.exceptions import ValidationError

        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _ecma(pattern: str) -> re.Pattern[str]:
    # A final unescaped $ anchors at the very end: Python spells that \Z.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


@cache
def _id_rule(name: str) -> tuple[re.Pattern[str], int, int]:
    spec = load_schema("job")["properties"][name]
    return _ecma(spec["pattern"]), spec["minLength"], spec["maxLength"]


def valid_id(value: Any, name: str = "job_id") -> bool:
    """Whether ``value`` is a valid ``job_id`` (or ``correlation_id``, by ``name``): the schema's own rule for
    that field (pattern and length, from schemas/job.schema.json), matched against the whole string."""
    if not isinstance(value, str):
        return False
    pattern, shortest, longest = _id_rule(name)
    return shortest <= len(value) <= longest and pattern.fullmatch(value) is not None


def new_job_id() -> str:
    """A random job ID, for jobs that arrive with neither a job_id nor a message ID."""
    return uuid.uuid4().hex


def parse_job(body: bytes | str, *, message_id: str | None = None, attributes: Mapping[str, str] | None = None,
              publish_time: str | None = None, time_zone: str = "UTC") -> Job:
    """Parse and validate a job from its JSON text; raise InvalidJob listing every problem."""
    fallback_id = message_id or new_job_id()
    ref = JobRef(job_id=fallback_id, message_id=message_id, attributes=dict(attributes or {}))
    if isinstance(body, str):
        body = body.encode("utf-8", errors="surrogatepass")
    if len(body) > MAX_JOB_BYTES:
        raise InvalidJob(f"job is {len(body)} bytes; a job is at most {MAX_JOB_BYTES} bytes", ref)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidJob(f"job is not UTF-8 text (byte {e.start})", ref) from None
    if not text.strip():
        raise InvalidJob("job is empty; expected a JSON object with bucket and prefix", ref)
    try:
        payload = json.loads(text)
    except RecursionError:
        raise InvalidJob("job JSON is nested too deeply", ref) from None
    except json.JSONDecodeError as e:
        raise InvalidJob(f"job is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", ref) from None
    return validate_job(payload, message_id=message_id, attributes=attributes, publish_time=publish_time,
                        fallback_id=fallback_id, time_zone=time_zone)


def validate_job(payload: Any, *, message_id: str | None = None, attributes: Mapping[str, str] | None = None,
                 publish_time: str | None = None, fallback_id: str | None = None, time_zone: str = "UTC",
                 now: datetime | None = None) -> Job:
    """Check a decoded JSON value against the job schema and resolve its prefix_template; raise
    InvalidJob listing every problem. ``time_zone`` is the default for templates."""
    fallback_id = fallback_id or message_id or new_job_id()
    attributes = dict(attributes or {})
    if not isinstance(payload, dict):
        ref = JobRef(job_id=fallback_id, message_id=message_id, attributes=attributes)
        raise InvalidJob(f"job must be a JSON object, not {_json_type(payload)}", ref)
    ref = _best_effort_ref(payload, fallback_id, message_id, attributes)
    problems = _value_problems(payload)
    if not problems:
        problems = _cheap_problems(payload)
        checked = {k: v for k, v in payload.items() if k != "columns"} if problems else payload
        problems += [_describe(error) for error in sorted(_validator().iter_errors(checked), key=_error_sort_key)]
        problems += _attribute_problems(payload.get("reply_attributes"))
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]
    prefix, reference = payload.get("prefix"), None
    template = payload.get("prefix_template")
    if not problems and template is not None:
        prefix, reference = _resolve(template, payload, publish_time, time_zone, now, problems)
    if problems:
        raise InvalidJob("invalid job: " + "; ".join(problems), ref, problems=problems)
    return Job(
        bucket=payload["bucket"],
        prefix=prefix,
        job_id=payload.get("job_id") or fallback_id,
        message_id=message_id,
        attributes=attributes,
        publish_time=publish_time,
        mode=payload.get("mode", "metadata"),
        columns=tuple(payload["columns"]) if "columns" in payload else None,
        correlation_id=payload.get("correlation_id"),
        prefix_template=template,
        reference_time=reference,
        reply_topic=payload.get("reply_topic"),
        reply_attributes=dict(payload.get("reply_attributes", {})),
        spec=payload,
    )


def _value_problems(payload: Any) -> list[str]:
    """What is wrong with the values themselves, found in one walk without recursion (a value may nest as deep as
    the JSON parser allows; recursive code over it, such as jsonschema's ``repr``, would exceed Python's stack):
    strings that are not valid Unicode (an escaped lone surrogate such as "\\ud800" parses, yet cannot be encoded,
    published or used as an S3 key), by where they are; and fields nested deeper than MAX_NESTING."""
    problems = []
    too_deep: set[str | None] = set()
    # (where, the top-level field it is under, the value, its depth: a field's own value is at 1)
    stack: list[tuple[str, str | None, Any, int]] = [("job", None, payload, 0)]
    while stack:
        where, top, value, depth = stack.pop()
        if depth > MAX_NESTING:
            if top not in too_deep:
                too_deep.add(top)
                problems.append(f"{_echo(top) or 'a field'}: nested more than {MAX_NESTING} levels deep "
                                "(a job's fields nest at most 2)")
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                if not _encodable(k):
                    problems.append(f"{where}: a field name is not valid Unicode (a lone surrogate)")
                else:
                    stack.append((k if where == "job" else f"{where}.{k}", top if depth else k, v, depth + 1))
        elif isinstance(value, list):
            stack.extend((f"{where}.{i}", top, v, depth + 1) for i, v in enumerate(value))
        elif isinstance(value, str) and not _encodable(value):
            problems.append(f"{where}: not valid Unicode (it holds a lone surrogate such as \\ud800)")
    return sorted(problems)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cheap_problems(payload: dict) -> list[str]:
    """Checks that must run before the schema's: jsonschema's ``uniqueItems`` compares items pairwise when
    they cannot be sorted (mixed types), which costs seconds for a 64 KiB job of numbers and objects."""
    columns = payload.get("columns")
    if not isinstance(columns, list):
        return []
    limit = load_schema("job")["properties"]["columns"]["maxItems"]
    problems = []
    if len(columns) > limit:
        problems.append(f"columns: {len(columns)} items; at most {limit}")
    wrong = [i for i, c in enumerate(columns) if not isinstance(c, str)]
    if wrong:
        problems.append(f"columns: every item must be a string (item {wrong[0]} is {_json_type(columns[wrong[0]])}"
                        + (f", and {len(wrong) - 1} more" if len(wrong) > 1 else "") + ")")
    return problems


def _attribute_problems(reply_attributes: Any) -> list[str]:
    """Pub/Sub counts attribute sizes in UTF-8 bytes (keys 256, values 1,024); JSON Schema counts characters."""
    if not isinstance(reply_attributes, dict):
        return []
    return [f"reply_attributes.{k}: the value is {n} bytes of UTF-8; Pub/Sub allows at most {MAX_ATTRIBUTE_BYTES}"
            for k, v in reply_attributes.items()
            if isinstance(v, str) and (n := len(v.encode("utf-8"))) > MAX_ATTRIBUTE_BYTES]


def _resolve(template: str, payload: dict, publish_time: str | None, default_zone: str, now: datetime | None,
             problems: list[str]) -> tuple[str | None, str | None]:
    """The prefix a template names, and the reference time it was resolved against (RFC 3339, UTC)."""
    given = payload.get("reference_time")
    at = parse_time(given) if given else (parse_time(publish_time) if publish_time else None)
    if given and at is None:
        problems.append(f"reference_time: {given!r} is not an RFC 3339 time")
        return None, None
    at = at or now or datetime.now(UTC)
    try:
        prefix = templates.render(template, at, payload.get("time_zone") or default_zone)
    except templates.TemplateError as e:
        where = "time_zone" if str(e).startswith("unknown time zone") else "prefix_template"
        problems.append(f"{where}: {e}")
        return None, None
    if len(prefix) > 1024:
        problems.append(f"prefix_template: resolves to {len(prefix)} characters; a prefix is at most 1024")
    try:
        reference = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError):
        problems.append(f"reference_time: {given or publish_time!r} is outside the years 1-9999 in UTC")
        return None, None
    return prefix, reference


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time (Pub/Sub's publishTime has nanoseconds; Python keeps microseconds), or None."""
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})", text or "")
    if not match:
        return None
    day, clock, fraction, offset = match.groups()
    fraction = f".{(fraction or '0')[:6]:0<6}"
    try:
        return datetime.fromisoformat(f"{day}T{clock}{fraction}{'+00:00' if offset in 'Zz' else offset}")
    except ValueError:
        return None


def job_from_pubsub(data: Any, event_id: str | None = None, *, time_zone: str = "UTC") -> Job:
    """A job from a ``messagePublished`` CloudEvent's data: ``{"message": {"data": base64, ...}}``."""
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict):
        raise InvalidJob("event has no Pub/Sub message (data.message)", JobRef(job_id=event_id or new_job_id(),
                                                                               message_id=event_id))
    message_id = _str_or_none(message.get("messageId") or message.get("message_id")) or event_id
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        attributes = {}
    attributes = {str(k): str(v) for k, v in attributes.items()}
    ref = JobRef(job_id=message_id or new_job_id(), message_id=message_id, attributes=attributes)
    encoded = message.get("data")
    if not encoded:
        raise InvalidJob("Pub/Sub message has no data; the job is its JSON body", ref)
    if not isinstance(encoded, str):
        raise InvalidJob("Pub/Sub message data is not a base64 string", ref)
    try:
        body = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidJob("Pub/Sub message data is not valid base64", ref) from None
    publish_time = _str_or_none(message.get("publishTime") or message.get("publish_time"))
    return parse_job(body, message_id=message_id, attributes=attributes, publish_time=publish_time,
                     time_zone=time_zone)


def _best_effort_ref(payload: dict, fallback_id: str, message_id: str | None, attributes: dict[str, str]) -> JobRef:
    """The parts of an invalid job that are valid, so its error result is keyed and routed like its result."""
    job_id = payload.get("job_id")
    if not valid_id(job_id, "job_id"):
        job_id = fallback_id
    correlation_id = payload.get("correlation_id")
    if not valid_id(correlation_id, "correlation_id"):
        correlation_id = None
    reply_attributes = payload.get("reply_attributes")
    if (not isinstance(reply_attributes, dict) or not all(isinstance(v, str) for v in reply_attributes.values())
            or _value_problems(reply_attributes) or _attribute_problems(reply_attributes)
            or not _validator().is_valid({"bucket": "abc", "prefix": "", "reply_attributes": reply_attributes})):
        reply_attributes = {}
    mode = payload.get("mode", "metadata")
    return JobRef(job_id=job_id, message_id=message_id, bucket=_echo(payload.get("bucket")),
                  prefix=_echo(payload.get("prefix")), mode=mode if mode in ("metadata", "full") else None,
                  attributes=attributes, correlation_id=correlation_id, reply_attributes=reply_attributes,
                  prefix_template=_echo(payload.get("prefix_template")))


def _echo(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= _ECHO_LIMIT and _encodable(value):
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
    if error.validator == "oneOf" and not error.absolute_path:
        both = "prefix" in error.instance and "prefix_template" in error.instance
        return ("job: give prefix or prefix_template, not both" if both
                else "job: 'prefix' is a required property (or give prefix_template)")
    if error.validator == "not" and error.absolute_path and error.absolute_path[-1] == "reply_attributes":
        return f"{where}: {error.instance!r} is the worker's own attribute; pick another name"
    if error.validator == "pattern" and error.absolute_path and error.absolute_path[-1] == "reply_attributes":
        return f"{where}: attribute name {error.instance!r} is not valid: letters, digits, _ . : - and not goog..."
    if error.validator == "pattern" or error.validator in ("minLength", "maxLength"):
        value = error.instance
        shown = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
        rule = error.schema.get("description", "")
        return f"{where}: {shown} is not valid ({error.validator}): {rule}"
    if error.validator == "dependentRequired":  # time_zone or reference_time beside a plain prefix
        field = re.search(r"is a dependency of '(.*)'$", error.message)
        field = field.group(1) if field else where
        return f"{field}: only with prefix_template (a plain prefix is read as it is, so {field} would change nothing)"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "additionalProperties":
        return f"{where}: {error.message}; allowed fields are {sorted(error.schema.get('properties', {}))}"
    return f"{where}: {error.message}"


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
