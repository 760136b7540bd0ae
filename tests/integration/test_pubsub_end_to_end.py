"""A job published on the emulator reaches the function by push; its result arrives on the reply topic."""

import base64
import json

import pyarrow as pa
import requests

from worker.devstack.datasets import events_table, parquet_bytes, recipe_table


def test_recipe_file(stack, bucket, run_job):
    stack.put_objects(bucket, {"recipe/data.parquet": parquet_bytes(recipe_table())})
    result, attributes, message_id = run_job({"bucket": bucket, "prefix": "recipe/", "job_id": "recipe-1"})
    assert result["status"] == "ok"
    assert (result["rows"], result["columns"], result["files"]) == (3, 4, 1)
    assert [c["name"] for c in result["schema"]] == ["id", "name", "age", "score"]
    assert result["statistics"]["score"] == {"null_count": 0, "min": 79.25, "max": 91.5}
    assert result["message_id"] == message_id and result["job_id"] == "recipe-1"
    assert (result["bucket"], result["prefix"]) == (bucket, "recipe/")
    assert attributes == {"job_id": "recipe-1", "status": "ok", "source_message_id": message_id,
                          "correlation_id": "recipe-1"}
    assert set(result["timings_ms"]) == {"federation", "listing", "reading", "total"}


def test_job_without_job_id_is_keyed_by_message_id(stack, bucket, run_job):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    message_id = stack.publish_job({"bucket": bucket, "prefix": ""})
    result, attributes = stack.inbox.wait_one(message_id)
    assert result["job_id"] == message_id and attributes["job_id"] == message_id and result["rows"] == 3


def test_many_files_with_several_row_groups(stack, bucket, run_job):
    objects = {f"many/part-{i:03d}.parquet": parquet_bytes(events_table(i, 1000 + i), row_group_size=300)
               for i in range(40)}
    stack.put_objects(bucket, objects)
    result, _, _ = run_job({"bucket": bucket, "prefix": "many/"})
    assert result["files"] == 40
    assert result["rows"] == sum(1000 + i for i in range(40))
    assert result["row_groups"] == sum(-(-(1000 + i) // 300) for i in range(40))
    assert result["bytes"] == sum(len(b) for b in objects.values())
    assert result["statistics"]["event_id"]["min"] == 0
    assert result["statistics"]["event_id"]["max"] == 39 * 1_000_000 + 1038


def test_schema_drift_between_files(stack, bucket, run_job):
    stack.put_objects(bucket, {
        "drift/a.parquet": parquet_bytes(pa.table({"id": [1, 2], "amount": [1.5, 2.5]})),
        "drift/b.parquet": parquet_bytes(pa.table({"id": [3], "amount": ["n/a"], "note": ["new column"]})),
    })
    result, _, _ = run_job({"bucket": bucket, "prefix": "drift/"})
    assert result["status"] == "ok" and result["rows"] == 3 and result["columns"] == 3
    assert result["schema_conflicts"] == ["amount"]
    amount = next(c for c in result["schema"] if c["name"] == "amount")
    assert amount["type"] is None and amount["types"] == ["double", "string"]
    assert result["statistics"]["id"] == {"null_count": 0, "min": 1, "max": 3}


def test_junk_beside_parquet_is_skipped_with_reasons(stack, bucket, run_job):
    good = parquet_bytes(recipe_table())
    stack.put_objects(bucket, {
        "junk/good.parquet": good,
        "junk/_SUCCESS": b"",
        "junk/.good.parquet.crc": b"crc!",
        "junk/empty.parquet": b"",
        "junk/corrupt.parquet": b"PAR1" + b"\x13" * 200 + (150).to_bytes(4, "little") + b"PAR1",
        "junk/truncated.parquet": good[: len(good) // 2],
        "junk/folder/": b"",
    })
    result, _, _ = run_job({"bucket": bucket, "prefix": "junk/"})
    assert result["status"] == "ok" and result["rows"] == 3 and result["files"] == 1
    reasons = {s["key"]: s["reason"] for s in result["skipped"]}
    assert result["skipped_count"] == 6
    assert reasons["junk/_SUCCESS"] == "not a .parquet key"
    assert reasons["junk/.good.parquet.crc"] == "not a .parquet key"
    assert reasons["junk/folder/"] == "folder marker"
    assert "too small" in reasons["junk/empty.parquet"]
    assert "corrupt footer" in reasons["junk/corrupt.parquet"]
    assert "magic" in reasons["junk/truncated.parquet"] or "corrupt" in reasons["junk/truncated.parquet"]


def test_nested_columns(stack, bucket, run_job):
    table = pa.table({
        "id": [1, 2],
        "tags": pa.array([["a", "b"], None], pa.list_(pa.string())),
        "address": pa.array([{"city": "Oslo", "zip": 150}, {"city": "Lima", "zip": 15001}]),
    })
    stack.put_objects(bucket, {"nested/n.parquet": parquet_bytes(table)})
    result, _, _ = run_job({"bucket": bucket, "prefix": "nested/"})
    assert result["columns"] == 3
    assert result["statistics"]["address.city"]["min"] == "Lima"
    assert result["statistics"]["address.zip"]["max"] == 15001
    assert result["statistics"]["tags.list.element"]["max"] == "b"


def test_hive_partitions_are_read(stack, bucket, run_job):
    objects = {f"hive/dt=2026-01-0{d}/region={r}/part-0.parquet": parquet_bytes(events_table(d, 100 * d))
               for d in (1, 2, 3) for r in ("eu", "us")}
    stack.put_objects(bucket, objects)
    result, _, _ = run_job({"bucket": bucket, "prefix": "hive/"})
    assert result["files"] == 6 and result["rows"] == 2 * (100 + 200 + 300)
    assert result["partition_columns"] == ["dt", "region"]


def test_prefix_is_a_literal_key_prefix(stack, bucket, run_job):
    one = parquet_bytes(recipe_table())
    stack.put_objects(bucket, {"data/2024/a.parquet": one, "data/2024-old/b.parquet": one,
                               "data/[x]*/c.parquet": one})
    folder, _, _ = run_job({"bucket": bucket, "prefix": "data/2024/"})
    assert folder["files"] == 1
    plain, _, _ = run_job({"bucket": bucket, "prefix": "data/2024"})
    assert plain["files"] == 2  # a plain prefix also matches the sibling folder, as in S3
    literal, _, _ = run_job({"bucket": bucket, "prefix": "data/[x]*/"})
    assert literal["files"] == 1  # glob characters are matched literally
    glob, _, _ = run_job({"bucket": bucket, "prefix": "data/*.parquet"})
    assert glob["error"]["code"] == "not_found"
    assert "literally, not as a glob" in glob["error"]["message"]


def test_empty_prefix_reads_the_whole_bucket(stack, bucket, run_job):
    one = parquet_bytes(recipe_table())
    stack.put_objects(bucket, {"a/x.parquet": one, "b/y.parquet": one, "z.parquet": one})
    result, _, _ = run_job({"bucket": bucket, "prefix": ""})
    assert result["files"] == 3 and result["rows"] == 9


def _eventarc_event(golden, bucket: str, job_id: str) -> dict:
    event = golden("cloudevent_message_published")
    job = {"bucket": bucket, "prefix": "", "job_id": job_id}
    event["data"]["message"]["data"] = base64.b64encode(json.dumps(job).encode()).decode()
    event["id"] = event["data"]["message"]["messageId"] = f"ev-{job_id}"
    return event


def test_eventarc_cloudevent_structured_mode(stack, bucket, golden):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    event = _eventarc_event(golden, bucket, "eventarc-structured")
    response = requests.post(f"http://{stack.fn_pubsub.address}/", data=json.dumps(event), timeout=60,
                             headers={"Content-Type": "application/cloudevents+json"})
    assert response.status_code == 200
    result, attributes = stack.inbox.wait_one("eventarc-structured")
    assert result["rows"] == 3 and result["message_id"] == "ev-eventarc-structured"
    assert attributes["source_message_id"] == "ev-eventarc-structured"


def test_eventarc_cloudevent_binary_mode(stack, bucket, golden):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    event = _eventarc_event(golden, bucket, "eventarc-binary")
    headers = {f"ce-{k}": v for k, v in event.items() if k not in ("data", "datacontenttype")}
    headers["Content-Type"] = "application/json"
    response = requests.post(f"http://{stack.fn_pubsub.address}/", data=json.dumps(event["data"]), timeout=60,
                             headers=headers)
    assert response.status_code == 200
    result, _ = stack.inbox.wait_one("eventarc-binary")
    assert result["status"] == "ok" and result["files"] == 1


def test_full_mode_job(stack, bucket, run_job):
    objects = {f"full/dt=2026-01-0{d}/p.parquet": parquet_bytes(events_table(d, 1500), row_group_size=500)
               for d in (1, 2)}
    stack.put_objects(bucket, objects)
    result, _, _ = run_job({"bucket": bucket, "prefix": "full/", "mode": "full", "columns": ["amount", "dt", "x"]})
    assert result["status"] == "ok" and result["mode"] == "full"
    assert set(result["profile"]) == {"amount", "dt"}
    amount = result["profile"]["amount"]
    assert amount["count"] + amount["null_count"] == 3000
    assert amount["min"] == result["statistics"]["amount"]["min"]
    assert result["profile"]["dt"]["partition"] is True and result["profile"]["dt"]["distinct_approx"] == 2
    assert result["missing_columns"] == ["x"]


def test_a_job_that_would_overrun_stops_at_its_deadline(stack, bucket):
    objects = {f"slow/p{i:02d}.parquet": parquet_bytes(events_table(i, 20_000), row_group_size=2_000)
               for i in range(30)}
    stack.put_objects(bucket, objects)
    fn = stack.start_function("function-deadline", target="handle_http", JOB_DEADLINE_SECONDS="1")
    try:
        response = requests.post(f"http://{fn.address}/", timeout=120,
                                 json={"bucket": bucket, "prefix": "slow/", "mode": "full"})
    finally:
        fn.stop()
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "deadline_exceeded" and error["retryable"] is False
    # The listing is streamed: the total is known only if the listing was taken to its end by then.
    details = error["details"]
    assert details["files_read"] < 30 and details["files_total"] in (None, 30)
    assert details["listing_complete"] is (details["files_total"] == 30)
    assert "split the prefix" in error["message"]
