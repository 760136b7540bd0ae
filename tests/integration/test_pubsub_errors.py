"""Bad input and permanent failures: one error result each, acknowledged; the worker keeps serving."""

import base64
import json

import pytest

from worker.devstack.datasets import parquet_bytes, recipe_table


def test_prefix_without_parquet_is_not_found(stack, bucket, run_job):
    stack.put_objects(bucket, {"nothing/_SUCCESS": b"", "nothing/readme.txt": b"hi"})
    result, attributes, _ = run_job({"bucket": bucket, "prefix": "nothing/"})
    assert result["status"] == "error"
    assert result["error"]["code"] == "not_found" and result["error"]["retryable"] is False
    assert "2 other object(s) skipped" in result["error"]["message"]
    assert attributes["status"] == "error" and attributes["error_code"] == "not_found"


def test_prefix_with_no_objects_is_not_found(stack, bucket, run_job):
    stack.put_objects(bucket, {"a/x.parquet": parquet_bytes(recipe_table())})
    result, _, _ = run_job({"bucket": bucket, "prefix": "nowhere/"})
    assert result["error"]["code"] == "not_found"
    assert f"s3://{bucket}/nowhere/" in result["error"]["message"]


def test_missing_bucket_is_not_found(stack, bucket, run_job):
    stack.allow_read(bucket, [""])  # the role may read it, but it does not exist
    result, _, _ = run_job({"bucket": bucket, "prefix": ""})
    assert result["error"]["code"] == "not_found"
    assert "NoSuchBucket" in result["error"]["message"]


def test_bucket_outside_the_allowlist_is_forbidden(stack, run_job):
    stack.put_objects("not-allowed-bucket", {"x.parquet": parquet_bytes(recipe_table())})
    result, attributes, _ = run_job({"bucket": "not-allowed-bucket", "prefix": ""})
    assert result["error"]["code"] == "forbidden"
    assert "ALLOWED_BUCKETS" in result["error"]["message"]
    assert attributes["error_code"] == "forbidden"


def test_access_denied_by_aws_is_forbidden(stack, bucket, run_job):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())}, grant=[])
    result, _, _ = run_job({"bucket": bucket, "prefix": ""})
    assert result["error"]["code"] == "forbidden"
    assert "AccessDenied" in result["error"]["message"]


def test_objects_outside_the_granted_prefix_are_skipped_and_forbidden_only_when_all_are(stack, bucket, run_job):
    one = parquet_bytes(recipe_table())
    stack.put_objects(bucket, {"public/a.parquet": one, "secret/b.parquet": one, "secret/c.parquet": one},
                      grant=["public/"])
    ok, _, _ = run_job({"bucket": bucket, "prefix": "public/"})
    assert ok["status"] == "ok" and ok["files"] == 1
    mixed, _, _ = run_job({"bucket": bucket, "prefix": ""})  # one object's refusal is that object's
    assert mixed["status"] == "ok" and mixed["files"] == 1 and mixed["rows"] == 3
    assert [s["key"] for s in mixed["skipped"]] == ["secret/b.parquet", "secret/c.parquet"]
    assert all(s["reason"].startswith("access denied") for s in mixed["skipped"])
    denied, _, _ = run_job({"bucket": bucket, "prefix": "secret/"})  # every object refused: the job is
    assert denied["error"]["code"] == "forbidden" and denied["error"]["details"]["objects_refused"] == 2


@pytest.mark.parametrize(("body", "fragment"), [
    (b"this is not json", "not valid JSON"),
    (b"[1, 2, 3]", "must be a JSON object"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (json.dumps({"bucket": "Not_A_Bucket", "prefix": "x", "job_id": "bad-bucket-job"}).encode(), "bucket:"),
    (json.dumps({"prefix": 1, "colour": "red"}).encode(), "'bucket' is a required property"),
])
def test_malformed_messages_get_one_invalid_job_result(stack, run_job, body, fragment):
    message_id = stack.publish_job(body)
    payload = json.loads(body) if body.startswith(b"{") else {}
    key = payload.get("job_id") or message_id
    result, attributes = stack.inbox.wait_one(key)
    assert result["status"] == "error" and result["error"]["code"] == "invalid_job"
    assert result["message_id"] == message_id and attributes["source_message_id"] == message_id
    assert any(fragment in p for p in result["error"]["problems"]), result["error"]["problems"]


def test_every_problem_of_a_bad_job_is_in_one_result(stack):
    message_id = stack.publish_job(json.dumps({"bucket": "UPPER", "prefix": 5, "extra": True}).encode())
    result, _ = stack.inbox.wait_one(message_id)
    assert len(result["error"]["problems"]) == 3
    assert result["bucket"] == "UPPER" and result["prefix"] is None


def test_a_good_job_succeeds_after_bad_ones(stack, bucket, run_job):
    for bad in (b"{", b"null", base64.b64encode(b"double-encoded")):
        stack.publish_job(bad)
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    result, _, _ = run_job({"bucket": bucket, "prefix": ""})
    assert result["status"] == "ok" and result["rows"] == 3


def test_each_message_gets_exactly_one_result(stack, bucket, run_job):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    ids = [stack.publish_job({"bucket": bucket, "prefix": "", "job_id": f"once-{i}"}) for i in range(5)]
    bad = stack.publish_job(b"nope")
    for i in range(5):
        stack.inbox.wait_one(f"once-{i}")
    stack.inbox.wait_one(bad)
    for _ in range(5):  # give any duplicate a chance to arrive
        stack.inbox.drain()
    assert [len(stack.inbox.by_job[f"once-{i}"]) for i in range(5)] == [1] * 5
    assert len(stack.inbox.by_job[bad]) == 1
    assert len(set(ids)) == 5
