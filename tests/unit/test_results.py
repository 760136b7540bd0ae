"""Results: every result is valid against schemas/result.schema.json and carries filterable attributes."""

import json

import pytest
from jsonschema import Draft202012Validator

from worker.errors import DeadlineExceeded, Forbidden, InvalidJob, NotFound, Throttled, Unavailable, WorkerError
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
    InvalidJob("bad", problems=["a", "b"]), Forbidden("no"), NotFound("none"), Unavailable("later"), Throttled("slow"),
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
    assert attributes == {"job_id": "j-1", "status": "error", "source_message_id": "m-1", "error_code": "not_found",
                          "correlation_id": "j-1"}
    assert json.loads(data)["error"]["message"] == "nothing here"
    _, ok_attributes = to_message(ok_result(JOB, Summary().to_dict()))
    assert ok_attributes == {"job_id": "j-1", "status": "ok", "source_message_id": "m-1", "correlation_id": "j-1"}


@pytest.mark.parametrize(("error", "status"), [
    (None, 200), (InvalidJob("x"), 400), (Forbidden("x"), 403), (NotFound("x"), 404), (Unavailable("x"), 503),
    (Throttled("x"), 503), (WorkerError("x"), 500), (DeadlineExceeded("x"), 422),
])
def test_http_status(error, status):
    result = ok_result(JOB, Summary().to_dict()) if error is None else error_result(JOB, error)
    assert http_status(result) == status


# -- chaining: correlation and pass-through attributes ---------------------------------------------------


def chained(body: str, attributes: dict[str, str] | None = None):
    from worker.jobs import parse_job

    return parse_job(body, message_id="m-9", attributes=attributes or {}, publish_time="2026-11-28T03:00:00Z")


def test_the_correlation_id_comes_from_the_job_then_the_message_then_the_job_id():
    body = '{"bucket": "abc", "prefix": "p/", "job_id": "j-9"%s}'
    assert chained(body % ', "correlation_id": "run-1"', {"correlation_id": "run-2"}).correlation == "run-1"
    assert chained(body % "", {"correlation_id": "run-2"}).correlation == "run-2"
    assert chained(body % "", {"correlation_id": "not a valid id!"}).correlation == "j-9"
    assert chained(body % "").correlation == "j-9"


def test_a_result_passes_the_jobs_attributes_through_and_keeps_its_own():
    job = chained('{"bucket": "abc", "prefix": "p/", "job_id": "j-9", "reply_attributes": {"stage": "two"}}',
                  {"schedule": "nightly", "stage": "one", "status": "forged", "googclient_schemaname": "x",
                   "correlation_id": "run-5"})
    result = ok_result(job, Summary().to_dict())
    VALIDATOR.validate(result)
    assert result["attributes"] == {"schedule": "nightly", "stage": "two"}
    assert result["correlation_id"] == "run-5"
    assert result["job"] == {"bucket": "abc", "prefix": "p/", "job_id": "j-9", "reply_attributes": {"stage": "two"}}
    _, attributes = to_message(result)
    assert attributes == {"schedule": "nightly", "stage": "two", "job_id": "j-9", "status": "ok",
                          "correlation_id": "run-5", "source_message_id": "m-9"}


def test_a_templated_result_says_what_it_read_and_when():
    job = chained('{"bucket": "abc", "prefix_template": "e/dt={date-1d}/"}', {"schedule": "nightly"})
    result = ok_result(job, Summary().to_dict())
    VALIDATOR.validate(result)
    assert (result["prefix"], result["prefix_template"], result["reference_time"]) == (
        "e/dt=2026-11-27/", "e/dt={date-1d}/", "2026-11-28T03:00:00Z")


def test_an_invalid_job_still_answers_in_its_pipeline():
    with pytest.raises(InvalidJob) as caught:
        chained('{"bucket": "abc", "prefix": 5, "correlation_id": "run-3", "reply_attributes": {"stage": "x"}}',
                {"schedule": "nightly"})
    result = error_result(caught.value.ref, caught.value)
    VALIDATOR.validate(result)
    assert result["correlation_id"] == "run-3"
    assert result["attributes"] == {"schedule": "nightly", "stage": "x"}
    assert to_message(result)[1]["correlation_id"] == "run-3"


def test_pass_through_attributes_stay_within_pubsubs_limit():
    from worker.jobs import MAX_ATTRIBUTES

    many = {f"a{i:03d}": "v" for i in range(150)}
    job = chained('{"bucket": "abc", "prefix": "p/", "reply_attributes": {"zz-mine": "1"}}', many)
    _, attributes = to_message(ok_result(job, Summary().to_dict()))
    assert len(attributes) <= MAX_ATTRIBUTES
    assert attributes["zz-mine"] == "1" and attributes["status"] == "ok" and "a000" in attributes
