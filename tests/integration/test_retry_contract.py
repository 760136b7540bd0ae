"""The retry contract through the real stack: retryable faults raise (Pub/Sub redelivers), nothing is lost."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from worker.devstack.datasets import parquet_bytes, recipe_table

from .conftest import ALLOWED, _names


def _post_without_a_metadata_server(stack) -> requests.Response:
    """A job posted to a cold HTTP function whose metadata server is not there (nothing listens on port 9)."""
    bucket = ALLOWED[:-1][next(_names)]
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    cold = stack.start_function("function-cold-http", target="handle_http", GCE_METADATA_HOST="127.0.0.1:9",
                                GCE_METADATA_IP="127.0.0.1:9")
    try:
        return requests.post(f"http://{cold.address}/", json={"bucket": bucket, "prefix": ""}, timeout=120)
    finally:
        cold.stop()


def _throttled(stack, federated: threading.Event) -> None:
    """test_s3_throttling_is_retried_inside_the_job_then_handed_back's story, assertions included. ``federated``
    is set once its function holds AWS credentials (after its first job): from then on it never asks the metadata
    double again (credentials are fetched once and refreshed before expiry, in an hour), so the outage test may
    take the double down."""
    from worker.devstack.proxy import RecordingProxy

    try:
        bucket = ALLOWED[:-1][next(_names)]
        stack.put_objects(bucket, {f"t/part-{i}.parquet": parquet_bytes(recipe_table()) for i in range(4)})
        with RecordingProxy(stack.aws_endpoint, fail_rate=0.3, seed=3) as proxy:
            fn = stack.start_function("function-throttled", target="handle_http", AWS_ENDPOINT_URL=proxy.url)
            try:
                # some throttling: botocore's retries absorb it and the job succeeds
                for i in range(3):
                    response = requests.post(f"http://{fn.address}/", timeout=120,
                                             json={"bucket": bucket, "prefix": "t/", "job_id": f"throttled-{i}"})
                    federated.set()
                    assert response.status_code == 200 and response.json()["rows"] == 12
                assert any(s.injected for s in proxy.seen)
                # constant throttling: the job gives up with a retryable error, for Pub/Sub to redeliver
                proxy.fail_rate = 1.0
                response = requests.post(f"http://{fn.address}/", timeout=120,
                                         json={"bucket": bucket, "prefix": "t/", "job_id": "throttled-hard"})
                assert response.status_code == 503
                error = response.json()["error"]
                assert error["code"] == "throttled" and error["retryable"] is True
                assert "SlowDown" in error["message"]
                attempts = [s for s in proxy.seen if "job/throttled-hard" in s.user_agent]
                assert len(attempts) == 5  # botocore's standard mode: 5 attempts, then the job is handed back
            finally:
                fn.stop()
    finally:
        federated.set()


@pytest.fixture(scope="module", autouse=True)
def background(stack):
    """Two of the tests, started as the module starts, since both mostly wait (on google-auth's and botocore's
    retry backoffs): test_http_answers_503_for_a_retryable_fault's request (~15 s in google-auth's retries of the
    missing metadata server; it uses neither the metadata double nor Pub/Sub), and the whole of
    test_s3_throttling_is_retried_inside_the_job_then_handed_back (its own function and proxy; it needs the
    metadata double only for its first job, see ``_throttled``). Each test then takes its outcome."""
    federated = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        yield {"without_metadata": pool.submit(_post_without_a_metadata_server, stack),
               "throttled": pool.submit(_throttled, stack, federated), "federated": federated}


def test_metadata_outage_is_retried_not_answered(stack, bucket, background):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    cold = stack.start_function("function-cold")  # has never fetched credentials
    topic = stack.add_push_subscription("jobs-cold", cold, retry_policy={
        "minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 2}})
    assert background["federated"].wait(timeout=180)  # the throttling test's function has its credentials
    stack.metadata.unavailable = True
    try:
        stack.publish_job({"bucket": bucket, "prefix": "", "job_id": "through-an-outage"}, topic=topic)
        deadline = time.monotonic() + 60
        while "ERROR" not in cold.log_tail(200) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "through-an-outage" not in stack.inbox.by_job  # nothing answered while it cannot be done
        assert "job will be retried" in cold.log_tail(400)
    finally:
        stack.metadata.unavailable = False
    result, _ = stack.inbox.wait_one("through-an-outage", timeout=120)
    assert result["status"] == "ok" and result["rows"] == 3
    for _ in range(3):
        stack.inbox.drain()
    assert len(stack.inbox.by_job["through-an-outage"]) == 1  # one answer, no federation_failed
    cold.stop()


def test_http_answers_503_for_a_retryable_fault(background):
    response = background["without_metadata"].result(timeout=180)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["retryable"] is True and error["code"] == "unavailable"
    assert "metadata server" in error["message"]


def test_s3_throttling_is_retried_inside_the_job_then_handed_back(background):
    background["throttled"].result(timeout=300)  # re-raises its assertion, if one failed (see _throttled)
