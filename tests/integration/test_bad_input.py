"""Bad input through the real function: any message body, any attributes, and a message with no body
at all are answered 200 (so Pub/Sub does not redeliver them) with one invalid_job result each."""

import base64
import json
import uuid

import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.job_strategies import mutated_jobs, valid_jobs
from tests.unit.reaching import Branches
from worker.jobs import valid_id

from .conftest import NEVER_CREATED

bodies = st.binary(max_size=3000) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=20), inner, max_size=3),
    max_leaves=10).map(lambda v: json.dumps(v).encode()) | st.sampled_from([
        b"", b"{", b'{"bucket": "abc"}', b'{"bucket": "abc", "prefix_template": "x/{nope}/"}',
        b'{"bucket": "abc", "prefix": "\\u0000"}', b"[" * 50_000 + b"]" * 50_000, b"x" * 200_000])
attributes = st.dictionaries(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)
                             .filter(lambda k: not k.startswith("goog")), st.text(max_size=100), max_size=4)


# Jobs valid by the schema (a bucket outside ALLOWED_BUCKETS, or one allowed and never created: answered forbidden
# or not_found) and one-field mutations of them; random bodies alone never are a job.
job_buckets = st.sampled_from(["not-an-allowed-bucket", NEVER_CREATED])
cases = st.one_of(bodies.map(lambda body: ("any body", body)),
                  valid_jobs(job_buckets).map(lambda job: ("valid job", job)),
                  mutated_jobs(job_buckets).map(lambda named: (f"job with a bad {named[0]}", named[1])),
                  st.just(("no data", b"")))
ANSWERS = Branches(**{"valid job: answered as a job": 1, "no data: invalid_job": 1})


@ANSWERS.checked
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(case=cases, attrs=attributes)
@example(case=("valid job", {"bucket": NEVER_CREATED, "prefix": "nothing/"}), attrs={})
@example(case=("no data", b""), attrs={"origin": "attributes-only"})
def test_any_push_is_answered_200_with_one_invalid_job_or_a_job(stack, case, attrs):
    kind, body = case
    message_id = f"prop-{uuid.uuid4().hex}"
    if isinstance(body, dict) and kind != "job with a bad job_id":  # its own job ID: no two examples share one
        body = json.dumps({**body, "job_id": f"prop-{uuid.uuid4().hex}"}).encode("utf-8", "surrogatepass")
    elif isinstance(body, dict):
        body = json.dumps(body).encode("utf-8", "surrogatepass")
    message = {"messageId": message_id, "publishTime": "2026-11-28T03:00:00.123Z", "attributes": attrs}
    if kind != "no data":
        message["data"] = base64.b64encode(body).decode()
    envelope = {"message": message, "subscription": "projects/p/subscriptions/s"}
    response = requests.post(stack.push_endpoint(), json=envelope, timeout=60)
    assert response.status_code == 200, response.text[:500]
    result, _ = stack.inbox.wait_one(_key(body, message_id, kind != "no data"), timeout=60)
    assert result["message_id"] == message_id
    code = result["error"]["code"] if result["status"] != "ok" else "ok"
    assert code in ("ok", "invalid_job", "forbidden", "not_found"), result
    if kind == "valid job":
        assert code != "invalid_job", result["error"]
    elif kind.startswith("job with a bad") or kind == "no data":
        assert code == "invalid_job", result
    ANSWERS.reached(f"{kind}: {'invalid_job' if code == 'invalid_job' else 'answered as a job'}")


def _key(body: bytes, message_id: str, with_data: bool) -> str:
    """The job ID the result is keyed by: the job's own when it gave a valid one (by the schema's rule)."""
    try:
        job_id = json.loads(body).get("job_id") if with_data else None
    except (ValueError, AttributeError, RecursionError):
        job_id = None
    return job_id if valid_id(job_id) else message_id


def test_a_message_with_attributes_and_no_body_is_answered_once(stack):
    message_id = stack.publisher.publish(stack.jobs_topic, b"", origin="attributes-only").result(timeout=30)
    result, attributes = stack.inbox.wait_one(message_id)
    assert result["error"]["code"] == "invalid_job" and "no data" in result["error"]["message"]
    assert attributes["origin"] == "attributes-only"
    for _ in range(3):
        stack.inbox.drain()
    assert len(stack.inbox.by_job[message_id]) == 1  # answered, not redelivered
