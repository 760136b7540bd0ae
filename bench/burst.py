"""A burst of jobs against deploy/'s delivery settings: does any job dead-letter without ever running?

Reads the push subscription's settings (ack deadline, retry backoff, max delivery attempts) and the
function's max instances and concurrency from deploy/terraform/*.tf, starts that many instances
behind ``CloudRunBalancer`` (per-instance concurrency, pending queue, 429 "no available instance"),
publishes ``--jobs`` metadata jobs at once, and counts: jobs answered exactly once, dead-lettered,
vanished (neither: the emulator never pushed them again), the balancer's 429s, deliveries per job,
wall time and jobs/s. Each ``--variant`` is one row: ``NAME`` or ``NAME:key=value,...`` over deploy/'s
values (keys: max_instances, concurrency, max_delivery_attempts, minimum_backoff_s, maximum_backoff_s,
retry_policy=0 for a subscription without one).

    .venv/bin/python bench/burst.py [--jobs 2000] [--variant deploy recommended] [--subscriptions 100]
                                    [--s3-latency-ms 300]

A benchmark, not a test: 2 shared cores. The emulator keeps only a few pushes outstanding per
subscription (the table prints the most seen at once): ``--subscriptions`` push subscriptions share
the jobs so that a burst arrives as widely as Pub/Sub pushes it. ``--s3-latency-ms`` (default 300) is
added to every S3 and STS request so that a metadata job takes about as long as across clouds (~1 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import provenance
from worker.devstack import deployed
from worker.devstack.burst import BurstReport, run_burst
from worker.devstack.datasets import sample_objects
from worker.devstack.stack import LocalStack

# What docs/deploy.md recommends (see there): concurrency for metadata jobs, and attempts x backoff that
# outlast a burst's drain time with margin.
RECOMMENDED = {"concurrency": 8, "max_delivery_attempts": 30, "minimum_backoff_s": 10, "maximum_backoff_s": 600}


def parse_variant(spec: str, base: deployed.DeliverySettings) -> tuple[str, deployed.DeliverySettings, bool]:
    name, _, assignments = spec.partition(":")
    changes: dict = dict(RECOMMENDED) if name == "recommended" else {}
    retry_policy = True
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        if key == "retry_policy":
            retry_policy = value not in ("0", "false", "no")
        else:
            changes[key] = float(value) if key.endswith("_s") else int(value)
    return name, base.but(**changes), retry_policy


def row(name: str, r: BurstReport) -> list[str]:
    s = r.settings
    # without a retry policy the emulator pushes a failed message again at once: no backoff to survive on
    survivable = (s if r.retry_policy else s.but(minimum_backoff_s=0, maximum_backoff_s=0)).survivable_s(
        r.pending_timeout_s)
    deliveries = r.deliveries()
    first_answer = r.wall_s or float("nan")
    return [name, f"{s.max_instances}x{s.concurrency}", str(s.max_delivery_attempts),
            f"{s.minimum_backoff_s:.0f}-{s.maximum_backoff_s:.0f}s" if r.retry_policy else "none (immediate)",
            f"{survivable:.0f}", str(r.jobs), str(r.answered_once), str(r.duplicates),
            str(len(r.dead_lettered)), str(r.forgotten), str(len(r.vanished)), str(r.answers.get(429, 0)),
            f"{statistics.mean(deliveries):.2f}", str(max(deliveries)), str(r.max_in_flight + r.max_pending),
            f"{first_answer:.1f}", f"{len(r.answered) / first_answer:.1f}", dict(r.statuses).__repr__()]


HEADER = ["variant", "instances x concurrency", "max attempts", "backoff", "survivable s", "jobs",
          "answered once", "duplicates", "dead-lettered", "forgotten by emulator", "vanished", "429s",
          "deliveries/job mean", "max", "most pushes outstanding", "wall s", "jobs/s", "results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--variant", nargs="+", default=["deploy", "recommended"])
    parser.add_argument("--instances", type=int, help="instances for every variant (default: deploy/'s max)")
    parser.add_argument("--pending-timeout", type=float, default=10.0,
                        help="seconds a request waits for a free instance before the 429 (Cloud Run: >= 10)")
    parser.add_argument("--s3-latency-ms", type=float, default=300.0,
                        help="added to every S3/STS request: the Google-to-AWS round trip moto lacks")
    parser.add_argument("--subscriptions", type=int, default=100,
                        help="push subscriptions sharing the jobs: the emulator keeps ~3 pushes outstanding on each")
    parser.add_argument("--prefix", default="recipe/")
    args = parser.parse_args()
    base = deployed.load()
    header = provenance(f"deploy/terraform: {base}")  # the commit and date the figures come from, before the run
    variants = [parse_variant(spec, base) for spec in args.variant]
    if args.instances:
        variants = [(n, s.but(max_instances=args.instances), rp) for n, s, rp in variants]
    rows = []
    with LocalStack(Path(tempfile.mkdtemp(prefix="bench-burst-")), allowed_buckets="demo-data") as stack:
        stack.put_objects("demo-data", sample_objects())
        for name, settings, retry_policy in variants:
            report = run_burst(stack, settings, args.jobs, retry_policy=retry_policy,
                               pending_timeout_s=args.pending_timeout, s3_latency_s=args.s3_latency_ms / 1000,
                               prefix=args.prefix, subscriptions=args.subscriptions)
            rows.append(row(name, report))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    print("\n".join(header))
    print(f"burst of {args.jobs} metadata jobs on s3://demo-data/{args.prefix} over {args.subscriptions} push "
          f"subscriptions, {os.cpu_count()} cores, pending timeout "
          f"{args.pending_timeout:g} s, S3 latency {args.s3_latency_ms:g} ms; survivable s = attempts x pending "
          "timeout + the backoffs between them; forgotten = not pushed again under the retry policy, pushed once "
          "it was cleared (the emulator's fault); vanished = never answered nor dead-lettered; wall s = publish "
          "to the last first answer, including the wait to judge jobs forgotten")
    print(" | ".join(HEADER))
    print(" | ".join("---" for _ in HEADER))
    for r in rows:
        print(" | ".join(r))


if __name__ == "__main__":
    main()
