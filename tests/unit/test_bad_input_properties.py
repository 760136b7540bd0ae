"""Property-based: whatever arrives (any bytes, any JSON, huge or deep or odd), the parser and the
envelope give a valid job or a typed invalid_job, never anything else; and the error result it makes
is valid against the result schema."""

import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from worker.adapters.push import complete
from worker.jobs import MAX_JOB_BYTES, InvalidJobMessage, Job, job_from_pubsub, load_schema, parse_job
from worker.results import error_result, to_message
from worker.templates import TemplateError, check, render

RESULT = Draft202012Validator(load_schema("result"))
QUICK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

odd_text = st.text(st.characters(codec="utf-8"), max_size=200) | st.sampled_from([
    "", "\x00", "\x1f", "\u2028", "\ud7ff", "\ufeffpre/", "e\u0301/", "🙂/" * 50, "../" * 10, "a" * 5000,
    "{date}", "{{", "}}", "%", "events/dt={date-1d:%Y-%m-%d}/"])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(odd_text, inner, max_size=4), max_leaves=20)
job_like = st.fixed_dictionaries({}, optional={
    "bucket": odd_text | st.sampled_from(["abc", "my-bucket", "a.b-c", "192.168.1.1", "xn--abc"]),
    "prefix": odd_text, "prefix_template": odd_text, "job_id": odd_text, "mode": odd_text | st.just("full"),
    "columns": st.lists(odd_text, max_size=3), "correlation_id": odd_text, "reply_topic": odd_text,
    "reply_attributes": st.dictionaries(odd_text, odd_text, max_size=3), "time_zone": odd_text,
    "reference_time": odd_text | st.just("2026-11-28T03:00:00Z"), "extra": json_values})


def outcome(call) -> Job | InvalidJobMessage:
    try:
        return call()
    except InvalidJobMessage as e:
        assert e.code == "invalid_job" and not e.retryable and e.problems
        result = error_result(e.ref, e)
        RESULT.validate(result)
        to_message(result)  # publishable: JSON without NaN, string attributes
        return e


@QUICK
@given(st.binary(max_size=2000))
def test_any_bytes_are_a_job_or_invalid_job(body):
    outcome(lambda: parse_job(body, message_id="m-1"))


@QUICK
@given(json_values)
def test_any_json_value_is_a_job_or_invalid_job(value):
    outcome(lambda: parse_job(json.dumps(value), message_id="m-1"))


@QUICK
@given(job_like)
def test_job_like_objects_are_a_job_or_invalid_job(payload):
    got = outcome(lambda: parse_job(json.dumps(payload), message_id="m-1", publish_time="2026-11-28T03:00:00Z"))
    if isinstance(got, Job):
        assert got.bucket == payload["bucket"] and isinstance(got.prefix, str) and len(got.prefix) <= 1024


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=MAX_JOB_BYTES + 1, max_value=4 * MAX_JOB_BYTES))
def test_oversized_jobs_are_invalid(size):
    got = outcome(lambda: parse_job(b'{"bucket": "abc", "prefix": "' + b"a" * size + b'"}'))
    assert isinstance(got, InvalidJobMessage) and "at most" in str(got)


@settings(max_examples=10, deadline=None)
@given(st.integers(min_value=100, max_value=100_000))
def test_deep_nesting_is_invalid_not_a_crash(depth):
    got = outcome(lambda: parse_job("[" * depth + "]" * depth))
    assert isinstance(got, InvalidJobMessage)


envelopes = st.recursive(json_scalars, lambda inner: st.dictionaries(odd_text, inner, max_size=3), max_leaves=8) | \
    st.fixed_dictionaries({"message": st.fixed_dictionaries({}, optional={
        "data": st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()) | odd_text | json_scalars,
        "attributes": st.dictionaries(odd_text, odd_text, max_size=3) | json_scalars,
        "messageId": odd_text | json_scalars, "publishTime": odd_text | json_scalars})})


@QUICK
@given(envelopes)
def test_any_envelope_is_a_job_or_invalid_job(data):
    outcome(lambda: job_from_pubsub(data, "event-1"))


@QUICK
@given(st.binary(max_size=500) | json_values.map(lambda v: json.dumps(v).encode()))
def test_the_push_fix_only_ever_adds_an_empty_data(body):
    fixed = complete(body)
    if fixed is not None:
        before, after = json.loads(body), json.loads(fixed)
        assert "data" not in before["message"] and after["message"].pop("data") == ""
        assert after == before


@QUICK
@given(odd_text)
def test_any_template_resolves_or_is_refused_with_reasons(template):
    from datetime import UTC, datetime

    problems = check(template)
    try:
        resolved = render(template, datetime(2026, 11, 28, 3, tzinfo=UTC))
    except TemplateError:
        assert problems
    else:
        assert not problems and isinstance(resolved, str)
