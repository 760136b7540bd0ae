"""Cron-style jobs and pipeline chaining, through the emulator: a scheduler's fixed message with a date
template reads the partition its publish time names; attributes pass through; results carry what a
next stage filters on; a job may choose its reply topic within ALLOWED_REPLY_TOPICS; `publish --wait`
prints the result; and a two-stage pipeline runs end to end."""

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from worker.devstack.datasets import events_table, parquet_bytes, recipe_table
from worker.jobs import parse_time
from worker.templates import render

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "events/dt={date-1d:%Y-%m-%d}/"


def partitions(days: list[datetime]) -> dict[str, bytes]:
    """One object per day, with a different row count each, so the count says which day was read."""
    return {f"events/dt={d:%Y-%m-%d}/part-0.parquet": parquet_bytes(events_table(i, 100 + i))
            for i, d in enumerate(days)}


def test_a_scheduled_message_with_a_date_template_reads_yesterdays_partition(stack, bucket):
    today = datetime.now(UTC)
    days = [today - timedelta(days=2), today - timedelta(days=1), today, today + timedelta(days=1)]
    stack.put_objects(bucket, partitions(days))
    job_id = f"cron-{uuid.uuid4().hex[:8]}"
    # What Cloud Scheduler publishes: a fixed body, and the attributes of its job.
    stack.publish_job({"bucket": bucket, "prefix_template": TEMPLATE, "job_id": job_id},
                      schedule="nightly-events", origin="cloud-scheduler")
    result, attributes = stack.inbox.wait_one(job_id)
    assert result["status"] == "ok", result
    reference = parse_time(result["reference_time"])
    assert abs((reference - today).total_seconds()) < 120  # the message's publish time
    assert result["prefix"] == render(TEMPLATE, reference) and result["prefix_template"] == TEMPLATE
    read = [d for d in days if result["prefix"] == f"events/dt={d:%Y-%m-%d}/"]
    assert len(read) == 1 and result["rows"] == 100 + days.index(read[0]) and result["files"] == 1
    # The schedule that produced it, in the result and on its message.
    assert result["attributes"] == {"schedule": "nightly-events", "origin": "cloud-scheduler"}
    assert attributes["schedule"] == "nightly-events" and attributes["status"] == "ok"
    assert attributes["correlation_id"] == job_id


def test_a_backfill_names_its_day_and_an_unknown_placeholder_is_an_invalid_job(stack, bucket):
    stack.put_objects(bucket, partitions([datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)]))
    job_id = f"backfill-{uuid.uuid4().hex[:8]}"
    stack.publish_job({"bucket": bucket, "prefix_template": TEMPLATE, "job_id": job_id,
                       "reference_time": "2026-01-03T01:00:00+01:00", "time_zone": "Europe/Paris"})
    result, _ = stack.inbox.wait_one(job_id)
    assert (result["status"], result["prefix"], result["rows"]) == ("ok", "events/dt=2026-01-02/", 101)
    assert result["reference_time"] == "2026-01-03T00:00:00Z"

    bad_id = f"bad-{uuid.uuid4().hex[:8]}"
    stack.publish_job({"bucket": bucket, "prefix_template": "events/dt={yesterday}/", "job_id": bad_id},
                      schedule="nightly-events")
    bad, bad_attributes = stack.inbox.wait_one(bad_id)
    assert bad["error"]["code"] == "invalid_job" and "unknown placeholder {yesterday}" in bad["error"]["message"]
    assert bad_attributes["schedule"] == "nightly-events" and bad_attributes["error_code"] == "invalid_job"


@pytest.fixture(scope="module")
def routed(stack):
    """A function whose jobs may name one extra reply topic, fed by a jobs topic of its own."""
    extra = f"projects/{stack.project}/topics/stage-results-{uuid.uuid4().hex[:6]}"
    stack.publisher.create_topic(name=extra)
    fn = stack.start_function("function-routed", ALLOWED_REPLY_TOPICS=extra)
    jobs = stack.add_push_subscription(f"routed-jobs-{uuid.uuid4().hex[:6]}", fn)
    yield jobs, extra
    fn.stop()


def test_a_job_chooses_its_reply_topic_within_the_allowlist(stack, bucket, routed):
    jobs, extra = routed
    stack.put_objects(bucket, {"recipe/part-0.parquet": parquet_bytes(recipe_table())})
    env = cli_env(stack) | {"JOBS_TOPIC": jobs}
    allowed = publish_cli(env, "--bucket", bucket, "--prefix", "recipe/", "--reply-topic", extra,
                          "--reply-attr", "stage=one", "--wait", "--timeout", "60")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    result = json.loads(allowed.stdout)
    assert (result["rows"], result["columns"], result["attributes"]) == (3, 4, {"stage": "one"})
    assert f"waiting for its result on {extra}" in allowed.stderr

    elsewhere = f"projects/{stack.project}/topics/not-allowed"
    refused = publish_cli(env, "--bucket", bucket, "--prefix", "recipe/", "--reply-topic", elsewhere,
                          "--wait", "--timeout", "60")
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert refused.stdout, refused.stderr[-3000:]
    answer = json.loads(refused.stdout)
    assert answer["error"]["code"] == "forbidden" and "ALLOWED_REPLY_TOPICS" in answer["error"]["message"]
    assert answer["job"]["reply_topic"] == elsewhere  # answered on REPLY_TOPIC, saying what was asked


def test_an_allowed_reply_topic_that_does_not_exist_is_reported_on_the_reply_topic(stack, bucket):
    missing = f"projects/{stack.project}/topics/gone-{uuid.uuid4().hex[:6]}"
    fn = stack.start_function("function-missing-topic", ALLOWED_REPLY_TOPICS=missing)
    try:
        jobs = stack.add_push_subscription(f"missing-jobs-{uuid.uuid4().hex[:6]}", fn)
        stack.put_objects(bucket, {"recipe/part-0.parquet": parquet_bytes(recipe_table())})
        job_id = f"gone-{uuid.uuid4().hex[:8]}"
        stack.publish_job({"bucket": bucket, "prefix": "recipe/", "job_id": job_id, "reply_topic": missing},
                          topic=jobs)
        result, attributes = stack.inbox.wait_one(job_id)
    finally:
        fn.stop()
    assert result["error"]["code"] == "not_found" and missing in result["error"]["message"]
    assert attributes["error_code"] == "not_found"


def cli_env(stack) -> dict[str, str]:
    env = stack.function_env()
    return {k: v for k, v in env.items() if k != "AWS_ROLE_ARN"} | {"JOBS_TOPIC": stack.jobs_topic,
                                                                   "PATH": os.environ["PATH"]}


def publish_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", "publish", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_publish_wait_prints_the_result_of_a_templated_job(stack, bucket):
    today = datetime.now(UTC)
    days = [today - timedelta(days=2), today - timedelta(days=1), today]
    stack.put_objects(bucket, partitions(days))
    run = publish_cli(cli_env(stack), "--bucket", bucket, "--prefix-template", TEMPLATE, "--attr", "schedule=manual",
                      "--wait", "--timeout", "60")
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert result["status"] == "ok" and result["prefix"] == render(TEMPLATE, parse_time(result["reference_time"]))
    assert result["attributes"] == {"schedule": "manual"} and result["job_id"].startswith("cli-")
    assert '"schedule": "manual"' in run.stderr  # the result's attributes


def test_publish_refuses_a_bad_job_before_publishing_and_times_out_cleanly(stack):
    bad = publish_cli(cli_env(stack), "--bucket", "Not_A_Bucket", "--prefix", "x/")
    assert bad.returncode == 2 and "bucket" in bad.stderr and "published" not in bad.stderr
    template = publish_cli(cli_env(stack), "--bucket", "abc", "--prefix-template", "x/{nope}/")
    assert template.returncode == 2 and "unknown placeholder {nope}" in template.stderr
    pair = publish_cli(cli_env(stack), "--bucket", "abc", "--prefix", "x/", "--attr", "novalue")
    assert pair.returncode == 2 and "KEY=VALUE" in pair.stderr
    # A topic nobody serves: published, never answered, and the waiting subscription is removed.
    lonely = f"projects/{stack.project}/topics/lonely-{uuid.uuid4().hex[:6]}"
    stack.publisher.create_topic(name=lonely)
    before = {s.name for s in stack.subscriber.list_subscriptions(request={"project": f"projects/{stack.project}"})}
    quiet = publish_cli(cli_env(stack) | {"JOBS_TOPIC": lonely}, "--bucket", "abc", "--prefix", "x/",
                        "--wait", "--timeout", "3")
    assert quiet.returncode == 75 and "no result for job" in quiet.stderr
    after = {s.name for s in stack.subscriber.list_subscriptions(request={"project": f"projects/{stack.project}"})}
    assert after == before


def test_a_two_stage_pipeline_runs_end_to_end(stack, bucket):
    stack.put_objects(bucket, {"good/part-0.parquet": parquet_bytes(recipe_table())})
    run_a, run_b = f"run-a-{uuid.uuid4().hex[:6]}", f"run-b-{uuid.uuid4().hex[:6]}"
    stage2 = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "pipeline_stage2.py"), "--results-topic", stack.reply_topic,
         "--jobs-topic", stack.jobs_topic, "--correlation-id", run_a, "--max-jobs", "1", "--timeout", "60"],
        cwd=REPO, env=cli_env(stack), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in stage2.stderr.readline()
        # Stage 1: one good and one failing job of run A, and a good one of run B.
        good_a, empty_a, good_b = (f"s1-{uuid.uuid4().hex[:8]}" for _ in range(3))
        stack.publish_job({"bucket": bucket, "prefix": "good/", "job_id": good_a, "correlation_id": run_a})
        stack.publish_job({"bucket": bucket, "prefix": "empty/", "job_id": empty_a}, correlation_id=run_a)
        stack.publish_job({"bucket": bucket, "prefix": "good/", "job_id": good_b, "correlation_id": run_b})
        out, err = stage2.communicate(timeout=120)
    finally:
        stage2.kill()
    assert stage2.returncode == 0, err[-2000:]
    started = [json.loads(line)["started"] for line in out.splitlines()]
    assert [job["job_id"] for job in started] == [f"{good_a}.profile"]

    # Every result carries what a subscription filter needs.
    for job_id in (good_a, empty_a, good_b):
        result, attributes = stack.inbox.wait_one(job_id)
        assert {"status", "job_id", "correlation_id"} <= set(attributes)
        assert attributes["correlation_id"] == result["correlation_id"]
    failed, failed_attributes = stack.inbox.wait_one(empty_a)
    assert failed["error"]["code"] == "not_found" and failed_attributes["correlation_id"] == run_a

    # Stage 2's own result: the full profile of what stage 1 read, in the same run, marked as stage 2.
    final, final_attributes = stack.inbox.wait_one(f"{good_a}.profile", timeout=90)
    assert (final["status"], final["mode"], final["rows"]) == ("ok", "full", 3)
    assert final["correlation_id"] == run_a and final_attributes["correlation_id"] == run_a
    assert final_attributes["stage"] == "profile" and final["attributes"]["stage"] == "profile"
    assert final["profile"]["age"]["null_count"] == 1
    # Nothing was started for the failed job or for the other run.
    stack.inbox.drain(wait_s=2)
    assert not stack.inbox.by_job.get(f"{empty_a}.profile") and not stack.inbox.by_job.get(f"{good_b}.profile")
