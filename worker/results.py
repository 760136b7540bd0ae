"""A result: built from a summary or an error, turned into a Pub/Sub message and attributes.

Pure: the shape is schemas/result.schema.json, and tests hold every result against it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from worker import __version__
from worker.errors import WorkerError
from worker.jobs import Job, JobRef

OK = "ok"
ERROR = "error"


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


def to_message(result: dict) -> tuple[bytes, dict[str, str]]:
    """The Pub/Sub message for a result: compact JSON, and attributes subscribers can filter on: the job's
    pass-through attributes, then the worker's own (job_id, status, correlation_id, source_message_id,
    error_code)."""
    attributes = dict(result.get("attributes") or {})
    attributes |= {"job_id": result["job_id"], "status": result["status"]}
    if result.get("correlation_id"):
        attributes["correlation_id"] = result["correlation_id"]
    if result.get("message_id"):
        attributes["source_message_id"] = result["message_id"]
    if result["status"] == ERROR:
        attributes["error_code"] = result["error"]["code"]
    data = json.dumps(result, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    return data, attributes


def http_status(result: dict) -> int:
    """The HTTP status that answers a result: 200 ok, 4xx for a bad job, 5xx for a retryable fault."""
    if result["status"] == OK:
        return 200
    error = result["error"]
    if error["retryable"]:
        return 503
    return {"invalid_job": 400, "forbidden": 403, "not_found": 404, "deadline_exceeded": 422,
            "federation_failed": 502}.get(error["code"], 500)
