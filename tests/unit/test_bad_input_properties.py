"""Property-based: whatever arrives (any bytes, any JSON, huge or deep or odd), the parser and the
envelope give a valid job or a typed invalid_job, never anything else; and the error result it makes
is valid against the result schema.

Random input almost never is a valid job or a push the fix changes, so the strategies also build those on
purpose (tests/unit/job_strategies.py: valid jobs and one-field mutations of them), and each test names the
branch every example took (``--hypothesis-show-statistics`` lists them) and fails unless its run reached
the branches it is about often enough (tests/unit/reaching.py).
"""

import base64
import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from worker.adapters.push import complete
from worker.errors import InvalidJob
from worker.jobs import MAX_JOB_BYTES, Job, job_from_pubsub, load_schema, parse_job
from worker.results import error_result, to_message
from worker.templates import PLACEHOLDER, TemplateError, check, render

from .job_strategies import (
    FULL_JOB,
    TEMPLATED_JOB,
    TIME_ZONES,
    listed_mutations,
    mutated_jobs,
    near_miss_templates,
    utc,
    valid_jobs,
    valid_templates,
)
from .reaching import Branches

RESULT = Draft202012Validator(load_schema("result"))
QUICK = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PUBLISHED = "2026-11-28T03:00:00Z"


class _Long(str):
    """A long string that statistics print short (hypothesis names a strategy by its values' repr)."""

    def __repr__(self) -> str:
        return f"'{self[0]}' * {len(self)}"


odd_text = st.text(st.characters(codec="utf-8"), max_size=200) | st.sampled_from([
    "", "\x00", "\x1f", "\u2028", "\ud7ff", "\ufeffpre/", "e\u0301/", "🙂/" * 50, "../" * 10, _Long("a" * 5000),
    "{date}", "{{", "}}", "%", "events/dt={date-1d:%Y-%m-%d}/"])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(odd_text, inner, max_size=4), max_leaves=20)
job_like = st.fixed_dictionaries({}, optional={
    "bucket": odd_text | st.sampled_from(["abc", "my-bucket", "a.b-c", "192.168.1.1", "xn--abc"]),
    "prefix": odd_text, "prefix_template": odd_text, "job_id": odd_text, "mode": odd_text | st.just("full"),
    "columns": st.lists(odd_text, max_size=3), "correlation_id": odd_text, "reply_topic": odd_text,
    "reply_attributes": st.dictionaries(odd_text, odd_text, max_size=3), "time_zone": odd_text,
    "reference_time": odd_text | st.just(PUBLISHED), "extra": json_values})


def outcome(call) -> Job | InvalidJob:
    try:
        return call()
    except InvalidJob as e:
        assert e.code == "invalid_job" and not e.retryable and e.problems
        result = error_result(e.ref, e)
        RESULT.validate(result)
        to_message(result)  # publishable: JSON without NaN, string attributes
        return e


def how_far(body: bytes, got: Job | InvalidJob) -> str:
    """Which branch the parser took, judged from the body itself (not from the parser's messages)."""
    if isinstance(got, Job):
        return "object: a valid job"
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return "not JSON: refused"
    return "object: refused by the schema" if isinstance(value, dict) else "JSON, not an object: refused"


def same_job(job: Job, payload: dict, published: str = PUBLISHED) -> None:
    """A valid job is the payload as sent: every field, the prefix resolved against the right time and zone."""
    assert job.bucket == payload["bucket"] and job.spec == payload  # fan_out is read from the spec
    assert job.job_id == payload.get("job_id", job.message_id)
    assert job.mode == payload.get("mode", "metadata")
    assert job.columns == (tuple(payload["columns"]) if "columns" in payload else None)
    assert job.correlation_id == payload.get("correlation_id") and job.reply_topic == payload.get("reply_topic")
    assert dict(job.reply_attributes) == payload.get("reply_attributes", {})
    if "prefix" in payload:
        assert job.prefix == payload["prefix"] and job.prefix_template is None
    else:
        at = utc(payload.get("reference_time") or published)
        assert job.prefix_template == payload["prefix_template"] and len(job.prefix) <= 1024
        assert job.prefix == render(payload["prefix_template"], at, payload.get("time_zone") or "UTC")
        assert utc(job.reference_time) == at


def refused_naming(got: Job | InvalidJob, field: str, payload: dict) -> None:
    assert isinstance(got, InvalidJob), f"a job with a bad {field} was accepted: {payload!r:.500}"
    assert any(field in problem for problem in got.problems), (field, got.problems)


def damaged(bodies: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bodies with up to three small edits: a byte changed, bytes inserted, one deleted, the tail cut."""

    def edit(edits: list[tuple[str, int, bytes]], body: bytes) -> bytes:
        body = bytearray(body)
        for how, at, data in edits:
            if not body:
                break
            i = at % len(body)
            if how == "change":
                body[i] = data[0]
            elif how == "insert":
                body[i:i] = data
            elif how == "delete":
                del body[i]
            else:
                del body[i:]
        return bytes(body)

    changes = st.tuples(st.sampled_from(["change", "insert", "delete", "cut"]), st.integers(0, 2**16),
                        st.binary(min_size=1, max_size=3) | st.text("0aZ \"{}[]:,\\é", min_size=1, max_size=3)
                        .map(str.encode))  # bytes that keep the text JSON more often
    return st.builds(edit, st.lists(changes, max_size=3), bodies)  # the edits first: drawn late, they would be few


# Valid jobs and every listed mutation, as sent (random valid jobs are test_job_like_objects_...'s part)
JOB_BODIES = [json.dumps(job, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
              for job in [FULL_JOB, TEMPLATED_JOB, {"bucket": "abc", "prefix": ""}, *(j for _, j in listed_mutations())]
              for ascii_only in (True, False)]

BYTES = Branches(object=15)  # a JSON object, checked against the schema


@BYTES.checked
@QUICK
@given(st.binary(max_size=2000) | damaged(st.sampled_from(JOB_BODIES)))
def test_any_bytes_are_a_job_or_invalid_job(body):
    got = outcome(lambda: parse_job(body, message_id="m-1"))
    BYTES.reached(how_far(body, got))


JSON_VALUES = Branches(object=25)


@JSON_VALUES.checked
@QUICK
@given(json_values)
def test_any_json_value_is_a_job_or_invalid_job(value):
    body = json.dumps(value).encode("utf-8", "surrogatepass")
    JSON_VALUES.reached(how_far(body, outcome(lambda: parse_job(body, message_id="m-1"))))


def examples(cases):
    """Explicit examples, run every time before the generated ones."""
    def add(test):
        for case in reversed(cases):
            test = example(case)(test)
        return test
    return add


JOBS = Branches(**{"valid job": 30, "mutated job": 30})
job_cases = st.one_of(valid_jobs().map(lambda job: ("valid job", None, job)),
                      mutated_jobs().map(lambda named: ("mutated job", *named)),
                      job_like.map(lambda job: ("job-like object", None, job)))
# Every listed bad value of every mutation, in a job with every field set, each run; the generated ones
# ("mutated job") put them and others in random valid jobs.
listed = [("valid job", None, job) for job in (FULL_JOB, TEMPLATED_JOB)] + [
    ("listed mutation", *named) for named in listed_mutations()]


@JOBS.checked
@examples(listed)
@QUICK
@given(job_cases)
def test_job_like_objects_are_a_job_or_invalid_job(case):
    kind, field, payload = case
    got = outcome(lambda: parse_job(json.dumps(payload), message_id="m-1", publish_time=PUBLISHED))
    if kind == "valid job":
        assert isinstance(got, Job), got.problems
        same_job(got, payload)
        JOBS.reached("valid job: accepted")
    elif kind in ("mutated job", "listed mutation"):
        refused_naming(got, field, payload)
        JOBS.reached(f"{kind}: refused naming {field}")
    else:
        if isinstance(got, Job):
            assert got.bucket == payload["bucket"] and isinstance(got.prefix, str) and len(got.prefix) <= 1024
        JOBS.reached(f"job-like object: {'accepted' if isinstance(got, Job) else 'refused'}")


@pytest.mark.parametrize("field,value", [("bucket", "abc\n"), ("job_id", "x\n"), ("correlation_id", "x\n"),
                                         ("prefix", "data/\n"), ("reply_topic", "projects/p/topics/results\n"),
                                         ("reference_time", PUBLISHED + "\n")])
def test_a_trailing_newline_is_refused(field, value):
    payload = {"bucket": "abc", "prefix": "", field: value}
    refused_naming(outcome(lambda: parse_job(json.dumps(payload), message_id="m-1")), field, payload)


@settings(max_examples=20, deadline=None)
@given(st.integers(min_value=MAX_JOB_BYTES + 1, max_value=4 * MAX_JOB_BYTES))
def test_oversized_jobs_are_invalid(size):
    got = outcome(lambda: parse_job(b'{"bucket": "abc", "prefix": "' + b"a" * size + b'"}'))
    assert isinstance(got, InvalidJob) and "a job is at most" in str(got)


# Nesting refused for each of its three reasons: the parser takes it (the schema refuses it), it is deeper
# than the parser goes (a RecursionError inside json), it is over the size limit. Depths drawn over the whole
# span (st.integers(100, 100_000)) were mostly the first: 2-4 of 10 were too deep for the parser.
NESTING = Branches(**{"parsed, then refused": 3, "nested too deeply": 3, "too many bytes": 3})
nestings = st.tuples(st.sampled_from([("[", "]"), ('{"a": ', "}")]),
                     st.integers(100, 600) | st.integers(2_000, 8_000) | st.integers(MAX_JOB_BYTES // 2 + 1, 100_000))


@NESTING.checked
@settings(max_examples=30, deadline=None)
@given(nestings)
def test_deep_nesting_is_invalid_not_a_crash(nesting):
    (opener, closer), depth = nesting
    got = outcome(lambda: parse_job(opener * depth + ("" if opener == "[" else "1") + closer * depth))
    assert isinstance(got, InvalidJob)
    # the size limit's own words ("a job is at most N bytes"): a nesting problem says "at most" too
    NESTING.reached("too many bytes" if "a job is at most" in str(got) else
                    "nested too deeply" if "nested too deeply" in str(got) else "parsed, then refused")


def _deepest_json(opener: str, closer: str) -> int:
    """The deepest nesting json.loads takes when called from here (it depends on the stack in use)."""
    low, high = 1, 10_000
    while low < high:
        depth = (low + high + 1) // 2
        try:
            json.loads(opener * depth + "1" + closer * depth)
            low = depth
        except RecursionError:
            high = depth - 1
    return low


def test_a_job_field_nested_just_short_of_the_parsers_limit_is_invalid_not_a_crash():
    """A value nested a few levels less deeply than json.loads refuses parses; recursive code over it (jsonschema's
    repr of the value in its message) used to raise RecursionError, answered internal. It is an invalid_job
    naming the field, whether objects or arrays nest, at every depth from far below that limit to past it."""
    for opener, closer in (('{"a": ', "}"), ("[", "]")):
        deepest = _deepest_json(opener, closer)
        for depth in [9, 50, *range(deepest - 12, deepest + 2)]:
            for field in ("reply_attributes", "columns", "bucket", "fan_out"):
                payload = {"bucket": "abc", "prefix": "", field: None}
                body = json.dumps(payload).replace("null", opener * depth + "1" + closer * depth)
                got = outcome(lambda body=body: parse_job(body, message_id="m-1"))
                assert isinstance(got, InvalidJob), (field, depth, got)
                named = [p for p in got.problems if p.startswith(f"{field}: nested more than")]
                if depth < deepest - 12:  # parsed with room to spare: the field's nesting is what is refused
                    assert named, got.problems
                else:  # near the limit the parser (its depth depends on the caller's stack) may refuse it first
                    assert named or got.problems == ["job JSON is nested too deeply"], got.problems


def b64(body: bytes) -> str:
    return base64.b64encode(body).decode()


envelopes = st.recursive(json_scalars, lambda inner: st.dictionaries(odd_text, inner, max_size=3), max_leaves=8) | \
    st.fixed_dictionaries({"message": st.fixed_dictionaries({}, optional={
        "data": st.binary(max_size=300).map(b64) | odd_text | json_scalars,
        "attributes": st.dictionaries(odd_text, odd_text, max_size=3) | json_scalars,
        "messageId": odd_text | json_scalars, "publishTime": odd_text | json_scalars})})
message_ids = st.from_regex(r"[0-9]{1,19}", fullmatch=True) | odd_text
# What Pub/Sub delivers: a message whose data is a job (valid, mutated, or any bytes).
pushed_jobs = st.one_of(valid_jobs().map(lambda job: ("a valid job", None, job)),
                        mutated_jobs().map(lambda named: ("a mutated job", *named)),
                        st.binary(max_size=300).map(lambda body: ("any bytes", None, body)))
pushes = st.builds(
    lambda job, message_id, attributes, published: (job, {"message": {
        "data": b64(job[2] if job[0] == "any bytes" else json.dumps(job[2]).encode()), "messageId": message_id,
        "attributes": attributes, "publishTime": published}, "subscription": "projects/p/subscriptions/s"}),
    pushed_jobs, message_ids, st.dictionaries(odd_text, odd_text, max_size=3),
    st.sampled_from([PUBLISHED, "2026-11-28T03:00:00.123Z"]))
ENVELOPES = Branches(**{"push of a valid job": 20, "push of a mutated job": 20})


@ENVELOPES.checked
@QUICK
@given(envelopes.map(lambda data: (None, data)) | pushes)
def test_any_envelope_is_a_job_or_invalid_job(case):
    pushed, data = case
    got = outcome(lambda: job_from_pubsub(data, "event-1"))
    if pushed is None:
        ENVELOPES.reached(f"any envelope: {'accepted' if isinstance(got, Job) else 'refused'}")
        return
    kind, field, payload = pushed
    message = data["message"]
    if kind == "a valid job":
        assert isinstance(got, Job), got.problems
        assert got.message_id == (message["messageId"] or "event-1") and got.publish_time == message["publishTime"]
        assert dict(got.attributes) == message["attributes"]
        same_job(got, payload, message["publishTime"])
    elif kind == "a mutated job":
        refused_naming(got, field, payload)
    ENVELOPES.reached(f"push of {kind}: {'accepted' if isinstance(got, Job) else 'refused'}")


# A raw push of a message with attributes and no body: Pub/Sub leaves data out, and the fix adds it.
push_messages = st.fixed_dictionaries({"messageId": message_ids | json_scalars}, optional={
    "attributes": st.dictionaries(odd_text, odd_text, max_size=3), "publishTime": odd_text | st.just(PUBLISHED),
    "orderingKey": odd_text, "message_id": odd_text, "publish_time": odd_text})
push_envelopes = st.fixed_dictionaries({"message": push_messages}, optional={
    "subscription": odd_text, "deliveryAttempt": st.integers(1, 100)})
small_json = json_scalars | st.lists(json_scalars, max_size=2) | st.dictionaries(odd_text, json_scalars, max_size=2)


def _near_miss(how: str, envelope: dict, value) -> dict:
    """A push the fix must leave alone: its message has data (any value), or no messageId, or is no object."""
    if how == "with data":
        envelope["message"]["data"] = value
    elif how == "without messageId":
        del envelope["message"]["messageId"]
    else:
        envelope["message"] = value if not isinstance(value, dict) else [value]
    return envelope


def _push_body(kind: str, envelope: dict, value, ascii_only: bool) -> tuple[str, bytes]:
    if kind != "attributes-only push":
        envelope = _near_miss(kind.removeprefix("push "), envelope, value)
    return kind, json.dumps(envelope, ensure_ascii=ascii_only).encode()


any_bodies = st.binary(max_size=500) | json_values.map(lambda v: json.dumps(v).encode())
PUSH_KINDS = ["attributes-only push"] * 3 + ["push with data", "push without messageId", "push message not an object",
                                              "any body"]
push_bodies = st.sampled_from(PUSH_KINDS).flatmap(
    lambda kind: any_bodies.map(lambda body: (kind, body)) if kind == "any body"
    else st.builds(_push_body, st.just(kind), push_envelopes, small_json, st.booleans()))
PUSH = Branches(**{"attributes-only push: data added": 40, "push with data": 5, "push without messageId": 5})


@PUSH.checked
@QUICK
@given(push_bodies)
def test_the_push_fix_only_ever_adds_an_empty_data(case):
    kind, body = case
    fixed = complete(body)
    if fixed is not None:
        before, after = json.loads(body), json.loads(fixed)
        assert "data" not in before["message"] and after["message"].pop("data") == ""
        assert after == before
    assert (fixed is not None) == (kind == "attributes-only push") or kind == "any body"
    PUSH.reached(f"{kind}: {'data added' if fixed is not None else 'unchanged'}")


TEMPLATES = Branches(**{"resolved: with placeholders": 25, "refused: with reasons": 25,
                        "refused: the date is out of range": 5})
NOW = datetime(2026, 11, 28, 3, tzinfo=UTC)
EDGES = (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, tzinfo=UTC))


@TEMPLATES.checked
@QUICK
@given(st.sampled_from([NOW, NOW, NOW, *EDGES]), st.sampled_from(TIME_ZONES),
       st.one_of(valid_templates, near_miss_templates, odd_text))
def test_any_template_resolves_or_is_refused_with_reasons(at, zone, template):
    problems = check(template)
    try:
        resolved = render(template, at, zone)
    except TemplateError as e:
        if problems:
            assert str(e) == "; ".join(problems)
            TEMPLATES.reached("refused: with reasons")
        else:  # a well-formed template whose date falls outside datetime's years, at either end only
            assert "outside the years 1-9999" in str(e) and at in EDGES, e
            TEMPLATES.reached("refused: the date is out of range")
    else:
        assert not problems and isinstance(resolved, str)
        placeholders = any(m.group(1) is not None for m in PLACEHOLDER.finditer(template))
        TEMPLATES.reached(f"resolved: {'with placeholders' if placeholders else 'plain'}")
