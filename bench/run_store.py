"""One fanned-out run of thousands of shards through the real coordinator on Firestore: how hard each document is
written, what Firestore is asked per shard, and what contention costs.

The worker (``worker.service.Worker``, so the real ``Coordinator``) keeps its run in the real ``FirestoreRunStore``
on ``faulty_client`` (worker/devstack/firestore_faults.py: Firestore's contention aborts, wound-wait, over the
Firestore emulator this script starts, and a meter of every document written). S3 is in memory: ``--shards``
tiny Parquet objects in folders of 5 under one prefix; the job asks ``fan_out`` always, so the run starts with a
range per folder (at most 400), and with SHARD_OBJECTS=1 each shard reads one object and hands the rest of its
range on (a run of N objects has about N shards); partials are in memory too. The
shard topic's push subscription is ``--in-flight`` threads delivering at once (deploy/: max_instances 10 x
concurrency 8 = 80, which is also FANOUT_MAX_IN_FLIGHT), redelivering a message whose delivery raised after 1 s,
2 s, 4 s, 5 s and dead-lettering it after 5 attempts (worker/devstack/run_driver.py).

It prints the busiest document's sustained writes per second (10 s windows) and which kind of document it is,
the five documents written most, Firestore operations per shard, the contention aborts injected and the
``Unavailable`` the run store raised, failed deliveries by reason, the merge tree's levels (tasks, inputs, the
tasks' own ``seconds``, and each level's wall time from the meter), the wall time, and whether the one answer has
the figures of one instance reading the same objects (files == objects).

    .venv/bin/python bench/run_store.py [--shards 2000] [--in-flight 80] [--fan-in 50] [--no-contention]
                                        [--duplicates 0.2] [--timeout 540]

A benchmark, not a test: 2 shared cores run the emulator, the worker's threads and the fault layer.
"""

from __future__ import annotations

import argparse
import collections
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import provenance
from bench.warm_jobs import group_cpu_seconds
from tests.unit.support import MemoryBlobs, MemoryStore, same_figures
from worker.adapters.firestore import FirestoreRunStore
from worker.devstack.firestore_faults import faulty_client, most_in_window
from worker.devstack.run_driver import PER_FOLDER, PROJECT, drive, firestore_emulator, lake, one_instance_answer

BUCKET, PREFIX, COLLECTION = "bench", "lake/", "runs"
WINDOW_S = 10.0


class WarningCounter(logging.Handler):
    """The worker's warnings and errors, counted by their message template (and kept off the terminal)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._guard:
            self.counts[f"{record.levelname}: {record.msg}"[:110]] += 1


def kind_of(path: str) -> str:
    parts = path.split("/")
    if len(parts) == 2:
        return "run record"
    return {"shards": "shard", "merges": "merge task"}.get(parts[2], parts[2]) if len(parts) == 4 else "other"


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    return lines + [" | ".join(str(c) for c in row) for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=2000, help="objects (SHARD_OBJECTS=1: about one shard each)")
    parser.add_argument("--in-flight", type=int, default=80,
                        help="FANOUT_MAX_IN_FLIGHT and concurrent deliveries (deploy/: 10 instances x 8)")
    parser.add_argument("--fan-in", type=int, default=50, help="MERGE_FAN_IN")
    parser.add_argument("--no-contention", action="store_true", help="the emulator only (no injected aborts)")
    parser.add_argument("--duplicates", type=float, default=0.0,
                        help="share of messages delivered twice (push is at least once)")
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds to wait for the answer")
    args = parser.parse_args()

    header = provenance()  # before the run: the commit measured
    objects = lake(args.shards, PREFIX)
    store = MemoryStore(objects)
    job = {"bucket": BUCKET, "prefix": PREFIX, "mode": "metadata", "fan_out": {"mode": "always"}}
    worker_settings = {"shard_objects": 1, "fanout_max_in_flight": args.in_flight,
                       "merge_fan_in": args.fan_in, "read_concurrency": 4}
    warnings = WarningCounter()
    log = logging.getLogger("worker")
    log.addHandler(warnings)
    log.propagate = False

    with tempfile.TemporaryDirectory(prefix="run-store-") as folder, firestore_emulator(Path(folder)) as emulator:
        client = faulty_client(project=PROJECT, contention=not args.no_contention, meter=True)
        runs = FirestoreRunStore(client, COLLECTION)
        meter = client.write_meter
        warm_up = client.collection("warm-up").document("w")  # the emulator's first calls take seconds
        warm_up.set({"n": 1})
        warm_up.get()
        meter.reset()
        started_cpu, emulator_cpu = time.process_time(), group_cpu_seconds(emulator.process.pid)
        driven = drive(store, runs, MemoryBlobs(), job, threads=args.in_flight, timeout=args.timeout,
                       duplicates=args.duplicates, **worker_settings)
        cpu = time.process_time() - started_cpu
        emulator_cpu = group_cpu_seconds(emulator.process.pid) - emulator_cpu
        writes = meter.writes()
        ops = meter.operations()
        faults = client.contention_faults.counts() if client.contention_faults else {}
        run = runs.get_run(driven.run_id)
        shards = list(runs.shards(driven.run_id))
        levels = []
        if run is not None:
            for level in range(1, run.merge_level + 1):
                levels.append((level, list(runs.tasks(driven.run_id, run.merge_round, level))))
        client.close()

    alone = one_instance_answer(store, job, **worker_settings)
    t0 = driven.started
    lines = [*header]
    lines.append(f"run: {args.shards} objects in folders of {PER_FOLDER}, SHARD_OBJECTS=1, "
                 f"MERGE_FAN_IN={args.fan_in}, FANOUT_MAX_IN_FLIGHT={args.in_flight} with {args.in_flight} "
                 f"delivery threads, LEASE_SECONDS=30; contention faults "
                 f"{'off (emulator only)' if args.no_contention else 'on'}"
                 + (f"; {args.duplicates:.0%} of messages delivered twice" if args.duplicates else ""))
    if not driven.answers:
        state = (f"run state {run.state}, merge level {run.merge_level}" if run is not None else "no run record")
        lines.append(f"NO ANSWER after {args.timeout:.0f} s: {state}; shards by state "
                     f"{dict(collections.Counter(s.state for s in shards))}")
    else:
        answered_at, result = driven.answers[0]
        files = result.get("files")
        differs = same_figures(result, alone)
        lines.append(f"answer: status {result['status']}, answers published {len(driven.answers)}, files {files} "
                     f"== objects {len(objects)}: {'yes' if files == len(objects) else 'NO'}; figures == one "
                     f"instance's: {'yes' if not differs else 'NO: ' + '; '.join(differs[:5])}")
        lines.append(f"wall: {answered_at - t0:.1f} s from the job message to the answer (CPU: this process "
                     f"{cpu:.0f} s, the emulator {emulator_cpu:.0f} s); subscription idle after the answer: "
                     f"{driven.idle}")
    states = collections.Counter(s.state for s in shards)
    retried = sum(1 for s in shards if s.attempts > 1)
    read_s = [s.seconds for s in shards if s.seconds]
    lines.append(f"shards: {len(shards)} ({', '.join(f'{k} {v}' for k, v in sorted(states.items()))}); "
                 f"taken more than once: {retried}; read seconds mean {statistics.fmean(read_s or [0]):.3f} "
                 f"max {max(read_s or [0]):.2f}")
    n = max(1, len(shards))

    # -- the busiest documents ----------------------------------------------------------------------------
    by_doc: dict[str, list[float]] = collections.defaultdict(list)
    for at, path in writes:
        by_doc[path].append(at)
    window = {path: most_in_window(ats, WINDOW_S) for path, ats in by_doc.items()}
    hottest = max(window, key=lambda p: (window[p], len(by_doc[p])), default=None)
    lines.append("")
    if hottest is not None:
        lines.append(f"busiest document over {WINDOW_S:.0f} s windows: {hottest} ({kind_of(hottest)}): "
                     f"{window[hottest]} writes in {WINDOW_S:.0f} s = {window[hottest] / WINDOW_S:.1f} writes/s "
                     f"(Firestore sustains about 1/s)")
    rows = []
    for kind in ("run record", "shard", "merge task"):
        docs = [p for p in by_doc if kind_of(p) == kind]
        if docs:
            top = max(docs, key=lambda p: window[p])
            rows.append([kind, len(docs), sum(len(by_doc[p]) for p in docs),
                         f"{statistics.fmean(len(by_doc[p]) for p in docs):.1f}", max(len(by_doc[p]) for p in docs),
                         f"{window[top] / WINDOW_S:.1f}", top])
    lines += table(["kind", "documents", "writes", "writes/doc mean", "max", f"max /s ({WINDOW_S:.0f} s)",
                    "busiest"], rows)
    lines.append("")
    lines.append("top 5 documents by writes:")
    top5 = sorted(by_doc, key=lambda p: (-len(by_doc[p]), p))[:5]
    lines += table(["writes", f"most in {WINDOW_S:.0f} s", "first..last write (s after the job)", "document", "kind"],
                   [[len(by_doc[p]), window[p], f"{min(by_doc[p]) - t0:.1f}..{max(by_doc[p]) - t0:.1f}", p,
                     kind_of(p)] for p in top5])
    run_path = f"{COLLECTION}/{driven.run_id}"
    if run_path in by_doc:
        lines.append(f"run record written {len(by_doc[run_path])} times, at (s after the job): "
                     + " ".join(f"{at - t0:.1f}" for at in sorted(by_doc[run_path])))

    # -- Firestore operations ----------------------------------------------------------------------------
    lines.append("")
    lines.append("Firestore operations (the meter, at the worker's client):")
    op_rows = [[name, ops[name], f"{ops[name] / n:.2f}"] for name in
               ("reads", "lookup_documents", "query_documents", "aggregation_queries", "writes", "lookups", "queries",
                "commits", "begin_transaction", "rollback", "aborted_commits")]
    op_rows += [[f"injected: {name}", value, f"{value / n:.2f}"] for name, value in faults.items()]
    lines += table(["operation", "total", "per shard"], op_rows)

    # -- failures --------------------------------------------------------------------------------------------
    push = driven.push
    lines.append("")
    lines.append(f"deliveries: {push.deliveries} ({push.deliveries / n:.2f} per shard) of "
                 f"{sum(push.published.values())} messages published ({dict(push.published)}; "
                 f"{push.duplicated} delivered twice); most at once "
                 f"{push.most_at_once}; failed {sum(push.failures.values())}; dead-lettered "
                 f"{dict(push.dead_lettered) or 0}; dropped after every dead-letter attempt {push.dropped}")
    if push.failures:
        lines += table(["failed deliveries", "reason"], [[c, r] for r, c in push.failures.most_common(8)])
    counted = driven.runs
    failed_by_step = collections.Counter()
    for (method, _), c in counted.unavailable.items():
        failed_by_step[method.removeprefix("transact ")] += c
    lines.append("transactions by step (decide is called once per attempt; an attempt that lost to contention is "
                 "tried again):")
    lines += table(["step", "transactions", "attempts", "retries per transaction", "raised Unavailable"],
                   [[step, count, counted.attempts[step], f"{(counted.attempts[step] - count) / count:.3f}",
                     failed_by_step[step]] for step, count in counted.transactions.most_common()])
    unavailable = driven.runs.unavailable
    contention = sum(c for (_, r), c in unavailable.items() if "contention" in r or "Aborted" in r)
    lines.append(f"Unavailable raised by the run store: {sum(unavailable.values())}, of which contention "
                 f"(outlasted the retries) {contention}")
    if unavailable:
        lines += table(["raised", "method", "reason"], [[c, m, r] for (m, r), c in unavailable.most_common(8)])
    if warnings.counts:
        lines += table(["worker warnings", "message"], [[c, m] for m, c in warnings.counts.most_common(8)])

    # -- the merge tree --------------------------------------------------------------------------------------
    lines.append("")
    rows = []
    for level, tasks in levels:
        paths = {f"{run_path}/merges/{t.task_id}" for t in tasks}
        ats = [at for p in paths for at in by_doc.get(p, [])]
        seconds = [t.seconds for t in tasks]
        rows.append([level, len(tasks), max(len(t.inputs) for t in tasks), f"{statistics.fmean(seconds):.3f}",
                     f"{max(seconds):.3f}", f"{sum(seconds):.2f}", sum(t.attempts for t in tasks),
                     f"{max(ats) - min(ats):.1f}" if ats else "-"])
    if driven.answers and run is not None:
        last = max((at for at, p in writes if p.startswith(f"{run_path}/merges/")), default=None)
        shards_done = max((at for at, p in writes if p.startswith(f"{run_path}/shards/")), default=t0)
        lines.append(f"shards phase: {shards_done - t0:.1f} s (last shard write); merge: "
                     f"{driven.answers[0][0] - shards_done:.1f} s to the answer"
                     + (f" (answer built {driven.answers[0][0] - last:.1f} s after the last merge task's write)"
                        if last is not None else " (answered from the shards' partials: no merge tasks)"))
    if rows:
        lines += table(["merge level", "tasks", "inputs/task (max)", "task s mean", "task s max", "task s sum",
                        "leases taken", "level wall s (meter)"], rows)
    print("\n".join(lines))
    ok = (len(driven.answers) == 1 and driven.answers[0][1].get("files") == len(objects)
          and not same_figures(driven.answers[0][1], alone))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
