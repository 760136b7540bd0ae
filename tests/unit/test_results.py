"""Results: every result is valid against schemas/result.schema.json and carries filterable attributes."""

import json

import pytest
from jsonschema import Draft202012Validator

from worker.errors import DeadlineExceeded, Forbidden, InvalidJob, NotFound, Retryable, Throttled, WorkerError
from worker.jobs import Job, JobRef, load_schema
from worker.results import error_result, http_status, ok_result, to_message
from worker.summary import Summary

VALIDATOR = Draft202012Validator(load_schema("result"))
JOB = Job(bucket="my-bucket", prefix="p/", job_id="j-1", message_id="m-1")


def test_result_schema_is_a_valid_schema():
    Draft202012Validator.check_schema(load_schema("result"))
    Draft202012Validator.check_schema(load_schema("job"))


def test_ok_result_is_valid_and_carries_the_job():
    result = ok_result(JOB, Summary().to_dict(), {"federation": 1.23, "total": 2})
    VALIDATOR.validate(result)
    assert result["job_id"] == "j-1" and result["message_id"] == "m-1"
    assert result["status"] == "ok" and "error" not in result
    assert result["timings_ms"] == {"federation": 1.2, "total": 2}


@pytest.mark.parametrize("error", [
    InvalidJob("bad", problems=["a", "b"]), Forbidden("no"), NotFound("none"), Retryable("later"), Throttled("slow"),
    WorkerError("odd", details={"aws_code": "Weird"}),
])
def test_error_results_are_valid(error):
    result = error_result(JobRef(job_id="m-7", message_id="m-7"), error)
    VALIDATOR.validate(result)
    assert result["status"] == "error"
    assert result["error"]["code"] == error.code
    assert result["error"]["retryable"] is error.retryable
    assert result["bucket"] is None and result["prefix"] is None


def test_schema_rejects_an_ok_result_without_a_summary():
    result = ok_result(JOB, {}, {})
    assert not VALIDATOR.is_valid(result)


def test_message_attributes_let_subscribers_filter():
    data, attributes = to_message(error_result(JOB, NotFound("nothing here")))
    assert attributes == {"job_id": "j-1", "status": "error", "source_message_id": "m-1", "error_code": "not_found"}
    assert json.loads(data)["error"]["message"] == "nothing here"
    _, ok_attributes = to_message(ok_result(JOB, Summary().to_dict()))
    assert ok_attributes == {"job_id": "j-1", "status": "ok", "source_message_id": "m-1"}


@pytest.mark.parametrize(("error", "status"), [
    (None, 200), (InvalidJob("x"), 400), (Forbidden("x"), 403), (NotFound("x"), 404), (Retryable("x"), 503),
    (Throttled("x"), 503), (WorkerError("x"), 500), (DeadlineExceeded("x"), 422),
])
def test_http_status(error, status):
    result = ok_result(JOB, Summary().to_dict()) if error is None else error_result(JOB, error)
    assert http_status(result) == status
