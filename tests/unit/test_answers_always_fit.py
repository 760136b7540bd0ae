"""Issue 10, items 1-2 and the bad-input rows: every result is strict JSON within RESULT_MAX_BYTES and says what it
left out; jobs that used to escape the boundary (lone surrogates, byte-long attributes, out-of-range dates, costly
arrays) are invalid_job."""

import itertools
import json

import jsonschema._keywords
import pytest
from jsonschema import Draft202012Validator

from worker.errors import Internal, InvalidJob
from worker.jobs import Job, JobRef, load_schema, parse_job
from worker.results import REDUCTION_ORDER, error_result, fit, ok_result, to_json, to_message

VALIDATOR = Draft202012Validator(load_schema("result"))
JOB = Job(bucket="my-bucket", prefix="p/", job_id="j-1", message_id="m-1")


def _wide(columns: int) -> dict:
    """An ok result shaped like a wide full-mode answer."""
    return ok_result(JOB, {
        "rows": 10, "columns": columns, "files": 1, "bytes": 1, "row_groups": 1,
        "schema": [{"name": f"c{i:05d}", "type": "int64", "files": 1} for i in range(columns)],
        "statistics": {f"c{i:05d}": {"null_count": 0, "min": i, "max": i + 1} for i in range(columns)},
        "profile": {f"c{i:05d}": {"kind": "numeric", "count": 10, "null_count": 0, "min": 0, "max": 1}
                    for i in range(columns)},
        "partition_columns": [], "compression": ["ZSTD"], "created_by": ["w"],
        "skipped_count": 100, "skipped": [{"key": f"k/{i:03d}", "reason": "not a .parquet key"} for i in range(100)],
    })


@pytest.mark.parametrize("share", [0.01, 0.05, 0.4, 0.7, 0.95])
def test_a_result_too_large_is_cut_in_the_documented_order_and_says_so(share):
    full = _wide(5000)
    max_bytes = int(len(to_json(full)) * share)
    reduced = fit(full, max_bytes)
    data = to_json(reduced)
    assert len(data) <= max_bytes
    VALIDATOR.validate(json.loads(data))
    omitted = reduced["omitted"]
    assert omitted["max_bytes"] == max_bytes and omitted["original_bytes"] == len(to_json(full))
    cut = [section for section in REDUCTION_ORDER if section in omitted]
    # sections go in order: a later one is cut only when every earlier one is gone
    for earlier, later in itertools.pairwise(cut):
        assert reduced[earlier] in ([], {}), (earlier, later)
    for section in cut:
        kept = reduced[section]
        whole = full[section]
        assert len(kept) + omitted[section] == len(whole)
        assert list(kept) == list(whole)[:len(kept)]  # each section keeps its head
    assert reduced["rows"] == 10 and reduced["columns"] == 5000 and reduced["skipped_count"] == 100
    assert fit(full, max_bytes) == reduced  # deterministic


def test_a_result_that_fits_is_left_as_it_is():
    result = _wide(3)
    assert fit(result, 1_000_000) == result and "omitted" not in result


def test_non_finite_floats_and_lone_surrogates_become_strict_json():
    result = ok_result(JOB, {"rows": 1, "columns": 1, "files": 1, "bytes": 1, "row_groups": 1, "schema": [],
                             "statistics": {"x\udc80": {"null_count": 0, "min": float("-inf"), "max": float("nan")}},
                             "skipped_count": 0, "skipped": []})
    with pytest.raises(ValueError):
        json.dumps(result, allow_nan=False)
    data, _ = to_message(fit(result))
    parsed = json.loads(data.decode("utf-8", errors="strict"))
    assert parsed["statistics"] == {"x\ufffd": {"null_count": 0, "min": "-Infinity", "max": "NaN"}}


def test_message_attributes_keep_pubsubs_limits():
    job = Job(bucket="my-bucket", prefix="p/", job_id="j-1", attributes={"k": "é" * 600, "ok": "v", "s": "\ud800"})
    _, attributes = to_message(ok_result(job, {}))
    assert attributes["ok"] == "v" and "k" not in attributes  # 1,200 bytes: left out
    assert attributes["s"] == "\ufffd"
    assert all(len(v.encode()) <= 1024 for v in attributes.values())


def test_an_internal_error_result_names_its_incident_not_the_exception_text():
    error = Internal(ValueError("s3://secret-bucket/key?X-Amz-Signature=abc"), stage="reading", incident_id="abc123")
    result = error_result(JobRef(job_id="j"), error)
    VALIDATOR.validate(result)
    assert result["error"]["code"] == "internal" and result["error"]["details"]["incident_id"] == "abc123"
    assert "Signature" not in to_json(result).decode()


@pytest.mark.parametrize(("body", "says"), [
    ('{"bucket": "my-bucket", "prefix": "a\\ud800"}', "prefix: not valid Unicode"),
    ('{"bucket": "my-bucket", "prefix": "", "reply_attributes": {"k": "\\udfff"}}', "reply_attributes.k: not valid"),
    ('{"bucket": "my-bucket", "prefix": "", "reply_attributes": {"\\ud800": "v"}}', "a field name is not valid"),
    (json.dumps({"bucket": "my-bucket", "prefix": "", "reply_attributes": {"k": "é" * 1000}}), "2000 bytes of UTF-8"),
    (json.dumps({"bucket": "my-bucket", "prefix_template": "d={date}/", "reference_time": "0001-01-01T00:00:00Z",
                 "time_zone": "America/New_York"}), "outside the years 1-9999"),
    (json.dumps({"bucket": "my-bucket", "prefix_template": "d={date+1d}/", "reference_time": "9999-12-31T23:00:00Z"}),
     "outside the years 1-9999"),
    (json.dumps({"bucket": "my-bucket", "prefix_template": "d={date+1mo}/",
                 "reference_time": "9999-12-31T23:00:00Z"}), "outside the years 1-9999"),
    (json.dumps({"bucket": "my-bucket", "prefix_template": "d={date}/",
                 "reference_time": "0001-01-01T00:30:00+01:00"}), "outside the years 1-9999"),
])
def test_jobs_that_used_to_escape_the_boundary_are_invalid_jobs(body, says):
    with pytest.raises(InvalidJob) as caught:
        parse_job(body, message_id="m-1")
    assert says in caught.value.message
    result = error_result(caught.value.ref, caught.value)
    VALIDATOR.validate(result)
    to_message(result)[0].decode("utf-8", errors="strict")


def test_a_large_array_of_mixed_items_never_reaches_pairwise_comparison(monkeypatch):
    calls = []
    original = jsonschema._keywords.uniqueItems

    def spy(validator, unique, instance, schema):
        if isinstance(instance, list):
            calls.append(len(instance))
        return original(validator, unique, instance, schema)

    monkeypatch.setattr(jsonschema._keywords, "uniqueItems", spy)
    monkeypatch.setitem(Draft202012Validator.VALIDATORS, "uniqueItems", spy)
    import worker.jobs
    worker.jobs._validator.cache_clear()
    worker.jobs._validator()  # its check of the schema against the meta-schema is not what is counted
    calls.clear()
    try:
        body = json.dumps({"bucket": "my-bucket", "prefix": "", "columns": [{}, *range(12000)]}, separators=(",", ":"))
        with pytest.raises(InvalidJob) as caught:
            parse_job(body)
        assert "every item must be a string" in caught.value.message
        assert "12001 items; at most 10000" in caught.value.message
        assert calls == []  # jsonschema's uniqueItems (pairwise for unsortable items) did not run
        with pytest.raises(InvalidJob):
            parse_job(json.dumps({"bucket": "my-bucket", "prefix": "", "columns": ["a", "a"]}))
        assert calls == [2]  # strings only: uniqueItems runs (it sorts them)
    finally:
        worker.jobs._validator.cache_clear()


def test_the_problem_list_is_bounded():
    body = json.dumps({"bucket": "my-bucket", "prefix": "", **{f"x{i}": 1 for i in range(500)}})
    with pytest.raises(InvalidJob) as caught:
        parse_job(body)
    assert len(caught.value.problems) <= 51
