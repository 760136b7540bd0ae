"""Objects per second of a fanned-out run with 1, 2 and 4 function instances on the local stack.

For each mode (``--modes metadata full``) and number of instances (``--instances 1 2 4``) it starts that many
function processes behind ``worker/devstack/balancer.py`` (each takes ``--concurrency`` requests at once, as
Cloud Run's per-instance concurrency), with S3 reached through ``RecordingProxy(delay_s=0.03)`` (30 ms added
to every request: what a worker on Google Cloud sees of S3 in AWS), publishes one job with
``"fan_out": {"mode": "always"}`` and waits for its one answer on the reply topic. Each instance reads with
``READ_CONCURRENCY`` (default 4) in metadata mode and the default ``FULL_MODE_CONCURRENCY`` in full mode, and
the run's cap ``FANOUT_MAX_IN_FLIGHT`` is instances x concurrency: one instance's shards are limited by the
instance. It prints, per run: wall time (the answer's ``fanout.wall_seconds``, and publish to answer
pulled), objects/s and the speed-up over one instance, shards, how busy the instances were reading, S3
requests per object (LIST and GET, counted by the proxy), Firestore reads and writes (counted at the
Firestore client inside each function process, see ``COUNTER``), Cloud Storage requests (a second proxy),
and the CPU seconds that moto, the Pub/Sub emulator, the Firestore emulator, fake-gcs-server, the function
instances and this process used during the run.

    .venv/bin/python bench/fanout.py [--instances 1 2 4] [--modes metadata full] [--objects 4000] [--repeat 1]

The dataset is made once per invocation and shared by every configuration: ``--objects`` small Parquet
objects (3 rows each) in ``--folders`` hive partitions (``small/day=N/``), and ``--big-files`` larger ones
(``--big-rows`` rows each) for full mode (``big/day=N/``). A run starts from S3's folders (one shard each),
and a folder holding more than SHARD_OBJECTS (``--shard-objects``) hands the rest on.

Shard messages are pushed by this script (``ShardPusher``: a streaming pull that POSTs each message to the
balancer as a push subscription does, acknowledging on 2xx), not by the emulator: the emulator's push runs
two loops per subscription, each waiting for its answer, so it never has more than two shards in flight
whatever the number of instances (``--pusher emulator`` shows it). Real Pub/Sub push keeps as many
outstanding as the endpoint takes.

S3 reads are replayed (``--s3 replay``, the default): an unmeasured first run of each mode goes to moto, and
the proxy answers the same GETs (path and Range: object reads and listing pages) again from memory, after its
delay. moto spends about 4-5 ms of CPU per request in one process (its GIL): four instances reading at 30 ms
need more than a core of it, taken from the same 2 cores as the instances, which real S3 never takes (4
instances were 1.65-1.88x one with every read on moto, their shards read at half speed). ``--s3 moto`` sends
every request to moto. The configurations' fleets are all up at once and their runs take turns (1, 4, 1, 4,
...), so that each round compares runs next to each other in time on a shared machine.

A benchmark, not a test: 2 shared cores run everything (the stand-ins, the instances, the proxies).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import provenance
from bench.warm_jobs import group_cpu_seconds
from worker.devstack.balancer import CloudRunBalancer
from worker.devstack.datasets import events_table, parquet_bytes
from worker.devstack.proxy import RecordingProxy
from worker.devstack.stack import SHARD_MAX_DELIVERY_ATTEMPTS, LocalStack

BUCKET = "fanout-bench"
ACK = {102, 200, 201, 202, 204}  # what Pub/Sub push takes as an acknowledgement
STAND_INS = {"moto": "moto", "pubsub": "pubsub-emulator", "firestore": "firestore-emulator", "gcs": "fake-gcs-server"}

# Put on the function processes' PYTHONPATH as ``sitecustomize``: counts the Firestore RPCs the worker makes
# (at the generated client, below the worker's own code) and what Firestore bills for them: a document read
# per document a get or a query returns (at least one per query), a write per document a commit writes.
# Each process keeps its counts in a file named by its PID, rewritten after every call.
COUNTER = r'''
import json, os, threading

def _install(folder):
    from google.cloud.firestore_v1.services.firestore import client as gapic

    counts = {"transactions": 0, "tx_commits": 0, "tx_aborted": 0, "plain_commits": 0, "rollbacks": 0,
              "writes": 0, "gets": 0, "doc_reads": 0, "queries": 0, "query_reads": 0}
    lock = threading.Lock()

    def add(**more):
        with lock:
            for k, v in more.items():
                counts[k] += v
            path = os.path.join(folder, "%d.json" % os.getpid())
            with open(path + ".tmp", "w") as f:
                json.dump(counts, f)
            os.replace(path + ".tmp", path)

    cls = gapic.FirestoreClient
    begin, commit, rollback = cls.begin_transaction, cls.commit, cls.rollback
    batch_get, run_query = cls.batch_get_documents, cls.run_query

    def request_of(args, kwargs):
        return kwargs.get("request", args[0] if args else None)

    def begin_transaction(self, *args, **kwargs):
        answer = begin(self, *args, **kwargs)
        add(transactions=1)
        return answer

    def commit_(self, *args, **kwargs):
        request = request_of(args, kwargs)
        get = request.get if isinstance(request, dict) else lambda name, default: getattr(request, name, default)
        writes, in_transaction = len(get("writes", ())), bool(get("transaction", b""))
        try:
            answer = commit(self, *args, **kwargs)
        except Exception:
            add(tx_aborted=int(in_transaction))  # contention (or a fault): the client begins it again
            raise
        add(tx_commits=int(in_transaction), plain_commits=int(not in_transaction), writes=writes)
        return answer

    def rollback_(self, *args, **kwargs):
        add(rollbacks=1)
        return rollback(self, *args, **kwargs)

    def batch_get_documents(self, *args, **kwargs):
        add(gets=1)  # (the client stops iterating once it has its documents: count the call first)
        for response in batch_get(self, *args, **kwargs):
            if response._pb.WhichOneof("result") is not None:
                add(doc_reads=1)
            yield response

    def run_query_(self, *args, **kwargs):
        found = 0
        for response in run_query(self, *args, **kwargs):
            if response._pb.HasField("document"):
                found += 1
            yield response
        add(queries=1, query_reads=max(1, found))

    cls.begin_transaction, cls.commit, cls.rollback = begin_transaction, commit_, rollback_
    cls.batch_get_documents, cls.run_query = batch_get_documents, run_query_

if os.environ.get("BENCH_FIRESTORE_COUNTS"):
    try:
        _install(os.environ["BENCH_FIRESTORE_COUNTS"])
    except Exception as e:  # the bench then reports no counts; the worker runs as ever
        print("bench counter not installed: %r" % (e,), flush=True)
'''


# -- the dataset -------------------------------------------------------------------------------------


def small_body(i: int) -> bytes:
    """A small Parquet object (3 rows, 3 columns, about 1.5 KB): metadata mode reads it in one GET."""
    return parquet_bytes(pa.table({
        "id": pa.array([i, i + 10**17, None], pa.int64()),
        "amount": pa.array([i / 7, -1.5, 2.0**60]),
        "name": pa.array([f"n{i:05d}", None, "é\u4e2d"]),
    }))


def folder_of(i: int, args) -> int:
    """The folder of small object ``i``: round robin (equal folders), or with ``--skew`` folder f holding about
    (f + 1) shares of the objects, so that shards differ in length and do not all finish at once."""
    if not args.skew:
        return i % args.folders
    shares = args.folders * (args.folders + 1) // 2
    position = (i * shares) // args.objects  # which share object i falls in
    return next(f for f in range(args.folders) if position < (f + 1) * (f + 2) // 2)


def upload(stack: LocalStack, args) -> dict[str, dict]:
    """Upload the dataset (with threads, straight to moto); return what each prefix should answer."""
    s3 = stack.aws_client("s3")
    s3.create_bucket(Bucket=BUCKET)
    small = [small_body(i) for i in range(64)]
    big = [parquet_bytes(events_table(40 + d, args.big_rows), row_group_size=max(1, args.big_rows // 2))
           for d in range(4)]
    objects: list[tuple[str, bytes]] = []
    for i in range(args.objects):
        objects.append((f"small/day={folder_of(i, args)}/part-{i:06d}.parquet", small[i % len(small)]))
    for i in range(args.big_files):
        objects.append((f"big/day={i % args.folders}/part-{i:04d}.parquet", big[i % len(big)]))
    for i in range(16):  # warm-up runs: a few objects in eight folders (a shard for every instance)
        objects.append((f"warm/day={i % 8}/part-{i:02d}.parquet", small[i]))
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0], Body=kv[1]), objects))
    stack.allow_read(BUCKET, [""])
    big_bytes = sum(len(big[i % len(big)]) for i in range(args.big_files))
    print(f"uploaded {len(objects)} objects in {time.perf_counter() - started:.1f}s "
          f"({args.big_files} big files, {big_bytes / 2**20:.0f} MiB)", file=sys.stderr, flush=True)
    return {"metadata": {"prefix": "small/", "files": args.objects, "rows": 3 * args.objects},
            "full": {"prefix": "big/", "files": args.big_files, "rows": args.big_rows * args.big_files,
                     "bytes": big_bytes}}


def s3_round_trip(stack: LocalStack, endpoint: str, count: int = 30) -> float:
    """Median seconds of ``count`` sequential ranged GETs of one warm-up object at ``endpoint``: what one S3
    request costs the instances (through the proxy: its delay plus moto and the proxy themselves)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=stack.region, **stack._admin_keys)
    took = []
    for i in range(count + 1):
        started = time.perf_counter()
        s3.get_object(Bucket=BUCKET, Key="warm/day=0/part-00.parquet", Range="bytes=-8")["Body"].read()
        if i:  # the first one opens the connection
            took.append(time.perf_counter() - started)
    return statistics.median(took)


# -- Pub/Sub push with more than the emulator's two pushes outstanding ----------------------------------


class ShardPusher:
    """Pushes a pull subscription's messages to ``endpoint`` as Pub/Sub push does: the raw push body, the topic
    in the path; a 2xx acknowledges, anything else is a negative acknowledgement (a failed delivery attempt,
    toward the subscription's dead-letter policy). At most ``outstanding`` messages at once (flow control)."""

    def __init__(self, subscriber, subscription: str, topic: str, endpoint: str, outstanding: int):
        from google.cloud import pubsub_v1
        from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

        self.url = f"{endpoint}/{topic}"
        self.subscription = subscription
        self.pushed = collections.Counter()
        self._local = threading.local()
        self._future = subscriber.subscribe(
            subscription, self._push, flow_control=pubsub_v1.types.FlowControl(max_messages=outstanding),
            scheduler=ThreadScheduler(ThreadPoolExecutor(outstanding, thread_name_prefix="pusher")))

    def _push(self, message) -> None:
        session = getattr(self._local, "session", None) or requests.Session()
        self._local.session = session
        published = message.publish_time.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"message": {"data": base64.b64encode(message.data).decode(), "attributes": dict(message.attributes),
                            "messageId": message.message_id, "publishTime": published},
                "subscription": self.subscription}
        try:
            status = session.post(self.url, json=body, timeout=600).status_code
        except requests.RequestException:
            status = 0
        self.pushed[status] += 1
        (message.ack if status in ACK else message.nack)()

    def stop(self) -> None:
        self._future.cancel()
        with contextlib.suppress(Exception):  # cancelled
            self._future.result(timeout=10)


class Answers:
    """Results as they arrive on the reply topic, through a streaming pull of a subscription of its own.
    (``stack.inbox.wait_one`` polls: on this machine that loop costs about 0.3 of a core here and 0.65 in the
    emulator, which would be counted against the run.)"""

    def __init__(self, stack: LocalStack):
        self.subscription = f"projects/{stack.project}/subscriptions/bench-fanout-answers-{uuid.uuid4().hex[:6]}"
        stack.subscriber.create_subscription(request={"name": self.subscription, "topic": stack.reply_topic,
                                                      "ack_deadline_seconds": 60})
        self._got: dict[str, tuple[dict, float]] = {}
        self._arrived = threading.Condition()
        self._future = stack.subscriber.subscribe(self.subscription, self._on_message)

    def _on_message(self, message) -> None:
        result = json.loads(message.data)
        job_id = message.attributes.get("job_id") or result.get("job_id")
        with self._arrived:
            self._got.setdefault(job_id, (result, time.perf_counter()))
            self._arrived.notify_all()
        message.ack()

    def wait(self, job_id: str, timeout: float) -> tuple[dict, float]:
        """The first result for ``job_id`` and when it arrived (``time.perf_counter()``)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: job_id in self._got, timeout=timeout):
                raise TimeoutError(f"no result for job {job_id!r} after {timeout:.0f}s")
            return self._got[job_id]

    def stop(self) -> None:
        self._future.cancel()
        with contextlib.suppress(Exception):  # cancelled
            self._future.result(timeout=10)


# -- a fleet of instances -----------------------------------------------------------------------------


class Fleet:
    """``n`` functions behind a balancer, fed by their own jobs topic and shard topics."""

    def __init__(self, stack: LocalStack, n: int, mode: str, args, s3: RecordingProxy, gcs: RecordingProxy,
                 counts_dir: Path, answers: Answers):
        self.stack, self.n, self.mode, self.args, self.answers = stack, n, mode, args, answers
        self.name = f"fo{uuid.uuid4().hex[:6]}"
        self.capacity = n * args.concurrency
        project = stack.project
        self.shard_topic = f"projects/{project}/topics/{self.name}-shards"
        self.dead_letter_topic = f"projects/{project}/topics/{self.name}-shards-dead-letter"
        self.env = {
            "AWS_ENDPOINT_URL": s3.url, "STORAGE_EMULATOR_HOST": gcs.url,
            "SHARD_TOPIC": self.shard_topic, "SHARD_DEAD_LETTER_TOPIC": self.dead_letter_topic,
            # The pusher hands the balancer no more than ``capacity`` at once: an extra shard in flight waits there.
            "FANOUT_MAX_IN_FLIGHT": str(self.capacity + args.in_flight_extra),
            "SHARD_OBJECTS": str(args.shard_objects if mode == "metadata" else args.full_shard_objects),
            "BENCH_FIRESTORE_COUNTS": str(counts_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(counts_dir.parent), os.environ.get("PYTHONPATH")])),
        }
        if mode == "metadata":
            self.env["READ_CONCURRENCY"] = str(args.read_concurrency)
        self.functions: list = []
        self.balancer: CloudRunBalancer | None = None
        self.pusher: ShardPusher | None = None

    def start(self) -> Fleet:
        with ThreadPoolExecutor(self.n) as pool:
            self.functions = list(pool.map(
                lambda i: self.stack.start_function(f"{self.name}-{i}", **self.env), range(self.n)))
        self.balancer = CloudRunBalancer([f"http://{fn.address}" for fn in self.functions],
                                         concurrency=self.args.concurrency, pending_timeout_s=120).start()
        stack = self.stack
        if self.args.pusher == "emulator":
            assert stack.add_shard_topics(self.name, self.balancer.url) == (self.shard_topic, self.dead_letter_topic)
        else:
            for topic in (self.shard_topic, self.dead_letter_topic):
                stack.publisher.create_topic(name=topic)
            subscription = f"projects/{stack.project}/subscriptions/{self.name}-shards-pull"
            stack.subscriber.create_subscription(request={
                "name": subscription, "topic": self.shard_topic, "ack_deadline_seconds": 600,
                "dead_letter_policy": {"dead_letter_topic": self.dead_letter_topic,
                                       "max_delivery_attempts": SHARD_MAX_DELIVERY_ATTEMPTS}})
            stack.subscriber.create_subscription(request={
                "name": f"projects/{stack.project}/subscriptions/{self.name}-shards-dead-letter-push",
                "topic": self.dead_letter_topic, "ack_deadline_seconds": 600,
                "push_config": {"push_endpoint": f"{self.balancer.url}/{self.dead_letter_topic}"}})
            self.pusher = ShardPusher(stack.subscriber, subscription, self.shard_topic, self.balancer.url,
                                      self.capacity)
        self.jobs_topic = stack.add_push_subscription(f"{self.name}-jobs", self.balancer)
        return self

    def warm(self, expected: dict) -> None:
        """One job straight to each instance (federation, S3 client, pyarrow and, in full mode, the profiling
        modules), then one fanned-out run over ``warm/`` (Firestore, Cloud Storage and shard clients)."""
        ids = []
        for i, fn in enumerate(self.functions):
            job = {"job_id": f"{self.name}-warm-{i}", "bucket": BUCKET, "prefix": "warm/", "mode": self.mode,
                   "fan_out": {"mode": "never"}}
            push = {"message": {"data": base64.b64encode(json.dumps(job).encode()).decode(),
                                "messageId": f"{self.name}-warm-{i}", "publishTime": "2026-01-01T00:00:00Z",
                                "attributes": {}}, "subscription": "bench-warm"}
            answer = requests.post(f"http://{fn.address}/{self.jobs_topic}", json=push, timeout=120)
            assert answer.status_code == 200, answer.text
            ids.append(job["job_id"])
        result, _, _ = self.run_job("warm/", timeout=120)
        assert result["status"] == "ok", result
        for job_id in ids:
            self.answers.wait(job_id, timeout=60)

    def run_job(self, prefix: str, timeout: float) -> tuple[dict, str, float]:
        """Publish a fanned-out job and wait for its answer: (result, run ID, seconds from publish to answer)."""
        job = {"job_id": f"{self.name}-{uuid.uuid4().hex[:8]}", "bucket": BUCKET, "prefix": prefix,
               "mode": self.mode, "fan_out": {"mode": "always"}}
        published = time.perf_counter()
        run_id = self.stack.publish_job(job, topic=self.jobs_topic)
        result, arrived = self.answers.wait(job["job_id"], timeout=timeout)
        return result, run_id, arrived - published

    def cpu(self) -> float:
        return sum(group_cpu_seconds(fn.process.pid) for fn in self.functions)

    def stop(self) -> None:
        if self.pusher is not None:
            self.pusher.stop()
        for fn in self.functions:
            fn.stop()
        if self.balancer is not None:
            self.balancer.stop()


# -- one measured run ---------------------------------------------------------------------------------


def firestore_counts(folder: Path) -> collections.Counter:
    total: collections.Counter = collections.Counter()
    for path in folder.glob("*.json"):
        try:
            total.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return total


def self_cpu() -> float:
    times = os.times()
    return times.user + times.system


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (every process: /proc/stat's first line)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_now(stack: LocalStack, fleet: Fleet) -> dict[str, float]:
    by_name = {s.name: s for s in stack.services}
    cpu = {short: group_cpu_seconds(by_name[name].process.pid) for short, name in STAND_INS.items()}
    return cpu | {"functions": fleet.cpu(), "bench": self_cpu(), "machine": machine_cpu()}


def shard_phases(fleet: Fleet, run_id: str) -> dict[str, list[float]]:
    """Per-shard timings (ms) the instances logged for ``run_id``: listing, hand_off, reading, storing (the
    "shard read" entry) and commit (the "shard committed" entry)."""
    phases: dict[str, list[float]] = collections.defaultdict(list)
    for fn in fleet.functions:
        try:
            lines = fn.log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if run_id not in line or not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("run_id") != run_id:
                continue
            if entry.get("message") == "shard read":
                for name, ms in (entry.get("timings_ms") or {}).items():
                    phases[name].append(float(ms))
            elif entry.get("message") == "shard committed" and "commit_ms" in entry:
                phases["commit"].append(float(entry["commit_ms"]))
    return phases


def is_list(path: str) -> bool:
    return "list-type=2" in path


def measure(stack: LocalStack, fleet: Fleet, expected: dict, s3: RecordingProxy, gcs: RecordingProxy,
            counts_dir: Path, timeout: float) -> dict:
    assert fleet.balancer is not None
    seen_s3, seen_gcs, delivered = len(s3.seen), len(gcs.seen), len(fleet.balancer.deliveries)
    counts = firestore_counts(counts_dir)
    cpu = cpu_now(stack, fleet)
    result, run_id, wall = fleet.run_job(expected["prefix"], timeout)
    time.sleep(0.5)  # the merging instance records the answer after publishing it
    cpu = {k: v - cpu[k] for k, v in cpu_now(stack, fleet).items()}
    machine = cpu.pop("machine")
    cpu["other"] = max(0.0, machine - sum(cpu.values()))  # processes outside this stack (other work on the machine)
    counts = firestore_counts(counts_dir) - counts
    assert result["status"] == "ok", result
    if result["files"] != expected["files"] or result["rows"] != expected["rows"]:
        raise AssertionError(f"wrong answer: {result['files']} files, {result['rows']} rows; expected {expected}")
    requests_s3 = s3.seen[seen_s3:]
    lists = sum(1 for s in requests_s3 if s.method == "GET" and is_list(s.path))
    gets = sum(1 for s in requests_s3 if s.method == "GET" and not is_list(s.path))
    shards = list(stack.run_store().shards(run_id))
    deliveries = [d for d in fleet.balancer.deliveries[delivered:] if d.status == 200]
    per_instance = collections.Counter(d.instance for d in deliveries)
    fan = result["fanout"]
    return {
        "mode": fleet.mode, "instances": fleet.n, "objects": result["files"], "rows": result["rows"],
        "shards": fan["shards"], "retried": fan["retried"], "failed": fan["failed"],
        "hand_offs": sum(1 for s in shards if s.children), "wall_run": fan["wall_seconds"], "wall": wall,
        "bytes_read": fan["bytes_read"], "busy": sum(s.seconds for s in shards) / (fleet.n * wall),
        "shard_seconds": statistics.median([s.seconds for s in shards if s.counts.listed]) if shards else 0.0,
        "lists": lists, "gets": gets, "s3_other": len(requests_s3) - lists - gets,
        "gcs": len(gcs.seen) - seen_gcs, "firestore": counts, "cpu": cpu,
        "per_instance": "/".join(str(per_instance.get(i, 0)) for i in range(fleet.n)),
        "most_in_flight": fleet.balancer.max_in_flight, "phases": shard_phases(fleet, run_id),
    }


# -- simultaneous shard commits of one run -----------------------------------------------------------


def commit_once(stack: LocalStack, n: int) -> list[tuple[float, bool]]:
    """``n`` instances finishing a shard each of one new run at the same instant, through the worker's own store and
    decision (``decisions.finish``, a transaction on the shard's records only): (seconds, committed) for each."""
    from worker.adapters.firestore import FirestoreRunStore
    from worker.devstack.stack import FIRESTORE_DATABASE, RUNS_COLLECTION
    from worker.errors import Retryable
    from worker.fanout import decisions as d
    from worker.fanout.records import (
        DISPATCHED,
        DONE,
        QUEUED,
        Counts,
        Lease,
        Reads,
        RunRecord,
        ShardRecord,
        shard_id_of,
    )

    stores = [FirestoreRunStore.from_settings(stack.project, FIRESTORE_DATABASE, RUNS_COLLECTION)
              for _ in range(n)]
    run_id = f"probe-{uuid.uuid4().hex[:10]}"
    shards = [ShardRecord(shard_id_of(run_id, f"k{i:03d}", f"k{i + 1:03d}"), f"k{i:03d}", f"k{i + 1:03d}",
                          state=DISPATCHED if i < n else QUEUED, generation=1,
                          lease=Lease(f"t{i}", time.time() + 600) if i < n else Lease()) for i in range(n + 4)]
    run = RunRecord(run_id=run_id, job_json="{}", created_at=time.time(), max_in_flight=n)
    stores[0].create_run(run, shards)
    barrier = threading.Barrier(n)
    took: list[tuple[float, bool]] = []

    def finish(i: int) -> None:
        shard = shards[i]
        outcome = d.Outcome(DONE, partial="p", read_stop=shard.stop, counts=Counts(listed=1))
        barrier.wait()
        started = time.monotonic()
        try:
            stores[i].transact(run_id, Reads(shards=(shard.shard_id,), queued=1),
                               d.finish(run_id, shard.shard_id, outcome, time.time(), 0, token=f"t{i}"))
            took.append((time.monotonic() - started, True))
        except Retryable:
            took.append((time.monotonic() - started, False))

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    return took


def commit_probe(stack: LocalStack, counts: list[int], repeat: int) -> list[str]:
    """Simultaneous shard commits of one run: the worker's own store (``FirestoreRunStore``) and decision
    (``decisions.finish``), each instance with its own client, against the stack's Firestore. Each commit writes its
    own shard's record and dispatches one queued shard (its slot); none writes the run's record. A commit that gives
    up (``Retryable``: contention outlasted the client's attempts) has its shard redelivered."""
    rows = []
    for n in counts:
        for _ in range(repeat):
            took = commit_once(stack, n)
            seconds = sorted(t for t, _ in took)
            rows.append([str(n), " ".join(f"{t:.2f}" for t in seconds), f"{statistics.median(seconds):.2f}",
                         str(sum(1 for _, ok in took if not ok))])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return ["Simultaneous shard commits of one run (each instance its own Firestore client; seconds per commit):",
            *table(["instances committing at once", "seconds per commit", "median", "gave up (Retryable)"], rows)]


# -- the tables ---------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [" | ".join(header), " | ".join("---" for _ in header), *(" | ".join(r) for r in rows)]


def report(runs: list[dict], args, cores: int) -> list[str]:
    base: dict[str, float] = {}
    for mode in args.modes:
        ones = [r["objects"] / r["wall"] for r in runs if r["mode"] == mode and r["instances"] == min(args.instances)]
        if ones:
            base[mode] = statistics.median(ones)
    lines = []
    rows = []
    for r in runs:
        rate = r["objects"] / r["wall"]
        fs = r["firestore"]
        reads = fs["doc_reads"] + fs["query_reads"]
        rows.append([r["mode"], str(r["instances"]), f"{r['objects']:,}", str(r["shards"]), str(r["hand_offs"]),
                     f"{r['wall_run']:.1f}", f"{r['wall']:.1f}", f"{rate:.1f}",
                     f"{rate / base[r['mode']]:.2f}" if r["mode"] in base else "-",
                     f"{r['bytes_read'] / r['wall'] / 2**20:.1f}", f"{r['busy']:.0%}", f"{r['shard_seconds']:.1f}",
                     r["per_instance"], str(r["most_in_flight"]), str(r["lists"]), str(r["gets"]),
                     f"{(r['lists'] + r['gets']) / r['objects']:.2f}", f"{r['gets'] / r['objects']:.2f}",
                     str(fs["tx_commits"]), str(fs["tx_aborted"]), str(fs["plain_commits"]),
                     str(reads), str(fs["writes"]), f"{reads / r['shards']:.1f} / {fs['writes'] / r['shards']:.1f}",
                     str(r["gcs"])])
    lines += table(["mode", "instances", "objects", "shards", "hand-offs", "wall s (fanout)", "wall s (publish→answer)",
                    "objects/s", f"speed-up vs {min(args.instances)}", "MiB/s read", "instances busy reading",
                    "shard s (median)", "requests per instance", "most requests at once", "S3 LIST", "S3 GET",
                    "S3 req/object", "GET/object", "Firestore transactions", "aborted (retried)", "plain writes",
                    "Firestore reads", "Firestore writes", "reads / writes per shard", "GCS requests"], rows)
    low, high = min(args.instances), max(args.instances)
    for mode in args.modes:
        pairs = []
        for round_ in range(args.repeat):
            rates = {r["instances"]: r["objects"] / r["wall"] for r in runs
                     if r["mode"] == mode and r.get("round") == round_}
            if low in rates and high in rates and low != high:
                pairs.append(f"{rates[high] / rates[low]:.2f}")
        if pairs:
            lines.append(f"{mode}: {high} instances against {low} in the same round: {', '.join(pairs)}")
    lines.append("")
    lines.append(f"CPU seconds used during each run ({cores} cores = {cores} CPU-seconds per second of wall time; "
                 "% = of one core over the run):")
    rows = []
    for r in runs:
        c, wall = r["cpu"], r["wall"]
        total = sum(c.values()) - c["other"]
        cells = [f"{c[k]:.1f} ({c[k] / wall:.0%})" for k in ("functions", "moto", "pubsub", "firestore", "gcs",
                                                             "bench")]
        rows.append([r["mode"], str(r["instances"]), f"{wall:.1f}", *cells, f"{total:.1f}",
                     f"{c['other']:.1f}", f"{(total + c['other']) / (cores * wall):.0%}",
                     f"{1000 * c['functions'] / r['objects']:.2f}",
                     f"{1000 * c['moto'] / max(1, r['lists'] + r['gets']):.2f}", limit(r, cores)])
    lines += table(["mode", "instances", "wall s", "functions", "moto", "Pub/Sub emulator", "Firestore emulator",
                    "fake-gcs", "bench process (S3 + GCS proxies, balancer, pusher)", "total", "other processes",
                    "machine busy",
                    "function CPU ms/object", "moto CPU ms/request", "limit"], rows)
    lines.append("")
    lines.append("Where the instances' time went (from their logs: each shard's listing, hand-off transaction, "
                 "reading, storing its partial, and its closing commit; median ms per shard, and % of instances x "
                 "wall; other = messages in transit, note_attempt and reads of the records, HTTP, the merge, idle):")
    rows = []
    names = ("listing", "hand_off", "reading", "storing", "commit")
    for r in runs:
        phases, capacity = r["phases"], 1000 * r["instances"] * r["wall"]
        used = sum(sum(v) for v in phases.values())
        cells = [f"{statistics.median(phases[n]):.0f} ({sum(phases[n]) / capacity:.0%})" if phases.get(n) else "-"
                 for n in names]
        commits = phases.get("commit") or [0.0]
        rows.append([r["mode"], str(r["instances"]), str(len(phases.get("reading", []))), *cells,
                     f"{max(commits):.0f}", f"{max(0.0, 1 - used / capacity):.0%}"])
    lines += table(["mode", "instances", "shards logged", "listing", "hand-off", "reading", "storing", "commit",
                    "slowest commit ms", "other"], rows)
    return lines


def limit(r: dict, cores: int) -> str:
    """What bounded this run, read from its figures: a Python process near one core (its GIL) or the machine's
    cores near full; otherwise the instances themselves (waiting on S3 round trips, or on their own CPU)."""
    c, wall = r["cpu"], r["wall"]
    machine = sum(c.values()) / (cores * wall)  # other processes included: they take cores too
    saturated = [name for name in ("moto", "bench") if c[name] / wall >= 0.85]
    found = []
    if machine >= 0.85:
        found.append(f"the machine's {cores} cores")
    if c["other"] / wall >= 0.25:
        found.append(f"other work on the machine ({c['other'] / wall:.0%} of a core)")
    found += [f"{name} (one core, GIL)" for name in saturated]
    if not found:
        found.append("the instances (S3 round trips at their read concurrency)" if r["mode"] == "metadata"
                     else "the instances' CPU")
    return "; ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--modes", nargs="+", choices=["metadata", "full"], default=["metadata", "full"])
    parser.add_argument("--objects", type=int, default=4000, help="small objects for metadata mode")
    parser.add_argument("--folders", type=int, default=8, help="hive partitions the objects are spread over")
    parser.add_argument("--skew", action="store_true",
                        help="folders of unequal sizes (1:2:...:folders), so shards do not finish in step")
    parser.add_argument("--big-files", type=int, default=32, help="larger objects for full mode")
    parser.add_argument("--big-rows", type=int, default=100_000, help="rows of each larger object")
    parser.add_argument("--shard-objects", type=int, default=1000, help="SHARD_OBJECTS in metadata mode")
    parser.add_argument("--full-shard-objects", type=int, default=1000, help="SHARD_OBJECTS in full mode")
    parser.add_argument("--read-concurrency", type=int, default=4, help="READ_CONCURRENCY (metadata mode)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests (shards) one instance takes at once (Cloud Run's per-instance concurrency)")
    parser.add_argument("--in-flight-extra", type=int, default=1,
                        help="FANOUT_MAX_IN_FLIGHT = instances x concurrency + this (see Fleet)")
    parser.add_argument("--s3-delay-ms", type=float, default=30.0, help="added to every S3 request by the proxy")
    parser.add_argument("--s3", choices=["replay", "moto"], default="replay",
                        help="replay: the S3 proxy forwards each object read (path and Range) to moto once, in an "
                             "unmeasured first run of each mode, and answers it again from memory (after its delay); "
                             "moto: moto answers every request, and its CPU competes with the instances' (see "
                             "docs/benchmarks.md)")
    parser.add_argument("--pusher", choices=["bench", "emulator"], default="bench",
                        help="who pushes shard messages: this script (as many as the instances take) or the "
                             "emulator's push subscription (two at a time)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (on the same warm instances)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one run's answer")
    parser.add_argument("--commit-probe", type=int, nargs="*", metavar="N",
                        help="instead of runs: N instances committing a shard of one run at the same instant "
                             "(default 1 2 4 8), against the stack's Firestore")
    args = parser.parse_args()
    if args.commit_probe is not None:
        header = provenance("simultaneous shard commits of one run (worker.adapters.firestore, "
                            "worker.fanout.decisions.finish)")
        with LocalStack(Path(tempfile.mkdtemp(prefix="bench-fanout-probe-"))) as stack:
            lines = commit_probe(stack, args.commit_probe or [1, 2, 4, 8], args.repeat)
        print("\n".join([*header, *lines]))
        return
    pusher = "this script" if args.pusher == "bench" else "the emulator"
    header = provenance(
        f"READ_CONCURRENCY={args.read_concurrency} per shard in metadata mode, FULL_MODE_CONCURRENCY default (2); "
        f"{args.concurrency} shard(s) at once per instance, FANOUT_MAX_IN_FLIGHT = instances x {args.concurrency} + "
        f"{args.in_flight_extra}; SHARD_OBJECTS {args.shard_objects} (metadata), {args.full_shard_objects} (full); "
        f"S3 through a proxy adding {args.s3_delay_ms:g} ms per request"
        f"{', object reads replayed from memory after a first run (--s3 replay)' if args.s3 == 'replay' else ''}; "
        f"shard messages pushed by {pusher}")
    cores = os.cpu_count() or 1
    runs: list[dict] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    counter = workdir / "counter"
    (counter / "counts").mkdir(parents=True)
    (counter / "sitecustomize.py").write_text(COUNTER)
    with LocalStack(workdir / "stack", allowed_buckets=BUCKET) as stack:
        expected = upload(stack, args)
        answers = Answers(stack)
        try:
            replay = (lambda method, path: method == "GET") if args.s3 == "replay" else None
            with RecordingProxy(stack.aws_endpoint, delay_s=args.s3_delay_ms / 1000, replay=replay) as s3, \
                    RecordingProxy(stack.storage_endpoint) as gcs:
                direct, proxied = s3_round_trip(stack, stack.aws_endpoint), s3_round_trip(stack, s3.url)
                header.append(f"S3 request (sequential ranged GET, median of 30): {1000 * proxied:.1f} ms through "
                              f"the proxy, {1000 * direct:.1f} ms straight to moto")
                print(header[-1], file=sys.stderr, flush=True)
                for mode in args.modes:
                    # Every configuration's fleet is up at once and the runs take turns (1, 2, 4, 1, 2, 4, ...):
                    # on a shared machine, runs next to each other in time are the ones worth comparing.
                    fleets: list[Fleet] = []
                    try:
                        for n in args.instances:
                            fleets.append(Fleet(stack, n, mode, args, s3, gcs, counter / "counts", answers).start())
                            fleets[-1].warm(expected[mode])
                        if replay is not None:
                            started = time.perf_counter()
                            fleets[-1].run_job(expected[mode]["prefix"], args.timeout)
                            print(f"{mode}: replies primed by one unmeasured run "
                                  f"({time.perf_counter() - started:.1f}s)", file=sys.stderr, flush=True)
                        for round_ in range(args.repeat):
                            for fleet in fleets:
                                runs.append(measure(stack, fleet, expected[mode], s3, gcs, counter / "counts",
                                                    args.timeout) | {"round": round_})
                                r = runs[-1]
                                print(f"{mode} x{fleet.n}: {r['objects']} objects in {r['wall']:.1f}s "
                                      f"({r['objects'] / r['wall']:.1f}/s), {r['shards']} shards, cpu "
                                      f"{ {k: round(v, 1) for k, v in r['cpu'].items()} }", file=sys.stderr, flush=True)
                    finally:
                        for fleet in fleets:
                            fleet.stop()
        finally:
            answers.stop()
    print("\n".join(header))
    print(f"one fanned-out job per run (\"fan_out\": {{\"mode\": \"always\"}}) on {cores} cores; metadata: "
          f"{args.objects:,} objects of ~1.5 KB in {args.folders} folders"
          f"{' of sizes 1:2:...:' + str(args.folders) if args.skew else ' of equal size'}; "
          f"full: {args.big_files} objects of "
          f"{args.big_rows:,} rows ({expected['full']['bytes'] / 2**20:.0f} MiB); "
          "objects/s = objects / publish→answer; "
          "busy = shards' reading time / (instances x wall); Firestore counted at each function's client "
          "(reads: documents returned, at least one per query; writes: documents committed)")
    print("\n".join(report(runs, args, cores)))


if __name__ == "__main__":
    main()
