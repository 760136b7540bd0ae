"""Fan-out on the real local stack: three function instances behind a Cloud Run-like balancer, Pub/Sub's
emulator pushing jobs and shards, Firestore's emulator keeping the runs, fake-gcs-server the partials, and
S3 (moto) behind a proxy that adds a round trip's latency (so shards run out of their 1 s budget and split).

Every fanned-out answer is compared with the same job run on one instance (``fan_out: never``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest

from tests.integration.conftest import ALLOWED
from tests.unit.support import same_figures
from worker.devstack.datasets import parquet_bytes
from worker.devstack.fleet import Fleet
from worker.devstack.proxy import RecordingProxy
from worker.fanout.records import ANSWERED, DISPATCHED, DONE, FAILED

pytestmark = pytest.mark.timeout(300)

INSTANCES = 3
OBJECTS = 2100
SHARD_ENV = {"SHARD_OBJECTS": "150", "FANOUT_MIN_OBJECTS": "300", "READ_CONCURRENCY": "4",
             "FANOUT_MAX_IN_FLIGHT": "3"}


def _file(i: int) -> bytes:
    return parquet_bytes(pa.table({
        "id": pa.array([i, i + 10**17, None], pa.int64()),
        "amount": pa.array([i / 7, float("nan") if i % 11 == 0 else -1.5, 2.0**60]),
        "name": pa.array([f"n{i:05d}", None, "é\u4e2d"]),
    }))


@pytest.fixture(scope="module")
def lake(stack):
    """2,100 small Parquet files in 7 hive partitions, plus two objects that are not Parquet."""
    bucket = ALLOWED[190]  # module-scoped: a name the per-test ``bucket`` fixture does not reach
    s3 = stack.aws_client("s3")
    s3.create_bucket(Bucket=bucket)
    bodies = [_file(i) for i in range(64)]

    def put(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"lake/day={i % 7}/part-{i:05d}.parquet", Body=bodies[i % 64])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(OBJECTS)))
    s3.put_object(Bucket=bucket, Key="lake/_SUCCESS", Body=b"")
    s3.put_object(Bucket=bucket, Key="lake/day=3/notes.txt", Body=b"not parquet")
    stack.allow_read(bucket, [""])
    return bucket


def _fleet(stack, name: str, proxy: RecordingProxy, **env: str) -> Fleet:
    return Fleet(stack, name, instances=INSTANCES, concurrency=1,
                 env=SHARD_ENV | {"AWS_ENDPOINT_URL": proxy.url} | env)


@pytest.fixture(scope="module")
def proxy(stack):
    with RecordingProxy(stack.aws_endpoint) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(stack, proxy):
    running = _fleet(stack, f"fan-{uuid.uuid4().hex[:6]}", proxy).start()
    yield running
    running.stop()



def _run(stack, fleet, job: dict, timeout: float = 180):
    job = {"job_id": f"fan-{uuid.uuid4().hex[:10]}", **job}
    message_id = stack.publish_job(job, topic=fleet.jobs_topic)
    result, _ = stack.inbox.wait_one(job["job_id"], timeout=timeout)
    return result, message_id


@pytest.fixture(scope="module")
def alone(stack, fleet, lake):
    """The answer of one instance (``fan_out: never``) for a prefix, asked once per prefix."""
    answers: dict[str, dict] = {}

    def answer(prefix: str) -> dict:
        if prefix not in answers:  # on the stack's own function (an instance with the default settings)
            job = {"job_id": f"one-{uuid.uuid4().hex[:10]}", "bucket": lake, "prefix": prefix,
                   "fan_out": {"mode": "never"}}
            stack.publish_job(job)
            result, _ = stack.inbox.wait_one(job["job_id"], timeout=180)
            assert result["status"] == "ok", result.get("error")
            answers[prefix] = result
        return answers[prefix]

    return answer


def test_a_prefix_of_two_thousand_objects_fans_out_and_answers_as_one_instance_does(stack, fleet, lake, alone):
    result, run_id = _run(stack, fleet, {"bucket": lake, "prefix": "lake/"})
    assert result["status"] == "ok", result
    assert not same_figures(result, alone("lake/"))
    assert result["files"] == OBJECTS
    fan = result["fanout"]
    assert (fan["run_id"], fan["failed"], fan["coverage"]) == (run_id, 0, 1)
    assert (fan["objects_listed"], fan["objects_read"]) == (OBJECTS + 2, OBJECTS)
    assert fan["shards"] >= OBJECTS // 150
    run = stack.run_store().get_run(run_id)
    assert run.state == ANSWERED and run.answers == 1
    shards = list(stack.run_store().shards(run_id))
    assert len(shards) == fan["shards"] and all(s.state == DONE for s in shards)
    assert sum(len(s.children) == 1 for s in shards) >= 5  # ranges handed on after SHARD_OBJECTS keys
    served = {d.instance for d in fleet.balancer.deliveries if d.status == 200}
    assert len(served) >= 2  # shards were read side by side (the emulator pushes a few messages at a time)


def test_duplicated_shard_messages_count_once(stack, fleet, lake, alone):
    from worker.adapters.pubsub import ShardPublisher

    job = {"job_id": f"fan-{uuid.uuid4().hex[:10]}", "bucket": lake, "prefix": "lake/day=2",
           "fan_out": {"mode": "always"}}
    run_id = stack.publish_job(job, topic=fleet.jobs_topic)
    duplicates = ShardPublisher(fleet.shard_topic)
    sent = 0
    # Every shard of the run again and again (queued, running, done, and the closing one while it merges),
    # until a while after the answer.
    deadline = time.monotonic() + 120
    answered_at = None
    while time.monotonic() < deadline and (answered_at is None or time.monotonic() < answered_at + 3):
        shards = [(s.shard_id, s.generation) for s in stack.run_store().shards(run_id)]
        duplicates.publish_shards(run_id, shards)
        sent += len(shards)
        stack.inbox.drain(wait_s=0.3)
        if answered_at is None and stack.inbox.by_job.get(job["job_id"]):
            answered_at = time.monotonic()
    assert answered_at is not None and sent > 10
    stack.inbox.drain(wait_s=3)  # a second answer would come now
    (result, _), = stack.inbox.by_job[job["job_id"]]
    assert not same_figures(result, alone("lake/day=2"))
    run = stack.run_store().get_run(run_id)
    done = [s for s in stack.run_store().shards(run_id) if s.state == DONE]
    assert run.answers == 1 and len(done) == result["fanout"]["succeeded"] == result["fanout"]["shards"]


def test_an_instance_killed_mid_shard_costs_nothing(stack, fleet, lake, alone):
    job = {"job_id": f"fan-{uuid.uuid4().hex[:10]}", "bucket": lake, "prefix": "lake/day=3",
           "fan_out": {"mode": "always"}}
    run_id = stack.publish_job(job, topic=fleet.jobs_topic)
    deadline = time.monotonic() + 60
    busy = None
    while time.monotonic() < deadline and busy is None:
        run = stack.run_store().get_run(run_id)
        if run is not None and stack.run_store().count_shards(run_id, [DISPATCHED]):
            # a shard is being read: kill the instance that reads it
            busy = next((i for i, n in enumerate(fleet.balancer._busy) if n), None)
        time.sleep(0.05)
    assert busy is not None
    victim = fleet.functions[busy]
    os.killpg(victim.process.pid, signal.SIGKILL)  # mid-shard: no goodbye, no acknowledgement
    victim.process.wait()
    victim.start().wait_ready()  # Cloud Run starts a new instance in its place
    result, _ = stack.inbox.wait_one(job["job_id"], timeout=180)
    assert result["status"] == "ok" and not same_figures(result, alone("lake/day=3"))
    deadline = time.monotonic() + 10  # the answer is recorded right after it is published
    while stack.run_store().get_run(run_id).answers == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.run_store().get_run(run_id).answers == 1
    assert any(d.status == 502 for d in fleet.balancer.deliveries)  # the killed instance's push failed


def test_a_range_that_always_fails_is_dead_lettered_answered_per_tolerance_and_redriven(stack, lake, proxy, alone):
    # S3 answers 503 to every read of an object under day=2 (listing works): those shards fail until dead-lettered.
    broken = RecordingProxy(stack.aws_endpoint, fail_rate=1.0,
                            should_fail=lambda method, path: method == "GET" and re.search(r"/lake/day(=|%3D)2/", path)
                            is not None).start()
    fleet = _fleet(stack, f"dlq-{uuid.uuid4().hex[:6]}", broken, AWS_MAX_ATTEMPTS="1").start()
    try:
        result, run_id = _run(stack, fleet, {"bucket": lake, "prefix": "lake/day=2",
                                             "fan_out": {"mode": "always"}}, timeout=240)
        assert result["status"] == "error" and result["error"]["code"] == "incomplete", result
        failed = result["fanout"]["failed_ranges"]
        assert failed and all("dead-lettered" in r["error"] for r in failed)
        assert result["fanout"]["coverage"] < 1
        broken.fail_rate = 0.0  # the fault is fixed: redrive only the failed ranges
        done = subprocess.run([sys.executable, "-m", "worker", "redrive", run_id], capture_output=True, text=True,
                              env=stack.function_env() | {"SHARD_TOPIC": fleet.shard_topic}, timeout=60)
        assert done.returncode == 0, done.stderr
        second, _ = stack.inbox.wait_for(result["job_id"], timeout=180, count=2)[1]
        assert second["status"] == "ok" and second["fanout"]["answer"] == 2 and second["fanout"]["run_id"] == run_id
        assert not same_figures(second, alone("lake/day=2"))
        assert not list(stack.run_store().shards(run_id, FAILED))
    finally:
        fleet.stop()
        broken.stop()


def test_two_runs_over_overlapping_prefixes_at_once_do_not_mix(stack, fleet, lake, alone):
    jobs = [{"job_id": f"fan-{uuid.uuid4().hex[:10]}", "bucket": lake, "prefix": prefix,
             "fan_out": {"mode": "always"}} for prefix in ("lake/day=4", "lake/day=4/part-01")]
    for job in jobs:
        stack.publish_job(job, topic=fleet.jobs_topic)
    for job in jobs:
        result, _ = stack.inbox.wait_one(job["job_id"], timeout=180)
        assert not same_figures(result, alone(job["prefix"]))
    inner, outer = (stack.inbox.by_job[job["job_id"]][0][0]["files"] for job in reversed(jobs))
    assert 0 < inner < outer


def test_status_prints_a_runs_progress_as_one_json_line(stack, fleet, lake):
    import json

    result, run_id = _run(stack, fleet, {"bucket": lake, "prefix": "lake/day=2", "fan_out": {"mode": "always"}})
    shown = subprocess.run([sys.executable, "-m", "worker", "status", run_id, "--max-in-flight", "5"],
                           capture_output=True, text=True,
                           env=stack.function_env(), timeout=60)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["state"] == "answered" and status["shards_done"] == result["fanout"]["succeeded"]
    assert status["max_in_flight"] == 5 and "at most 5 shards in flight" in shown.stderr
    assert status["objects_listed"] == result["fanout"]["objects_listed"]


def test_shards_out_of_time_hand_their_unread_keys_on_and_the_run_completes(stack, lake, alone):
    # 30 ms per S3 request and a 1 s budget: a shard of 150 objects cannot finish in time.
    with RecordingProxy(stack.aws_endpoint, delay_s=0.03) as slow, \
            _fleet(stack, f"slow-{uuid.uuid4().hex[:6]}", slow, SHARD_SECONDS="1") as fleet:
        result, run_id = _run(stack, fleet, {"bucket": lake, "prefix": "lake/day=2", "fan_out": {"mode": "always"}})
    assert result["status"] == "ok" and not same_figures(result, alone("lake/day=2"))
    split = [s for s in stack.run_store().shards(run_id) if len(s.children) > 1]
    assert split, "no shard ran out of its 1 s budget"
    assert all(s.state == DONE for s in stack.run_store().shards(run_id))


def test_publish_wait_shows_a_fanned_out_runs_progress_and_its_answer(stack, fleet, lake):
    import json

    done = subprocess.run([sys.executable, "-m", "worker", "publish", "--bucket", lake, "--prefix", "lake/day=5",
                           "--fan-out", "always", "--max-in-flight", "2", "--wait", "--timeout", "120",
                           "--topic", fleet.jobs_topic], capture_output=True, text=True, env=stack.function_env(),
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)
    progress = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert progress and all(p["run_id"] == answer["fanout"]["run_id"] for p in progress)
    assert progress[0]["max_in_flight"] == 2 and progress[-1]["shards_total"] >= 1
    assert answer["status"] == "ok" and answer["files"] == 300
