"""A burst of jobs through the whole local stack, and what came back.

For each number of function instances asked for (``--instances 1 3``), it starts them, points one
push subscription of the Pub/Sub emulator at them (several instances behind a round-robin balancer,
as Cloud Run spreads pushes over instances), publishes ``--jobs`` jobs at once and counts the
results on the reply topic: every job answered, none lost, duplicates counted and explained. It
prints throughput, the latency from publish to result (p50/p95/p99), peak memory of the function
processes, STS calls, and where the CPU went. With ``--s3-fail-rate`` S3 answers that share of GETs
with 503 SlowDown (a proxy in front of moto) and the table adds how many S3 attempts and
redeliveries the burst needed. ``--baseline DIR`` runs the same bursts with another checkout's
function, interleaved, for a side-by-side comparison.

    .venv/bin/python bench/load.py [--jobs 1000] [--instances 1 3] [--s3-fail-rate 0.1] [--baseline DIR]

A benchmark, not a test: the figures depend on the machine (2 cores here, shared with the emulator,
moto and this script); compare the rows of one run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import provenance
from bench.warm_jobs import group_cpu_seconds, pct
from worker.devstack.datasets import sample_objects
from worker.devstack.proxy import RecordingProxy
from worker.devstack.stack import LocalStack


def peak_rss_mib(leader_pid: int) -> float:
    """The largest VmHWM (peak resident memory) among the processes of the leader's process group."""
    peak = 0
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) != leader_pid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024


def self_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def one_burst(stack: LocalStack, n_instances: int, jobs: int, prefix: str, fail_rate: float,
              source: Path | None = None) -> dict:
    run = uuid.uuid4().hex[:6]
    # The S3 proxy (to inject faults) and the balancer (to spread pushes) are only there when needed:
    # both run in this process, on the same cores as what is measured.
    s3 = RecordingProxy(stack.aws_endpoint, fail_rate=fail_rate, seed=7).start() if fail_rate else None
    endpoint = {"AWS_ENDPOINT_URL": s3.url} if s3 else {}
    functions = [stack.start_function(f"load-{run}-{i}", source=source, **endpoint) for i in range(n_instances)]
    balancer = RecordingProxy([f"http://{fn.address}" for fn in functions]).start() if n_instances > 1 else None
    push_to = balancer.url if balancer else f"http://{functions[0].address}"
    topic = f"projects/{stack.project}/topics/load-{run}"
    stack.publisher.create_topic(name=topic)
    stack.subscriber.create_subscription(request={
        "name": f"projects/{stack.project}/subscriptions/load-{run}", "topic": topic, "ack_deadline_seconds": 600,
        "push_config": {"push_endpoint": f"{push_to}/{topic}"}})
    sts_before = stack.sts_calls(stack.role_arn)
    assert stack.moto is not None and stack.emulator is not None

    def cpu_now() -> dict[str, float]:
        return {"moto": group_cpu_seconds(stack.moto.process.pid),
                "emulator": group_cpu_seconds(stack.emulator.process.pid),
                "functions": sum(group_cpu_seconds(fn.process.pid) for fn in functions), "harness": self_cpu_s()}

    cpu_before = cpu_now()
    ids = [f"load-{run}-{i:05d}" for i in range(jobs)]
    published: dict[str, float] = {}
    started = time.perf_counter()
    futures = []
    for job_id in ids:
        published[job_id] = time.perf_counter()
        futures.append(stack.publisher.publish(topic, json.dumps(
            {"bucket": "demo-data", "prefix": prefix, "job_id": job_id}).encode()))
    for future in futures:
        future.result(timeout=60)
    publish_s = time.perf_counter() - started
    received: dict[str, list[float]] = collections.defaultdict(list)
    statuses: collections.Counter = collections.Counter()
    inbox = stack.inbox
    assert inbox is not None
    deadline = time.monotonic() + 900
    while len(received) < jobs and time.monotonic() < deadline:
        before = {k: len(v) for k, v in inbox.by_job.items()}
        if not inbox.drain(wait_s=0.5):
            continue
        now = time.perf_counter()
        for job_id, results in inbox.by_job.items():
            for result, _ in results[before.get(job_id, 0):]:
                if job_id in published:
                    received[job_id].append(now)
                    statuses[result["status"]] += 1
    elapsed = max(max(v) for v in received.values()) - started if received else float("nan")
    cpu = {k: v - cpu_before[k] for k, v in cpu_now().items()}
    time.sleep(3)
    for _ in range(3):  # late duplicates
        inbox.drain(wait_s=0.5)
    duplicates = sum(max(0, len(inbox.by_job.get(j, [])) - 1) for j in ids)
    latencies = [(received[j][0] - published[j]) * 1000 for j in ids if j in received]
    logs = "".join(fn.log_tail(10_000_000) for fn in functions)
    row = {
        "instances": n_instances, "jobs": jobs, "answered": len(received), "lost": jobs - len(received),
        "duplicates": duplicates, "ok": statuses["ok"], "publish_s": publish_s, "elapsed_s": elapsed,
        "jobs_per_s": len(received) / elapsed, "p50": pct(latencies, 0.5), "p95": pct(latencies, 0.95),
        "p99": pct(latencies, 0.99), "peak_rss": max(peak_rss_mib(fn.process.pid) for fn in functions),
        "sts": stack.sts_calls(stack.role_arn) - sts_before, "redelivered": logs.count("job will be retried"),
        "s3_gets": sum(1 for s in s3.seen if s.method == "GET") if s3 else "-",
        "s3_injected": sum(s.injected for s in s3.seen) if s3 else "-",
        "cpu": cpu, "code": "baseline" if source else "this checkout",
    }
    for fn in functions:
        fn.stop()
    for proxy in (balancer, s3):
        if proxy is not None:
            proxy.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--prefix", default="recipe/", help="of the demo dataset: recipe/ (1 file) or events/ (6)")
    parser.add_argument("--s3-fail-rate", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=200, help="jobs run first and not counted (the emulator's "
                        "JVM and moto warm up; otherwise the first row pays for it)")
    parser.add_argument("--baseline", type=Path, help="another checkout (git worktree) whose function runs the same "
                        "bursts, interleaved with this one's, for a side-by-side comparison")
    args = parser.parse_args()
    header = provenance()  # before the run: the commit measured, even if the tree changes meanwhile
    with LocalStack(Path(tempfile.mkdtemp(prefix="bench-load-")), allowed_buckets="demo-data") as stack:
        stack.put_objects("demo-data", sample_objects())
        if args.warmup:
            one_burst(stack, 1, args.warmup, args.prefix, 0.0)
        sources = [None] if args.baseline is None else [args.baseline.resolve() / "main.py", None]
        rows = [one_burst(stack, n, args.jobs, args.prefix, args.s3_fail_rate, source)
                for n in args.instances for source in sources]
    print("\n".join(header))  # a figure without its command, commit and date cannot be pasted
    print(f"burst of {args.jobs} jobs on s3://demo-data/{args.prefix}, S3 fail rate {args.s3_fail_rate:.0%}, "
          f"{os.cpu_count()} cores; latency = publish -> result pulled (ms)")
    columns = ["code", "instances", "answered", "lost", "duplicates", "ok", "jobs/s", "p50", "p95", "p99",
              "peak RSS MiB", "STS calls", "redelivered", "S3 GETs", "503s injected"]
    print(" | ".join(columns))
    print(" | ".join("---" for _ in columns))
    for r in rows:
        print(" | ".join(str(x) for x in (
            r["code"], r["instances"], r["answered"], r["lost"], r["duplicates"], r["ok"], f"{r['jobs_per_s']:.1f}",
            f"{r['p50']:.0f}", f"{r['p95']:.0f}", f"{r['p99']:.0f}", f"{r['peak_rss']:.0f}", r["sts"],
            r["redelivered"], r["s3_gets"], r["s3_injected"])))
    print("\nCPU seconds spent during each burst (2 cores = 2 CPU-seconds per second of burst):")
    print("code | instances | burst s | functions | moto | emulator | harness (balancer, S3 proxy, publisher, inbox)"
          " | function CPU ms/job")
    print("--- | --- | --- | --- | --- | --- | --- | ---")
    for r in rows:
        c = r["cpu"]
        print(" | ".join([r["code"], str(r["instances"]), f"{r['elapsed_s']:.1f}",
                          *(f"{c[k]:.1f}" for k in ("functions", "moto", "emulator", "harness")),
                          f"{c['functions'] * 1000 / r['jobs']:.1f}"]))


if __name__ == "__main__":
    main()
