"""Job parsing and validation: every bad input is a typed InvalidJob that names each problem."""

import base64
import json

import pytest

from worker.errors import InvalidJob
from worker.jobs import MAX_JOB_BYTES, job_from_pubsub, parse_job, validate_job


def test_minimal_job_gets_the_message_id_as_job_id():
    job = parse_job(b'{"bucket": "my-bucket", "prefix": ""}', message_id="m-1")
    assert (job.bucket, job.prefix, job.job_id, job.message_id) == ("my-bucket", "", "m-1", "m-1")


def test_explicit_job_id_wins_over_message_id():
    job = parse_job('{"bucket": "my-bucket", "prefix": "a/b/", "job_id": "nightly:2026-01-01"}', message_id="m-1")
    assert job.job_id == "nightly:2026-01-01"
    assert job.message_id == "m-1"


def test_job_without_any_id_gets_a_random_one():
    a = parse_job(b'{"bucket": "my-bucket", "prefix": "x"}')
    b = parse_job(b'{"bucket": "my-bucket", "prefix": "x"}')
    assert a.job_id and b.job_id and a.job_id != b.job_id


@pytest.mark.parametrize(("body", "expected"), [
    (b"", "job is empty"),
    (b"   ", "job is empty"),
    (b"not json", "not valid JSON"),
    (b'{"bucket": "a"', "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[]", "must be a JSON object, not an array"),
    (b'"bucket"', "must be a JSON object, not a string"),
    (b"42", "must be a JSON object, not a number"),
    (b"null", "must be a JSON object, not null"),
    (b"{}", "'bucket' is a required property"),
    (b'{"bucket": "my-bucket"}', "'prefix' is a required property"),
    (b'{"bucket": "My_Bucket", "prefix": ""}', "bucket: 'My_Bucket' is not valid"),
    (b'{"bucket": "ab", "prefix": ""}', "bucket: 'ab' is not valid"),
    (b'{"bucket": "192.168.1.1", "prefix": ""}', "is not valid"),
    (b'{"bucket": "a..b", "prefix": ""}', "is not valid"),
    (b'{"bucket": "-abc", "prefix": ""}', "is not valid"),
    (b'{"bucket": 7, "prefix": ""}', "bucket: 7 is not of type 'string'"),
    (b'{"bucket": "my-bucket", "prefix": null}', "prefix: None is not of type 'string'"),
    (b'{"bucket": "my-bucket", "prefix": "a\\u0000b"}', "prefix:"),
    (b'{"bucket": "my-bucket", "prefix": "line\\nbreak"}', "prefix:"),
    (b'{"bucket": "my-bucket", "prefix": "", "job_id": ""}', "job_id:"),
    (b'{"bucket": "my-bucket", "prefix": "", "job_id": "has space"}', "job_id:"),
    (b'{"bucket": "my-bucket", "prefix": "", "extra": 1}', "'extra' was unexpected"),
])
def test_bad_jobs_are_invalid_job_with_a_clear_problem(body, expected):
    with pytest.raises(InvalidJob) as info:
        parse_job(body, message_id="m-9")
    err = info.value
    assert err.code == "invalid_job" and err.retryable is False
    assert any(expected in p for p in err.problems), err.problems


def test_every_problem_is_reported_at_once():
    with pytest.raises(InvalidJob) as info:
        parse_job(b'{"bucket": "Bad Bucket", "job_id": 5, "colour": "red"}', message_id="m-2")
    problems = info.value.problems
    assert len(problems) == 4, problems
    joined = " | ".join(problems)
    for fragment in ("'prefix' is a required property", "bucket:", "job_id:", "'colour' was unexpected"):
        assert fragment in joined


def test_invalid_job_keeps_what_can_key_its_result():
    with pytest.raises(InvalidJob) as info:
        parse_job(b'{"bucket": "my-bucket", "prefix": "p/", "job_id": "j-1", "oops": true}', message_id="m-3")
    ref = info.value.ref
    assert (ref.job_id, ref.message_id, ref.bucket, ref.prefix) == ("j-1", "m-3", "my-bucket", "p/")


def test_an_unusable_job_id_falls_back_to_the_message_id():
    with pytest.raises(InvalidJob) as info:
        parse_job(b'{"bucket": "my-bucket", "job_id": "bad id with spaces"}', message_id="m-4")
    assert info.value.ref.job_id == "m-4"


def test_oversized_and_deeply_nested_jobs_are_refused_without_crashing():
    with pytest.raises(InvalidJob, match="at most"):
        parse_job(b'{"bucket": "my-bucket", "prefix": "' + b"a" * MAX_JOB_BYTES + b'"}')
    with pytest.raises(InvalidJob):
        parse_job(b"[" * 60000 + b"]" * 60000)


def test_long_values_are_truncated_in_problems():
    with pytest.raises(InvalidJob) as info:
        parse_job(json.dumps({"bucket": "x" * 5000, "prefix": ""}).encode())
    assert all(len(p) <= 300 for p in info.value.problems)


def test_glob_characters_are_plain_prefix_characters():
    job = validate_job({"bucket": "my-bucket", "prefix": "data/[2024]*?.parquet"}, message_id="m")
    assert job.prefix == "data/[2024]*?.parquet"


def test_unicode_prefixes_are_accepted():
    assert validate_job({"bucket": "my-bucket", "prefix": "données/日付=2026/"}, message_id="m").prefix.endswith("/")


def test_pubsub_push_envelope(golden):
    job = job_from_pubsub(golden("pubsub_push"), event_id="ignored")
    assert (job.bucket, job.prefix, job.job_id) == ("demo-data", "recipe/", "golden-1")
    assert job.message_id == "4242424242"
    assert job.attributes == {"origin": "golden-test"}
    assert job.publish_time == "2026-11-28T09:00:00.000Z"


def test_cloudevent_data_from_eventarc(golden):
    event = golden("cloudevent_message_published")
    job = job_from_pubsub(event["data"], event_id=event["id"])
    assert job.job_id == "4242424243"  # no job_id: the message ID
    assert job.attributes == {}


@pytest.mark.parametrize(("data", "expected"), [
    (None, "no Pub/Sub message"),
    ({}, "no Pub/Sub message"),
    ({"message": "x"}, "no Pub/Sub message"),
    ({"message": {"messageId": "1"}}, "has no data"),
    ({"message": {"messageId": "1", "data": "!!!not base64!!!"}}, "not valid base64"),
    ({"message": {"messageId": "1", "data": 12}}, "not a base64 string"),
    ({"message": {"messageId": "1", "data": base64.b64encode(b"{oops").decode()}}, "not valid JSON"),
])
def test_bad_envelopes_are_invalid_jobs_keyed_by_message_id(data, expected):
    with pytest.raises(InvalidJob) as info:
        job_from_pubsub(data, event_id="ev-1")
    assert expected in info.value.message
    assert info.value.ref.job_id in ("1", "ev-1")


@pytest.mark.parametrize("name", ["job_id", "correlation_id"])
def test_an_id_is_valid_by_the_schemas_own_rule(name):
    from worker.jobs import load_schema, valid_id

    spec = load_schema("job")["properties"][name]
    assert valid_id("a" * spec["maxLength"], name) and not valid_id("a" * (spec["maxLength"] + 1), name)
    assert valid_id("run-3:a/b@c+d=e.f_g", name)
    assert not any(valid_id(bad, name) for bad in ("", "a b", "a\n", "é", None, 7))


@pytest.mark.parametrize("field, value", [("time_zone", "Europe/Paris"), ("time_zone", "Mars/Olympus_Mons"),
                                          ("reference_time", "2026-11-28T03:00:00Z")])
def test_template_settings_beside_a_plain_prefix_are_refused_not_ignored(field, value):
    """A plain prefix is read as it is: a time zone or reference time beside it would silently change nothing,
    so the job is refused, naming the field (with prefix_template the same values are used)."""
    with pytest.raises(InvalidJob) as caught:
        validate_job({"bucket": "my-bucket", "prefix": "events/", field: value}, message_id="m1")
    assert caught.value.problems == [f"{field}: only with prefix_template (a plain prefix is read as it is, "
                                     f"so {field} would change nothing)"]
    if value != "Mars/Olympus_Mons":
        job = validate_job({"bucket": "my-bucket", "prefix_template": "events/{date}/", field: value},
                           message_id="m1", publish_time="2026-11-28T03:00:00Z")
        assert job.prefix.startswith("events/2026-11-2")
