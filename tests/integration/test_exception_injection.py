"""Issue 10's boundary contract, through the real function, the emulator's push and moto: an exception injected
at every stage ends in exactly one answer (an ``internal`` result naming an incident in the log), or, where
publishing fails for a while, in a redelivery that is answered once publishing works."""

import json
import time
import uuid
from pathlib import Path

import pytest

from worker.devstack.datasets import parquet_bytes, recipe_table
from worker.logs import REPORTED_ERROR_EVENT

FAULT_MAIN = Path(__file__).with_name("fault_main.py")
REPO = Path(__file__).resolve().parents[2]


def _run(stack, bucket, fault: str, *, prefix: str = "x.parquet", timeout: float = 60):
    """Start a function with ``fault`` injected, push one job to it, and return (results for it, its log)."""
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    name = f"fn-fault-{uuid.uuid4().hex[:6]}"
    fn = stack.start_function(name, source=FAULT_MAIN, INJECT_FAULT=fault, PYTHONPATH=str(REPO))
    try:
        topic = stack.add_push_subscription(f"jobs-{name}", fn)
        job_id = f"inject-{uuid.uuid4().hex[:8]}"
        message_id = stack.publish_job({"bucket": bucket, "prefix": prefix, "job_id": job_id}, topic=topic)
        # A job that fails before it is parsed is keyed by its message ID: it has no job_id yet.
        key = message_id if fault.startswith("parse:") else job_id
        stack.inbox.wait_for(key, timeout=timeout)
        time.sleep(1.5)  # a second answer, if there were one, would come within the redelivery's time
        for _ in range(2):
            stack.inbox.drain(wait_s=0.3)
        return stack.inbox.by_job[key], fn.log_tail(400)
    finally:
        fn.stop()


def _incident_logged(log: str, incident_id: str) -> dict:
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{") and incident_id in line]
    reported = [e for e in entries if e.get("@type") == REPORTED_ERROR_EVENT]
    assert reported, log[-2000:]
    return reported[0]


@pytest.mark.parametrize(("fault", "stage"), [
    ("parse:KeyError", "parsing the job"),
    ("federation:RuntimeError", "federating"),
    ("listing:TypeError", "listing and reading"),
    ("summarizing:RecursionError", "building the result"),
    ("result:AttributeError", "building the result"),
    ("message:UnicodeDecodeError:1", "publishing the result"),
])
def test_an_unexpected_exception_is_answered_once_as_internal(stack, bucket, fault, stage):
    answers, log = _run(stack, bucket, fault)
    assert len(answers) == 1, answers
    result, attributes = answers[0]
    assert result["status"] == "error" and attributes["error_code"] == "internal"
    error = result["error"]
    assert error["code"] == "internal" and error["retryable"] is False
    assert error["details"]["stage"] == stage
    incident = error["details"]["incident_id"]
    assert incident in error["message"] and "injected" not in error["message"]  # the text stays in the log
    entry = _incident_logged(log, incident)
    assert entry["severity"] == "ERROR" and "Traceback" in entry["message"] and "injected" in entry["message"]
    assert entry["serviceContext"]["service"] == "summary-worker"


def test_an_exception_reading_one_object_skips_it_and_the_job_is_answered(stack, bucket):
    answers, _ = _run(stack, bucket, "reading:MemoryError")
    assert len(answers) == 1
    result, _ = answers[0]
    assert result["status"] == "ok" and result["files"] == 0 and result["skipped_count"] == 1
    assert result["skipped"][0]["reason"].startswith("unreadable (MemoryError)")


@pytest.mark.parametrize("fault", ["client:ServiceUnavailable:2", "publishing:ConnectionError:2"])
def test_publishing_that_fails_for_a_while_is_redelivered_and_answered_once(stack, bucket, fault):
    # ServiceUnavailable is a classified transient fault: raised at once. An unclassified exception from the
    # publisher is tried once more as an internal result; when that fails too, the message is redelivered.
    answers, log = _run(stack, bucket, fault, timeout=90)
    assert len(answers) == 1, answers
    result, _ = answers[0]
    assert result["status"] == "ok" and result["rows"] == 3
    expected = ("publishing the result failed: ServiceUnavailable" if fault.startswith("client")
                else "internal error while publishing the result")
    assert expected in log
