"""A result: built from a summary or an error, turned into a Pub/Sub message and attributes.

Pure: the shape is schemas/result.schema.json, and tests hold every result against it.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from worker import __version__
from worker.errors import WorkerError, http_status_of
from worker.jobs import Job, JobRef

OK = "ok"
ERROR = "error"
# Pub/Sub's limits (cloud.google.com/pubsub/quotas): a publish request of 10 MB in all, attribute keys of
# 256 bytes and values of 1,024 bytes. The default leaves room for the attributes (100 at the most).
DEFAULT_RESULT_MAX_BYTES = 9_000_000
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
# What a result too large gives up first, each section cut from its end (its last entries in the
# order the result lists them); "omitted" then says how many entries of each went.
REDUCTION_ORDER = ("skipped", "profile", "statistics", "schema", "schema_conflicts", "partition_columns",
                   "missing_columns", "created_by", "compression")
# Then, only if still too large (a result whose identity alone is huge): the job's echo, the error's problem
# list and details, the pass-through attributes; and last, long identity strings are shortened.
LAST_RESORT = ("job", "problems", "details", "attributes")
IDENTITY_MAX_CHARS = 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _base(ref: Job | JobRef, status: str, timings: dict[str, float] | None) -> dict:
    base = {
        "job_id": ref.job_id,
        "status": status,
        "bucket": ref.bucket,
        "prefix": ref.prefix,
        "message_id": ref.message_id,
        "correlation_id": ref.correlation,
        "attributes": ref.pass_through,
        "timings_ms": {k: round(v, 1) for k, v in (timings or {}).items()},
        "finished_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "worker_version": __version__,
        **({"mode": ref.mode} if ref.mode else {}),
    }
    if ref.prefix_template is not None:
        base["prefix_template"] = ref.prefix_template
    if isinstance(ref, Job):
        if ref.reference_time is not None:
            base["reference_time"] = ref.reference_time
        base["job"] = dict(ref.spec)
    return base


def ok_result(job: Job, summary: dict, timings: dict[str, float] | None = None) -> dict:
    """A successful result: the job's identity, the summary fields and timings per phase."""
    return {**_base(job, OK, timings), **summary}


def error_result(ref: Job | JobRef, error: WorkerError, timings: dict[str, float] | None = None) -> dict:
    """A failed result: the job's identity (as far as known) and ``error: {code, message, retryable}``."""
    return {**_base(ref, ERROR, timings), "error": error.to_dict()}


_NOT_STRICT = (ValueError, TypeError, UnicodeEncodeError)  # what _encode raises for a value that is not strict JSON


def _encode(value: Any) -> bytes:
    """Compact JSON in UTF-8; raises _NOT_STRICT for NaN/Infinity, a lone surrogate or a non-JSON type."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def to_json(result: dict) -> bytes:
    """A result as compact, strict JSON in UTF-8 (no NaN or Infinity tokens, no lone surrogates)."""
    try:
        return _encode(result)
    except _NOT_STRICT:
        # Rendering already makes every figure JSON; this is the net under it, for whatever slipped by.
        return _encode(strict(result))


def strict(value: Any) -> Any:
    """``value`` with only JSON's own types: non-finite floats as "NaN"/"Infinity"/"-Infinity", strings
    made valid Unicode (a lone surrogate becomes U+FFFD), anything else as its text."""
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else NON_FINITE[repr(value)]
    if isinstance(value, dict):
        return {_valid_text(str(k)): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return _valid_text(str(value))


def _valid_text(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


def fit(result: dict, max_bytes: int = DEFAULT_RESULT_MAX_BYTES) -> dict:
    """``result`` as strict JSON values, reduced when its encoding is over ``max_bytes``.

    Deterministic: sections go in REDUCTION_ORDER, each from its end, only as many entries as needed;
    the result then carries ``omitted`` ({section: entries left out, ..., "max_bytes": N}). The counts
    (rows, columns, files, skipped_count...) always stay. If even that is too large (a huge job echo, say),
    the echo goes too; an error result keeps its code and message.
    """
    try:  # the usual case, all in C: already strict
        size = len(_encode(result))
    except _NOT_STRICT:
        result = strict(result)
        size = len(_encode(result))
    if size <= max_bytes:
        return result
    reduced = dict(result)
    omitted: dict[str, Any] = {"max_bytes": max_bytes, "original_bytes": size}
    for section in REDUCTION_ORDER:
        if section not in reduced or not reduced[section]:
            continue
        room = max_bytes - len(to_json({**reduced, "omitted": {**omitted, section: 10**9}}))
        kept, dropped = _cut(reduced[section], room + _size(reduced[section]))
        if dropped:
            reduced[section] = kept
            omitted[section] = dropped
        if len(to_json({**reduced, "omitted": omitted})) <= max_bytes:
            return {**reduced, "omitted": omitted}
    for section in LAST_RESORT:
        holder = reduced.get("error", {}) if section in ("problems", "details") else reduced
        if not holder.get(section):
            continue
        omitted[section] = len(holder[section])
        if holder is reduced:
            reduced[section] = {} if section == "attributes" else None
            if section == "job":
                reduced.pop("job")
        else:
            reduced["error"] = {k: v for k, v in holder.items() if k != section}
        if len(to_json({**reduced, "omitted": omitted})) <= max_bytes:
            return {**reduced, "omitted": omitted}
    for name, value in reduced.items():  # identity strings only a hostile message makes this long
        if isinstance(value, str) and len(value) > IDENTITY_MAX_CHARS:
            reduced[name] = value[:IDENTITY_MAX_CHARS - 3] + "..."
            omitted[f"{name}_chars"] = len(value) - IDENTITY_MAX_CHARS + 3
    if "error" in reduced:
        reduced["error"] = {**reduced["error"], "message": reduced["error"]["message"][:IDENTITY_MAX_CHARS]}
    if len(to_json({**reduced, "omitted": omitted})) <= max_bytes:
        return {**reduced, "omitted": omitted}
    raise ValueError(f"a result cannot be made to fit in {max_bytes} bytes")


def _size(value: Any) -> int:
    return len(_encode(value))  # value is part of a result fit() has made strict


def _cut(section: list | dict, budget: int) -> tuple[list | dict, int]:
    """The longest head of ``section`` whose encoding fits in ``budget`` bytes, and how many entries went."""
    items = list(section.items()) if isinstance(section, dict) else list(section)
    used = 2  # the brackets
    keep = 0
    for item in items:
        cost = (_size(item[0]) + 1 + _size(item[1]) if isinstance(section, dict) else _size(item)) + (1 if keep else 0)
        if used + cost > budget:
            break
        used += cost
        keep += 1
    head = items[:keep]
    return (dict(head) if isinstance(section, dict) else head), len(items) - keep


def to_message(result: dict) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub message for a result: compact JSON, and attributes subscribers can filter on: the job's
    pass-through attributes, then the worker's own (job_id, status, correlation_id, source_message_id,
    error_code). Attributes over Pub/Sub's size limits are left out (the result's ``attributes`` shows them)."""
    attributes = dict(result.get("attributes") or {})
    attributes |= {"job_id": result["job_id"], "status": result["status"]}
    if result.get("correlation_id"):
        attributes["correlation_id"] = result["correlation_id"]
    if result.get("message_id"):
        attributes["source_message_id"] = result["message_id"]
    if result["status"] == ERROR:
        attributes["error_code"] = result["error"]["code"]
    attributes = {_valid_text(k): _valid_text(v) for k, v in attributes.items()}
    attributes = {k: v for k, v in attributes.items() if 0 < len(k.encode("utf-8")) <= MAX_ATTRIBUTE_KEY_BYTES
                  and len(v.encode("utf-8")) <= MAX_ATTRIBUTE_VALUE_BYTES}
    return to_json(result), attributes


def http_status(result: dict) -> int:
    """The HTTP status that answers a result: 200 ok, else the error class's (``worker.errors.http_status_of``):
    4xx for a bad job, 503 for a retryable fault."""
    if result["status"] == OK:
        return 200
    return http_status_of(result["error"]["code"], result["error"]["retryable"])
