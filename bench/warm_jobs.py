"""What one job costs on a warm instance, through the real local stack.

Starts the local stack, warms each function process with one job, then runs jobs one after
another and prints a table: wall time inside the function (the result's timings_ms.total),
end-to-end latency (publish -> result pulled from the reply topic; POST -> response for HTTP),
CPU time the function's processes spent per job, and STS calls made during the measured jobs.

    .venv/bin/python bench/warm_jobs.py [--jobs 40]

A benchmark, not a test: figures vary with the machine; read them side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import provenance
from worker.devstack.datasets import sample_objects
from worker.devstack.stack import LocalStack

TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(leader_pid: int) -> float:
    """utime + stime of every process in the leader's process group (gunicorn forks a worker)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader_pid:  # pgrp
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()
    header = provenance()  # before the run: the commit measured, even if the tree changes meanwhile
    rows = []
    with LocalStack(Path(tempfile.mkdtemp(prefix="bench-warm-"))) as stack:
        stack.put_objects("demo-data", sample_objects())
        for label, prefix in (("recipe (1 file)", "recipe/"), ("events (6 files, 3 junk)", "events/")):
            job = {"bucket": "demo-data", "prefix": prefix}
            # warm both processes
            stack.publish_job(job | {"job_id": f"warm-{prefix.strip('/')}"})
            stack.inbox.wait_one(f"warm-{prefix.strip('/')}")
            stack.post_job(job)
            sts_before = stack.sts_calls()
            inside, e2e = [], []
            cpu0 = group_cpu_seconds(stack.fn_pubsub.process.pid)
            for i in range(args.jobs):
                job_id = f"bench-{prefix.strip('/')}-{i}"
                started = time.perf_counter()
                stack.publish_job(job | {"job_id": job_id})
                result, _ = stack.inbox.wait_one(job_id)
                e2e.append((time.perf_counter() - started) * 1000)
                inside.append(result["timings_ms"]["total"])
            cpu_push = (group_cpu_seconds(stack.fn_pubsub.process.pid) - cpu0) * 1000 / args.jobs
            http = []
            cpu0 = group_cpu_seconds(stack.fn_http.process.pid)
            for _ in range(args.jobs):
                started = time.perf_counter()
                status, _ = stack.post_job(job)
                assert status == 200
                http.append((time.perf_counter() - started) * 1000)
            cpu_http = (group_cpu_seconds(stack.fn_http.process.pid) - cpu0) * 1000 / args.jobs
            rows.append((label, statistics.median(inside), pct(inside, 0.95), statistics.median(e2e), pct(e2e, 0.95),
                         cpu_push, statistics.median(http), cpu_http, stack.sts_calls() - sts_before))
    columns = ("dataset", "in-fn p50", "in-fn p95", "push e2e p50", "push e2e p95", "push CPU/job",
              "http p50", "http CPU/job", "STS calls")
    print("\n".join(header))  # a figure without its command, commit and date cannot be pasted
    print(f"warm-instance cost per job, {args.jobs} sequential jobs per row (ms; CPU = function processes)")
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for row in rows:
        print(" | ".join([row[0], *(f"{v:.1f}" for v in row[1:-1]), str(row[-1])]))


if __name__ == "__main__":
    main()
