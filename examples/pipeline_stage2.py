"""Stage 2 of an example two-stage pipeline, chained on stage 1's result messages.

Stage 1 is the worker: a job (say, from Cloud Scheduler) summarizes a prefix from its Parquet footers
and publishes the result, with attributes status, job_id and correlation_id. This stage consumes the
``ok`` results of one pipeline run (one correlation_id) and starts a second job from each: a full
profile of the same data, in the same run, marked with ``reply_attributes: {"stage": "profile"}`` so
that its own results are not consumed again.

Its subscription filters on attributes, so Pub/Sub delivers only what it wants::

    attributes.status = "ok" AND attributes.correlation_id = "RUN" AND NOT attributes:stage

Google's emulator accepts that filter but does not apply it, so every message is checked here too.

    python examples/pipeline_stage2.py --results-topic projects/P/topics/results \\
        --jobs-topic projects/P/topics/jobs --correlation-id RUN --max-jobs 1

It prints one line of JSON per job it starts, and stops after ``--max-jobs`` jobs or ``--timeout``
seconds without a message.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone, without installing

from google.cloud import pubsub_v1

from worker.tools.pubsub import publish_job, pull_now

STAGE = "profile"


def subscription_filter(correlation_id: str) -> str:
    """Only successful stage-1 results of one run (a result of this stage carries attribute stage)."""
    return f'attributes.status = "ok" AND attributes.correlation_id = "{correlation_id}" AND NOT attributes:stage'


def wanted(attributes: dict[str, str], correlation_id: str) -> bool:
    """The filter, applied by hand (the emulator does not)."""
    return (attributes.get("status") == "ok" and attributes.get("correlation_id") == correlation_id
            and "stage" not in attributes)


def next_job(result: dict) -> dict | None:
    """Stage 2's job for one stage-1 result: a full profile of the same data, in the same run."""
    if result.get("status") != "ok" or not result.get("rows"):
        return None
    return {
        "bucket": result["bucket"],
        "prefix": result["prefix"],  # resolved: a templated stage 1 gives stage 2 the very partition it read
        "mode": "full",
        "job_id": f"{result['job_id']}.{STAGE}",  # the same on a redelivery: the worker's answer is idempotent
        "correlation_id": result["correlation_id"],
        "reply_attributes": {"stage": STAGE},
    }


def run(results_topic: str, jobs_topic: str, correlation_id: str, *, max_jobs: int | None = None,
        timeout: float = 60.0) -> list[dict]:
    """Consume stage-1 results of ``correlation_id`` and start stage-2 jobs; return the jobs started."""
    subscriber = pubsub_v1.SubscriberClient()
    project = results_topic.split("/")[1]
    subscription = f"projects/{project}/subscriptions/stage2-{correlation_id[:100]}-{uuid.uuid4().hex[:6]}"
    subscriber.create_subscription(request={
        "name": subscription, "topic": results_topic, "ack_deadline_seconds": 60,
        "filter": subscription_filter(correlation_id)})
    print(f"listening on {subscription} (filter: {subscription_filter(correlation_id)})", file=sys.stderr, flush=True)
    started: list[dict] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < timeout and (max_jobs is None or len(started) < max_jobs):
            messages = pull_now(subscriber, subscription, max_messages=10, wait_s=1.0)
            if not messages:
                continue
            quiet_since = time.monotonic()
            for received in messages:
                message = received.message
                if wanted(dict(message.attributes), correlation_id):
                    job = next_job(json.loads(message.data))
                    if job is not None and (max_jobs is None or len(started) < max_jobs):
                        message_id = publish_job(jobs_topic, job, {"correlation_id": correlation_id})
                        started.append(job)
                        print(json.dumps({"started": job, "message_id": message_id}), flush=True)
                # Acknowledged once the next job is published: a crash before that redelivers the result.
                subscriber.acknowledge(request={"subscription": subscription, "ack_ids": [received.ack_id]})
    finally:
        subscriber.delete_subscription(request={"subscription": subscription})
    return started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-topic", required=True, help="stage 1's reply topic (projects/P/topics/T)")
    parser.add_argument("--jobs-topic", required=True, help="where stage 2's jobs go (projects/P/topics/T)")
    parser.add_argument("--correlation-id", required=True, help="the pipeline run to follow")
    parser.add_argument("--max-jobs", type=int, help="stop after starting this many jobs")
    parser.add_argument("--timeout", type=float, default=60.0, help="stop after this many seconds without a message")
    args = parser.parse_args(argv)
    run(args.results_topic, args.jobs_topic, args.correlation_id, max_jobs=args.max_jobs, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
