"""A burst of jobs through a Cloud Run-like balancer with deploy/'s subscription settings: the balancer
answers 429 when no instance is free (a failed delivery attempt for Pub/Sub), and still every job is
answered exactly once and none is dead-lettered.

The emulator keeps only about three pushes outstanding per subscription, so the service is scaled
down to one instance taking one request at a time, with a short pending queue: the 429s then happen.
Jobs the emulator stops pushing under a retry policy (its fault, ../shared/FACTS.md) are pushed again
once the policy is cleared (``BurstReport.forgotten``), so what is asserted is the system's behaviour.
"""

import collections

from worker.devstack import deployed
from worker.devstack.burst import run_burst
from worker.devstack.datasets import parquet_bytes, recipe_table

JOBS = 200
# Shorter than one job (25-50 ms here): of the pushes the emulator keeps outstanding, those behind a running
# job wait past it and are refused, as Cloud Run refuses what waits past its pending time.
PENDING_TIMEOUT_S = 0.02
# A job not pushed again within the backoff its last refusal earned (deploy's: 10 s, doubling), plus a few
# seconds, is taken as forgotten by the emulator (seen: its pushes came back 1, ~15, ~45 and ~70 s after the
# 1st to 4th refusal). Judging earlier only clears the retry policy earlier: what is left is then pushed with
# no backoff at all, which spends delivery attempts faster, so the assertions below are no easier to meet.
PATIENCE = (1.0, 4.0)


def test_burst_answers_every_job_once_and_dead_letters_none(stack, bucket):
    stack.put_objects(bucket, {"burst/data.parquet": parquet_bytes(recipe_table())})
    settings = deployed.load()
    report = run_burst(stack, settings.but(max_instances=1, concurrency=1), JOBS, bucket=bucket, prefix="burst/",
                       pending_timeout_s=PENDING_TIMEOUT_S, patience=PATIENCE, timeout_s=240)

    assert report.answers[429] > 0, "the balancer never refused a push: the burst path was not exercised"
    assert report.dead_lettered == {}, f"{len(report.dead_lettered)} jobs dead-lettered"
    assert report.vanished == [], f"{len(report.vanished)} jobs never pushed again (emulator)"
    assert collections.Counter(report.answered.values()) == {1: JOBS}, "a job answered twice or not at all"
    assert report.statuses == {"ok": JOBS}
    assert max(report.deliveries()) < settings.max_delivery_attempts
