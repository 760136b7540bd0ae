"""A fanned-out run driven in one process: the real ``Worker`` and coordinator over a given run store, with
its shard and merge messages delivered by concurrent threads the way Pub/Sub push delivers them.

Test tooling (never shipped with the function), shared by bench/run_store.py and
tests/integration/test_fanout_contention.py. S3 and the partials bucket are whatever the caller passes (the
in-memory doubles of tests/unit/support.py); the run store is usually the real ``FirestoreRunStore`` on
``firestore_faults.faulty_client`` against the Firestore emulator (``firestore_emulator``).

``PushDelivery`` is the shard topic's push subscription: ``threads`` deliveries at once (Cloud Run's
``max_instances`` x ``concurrency``), each a call of ``Worker.handle_pubsub`` with the topic in the event's
source; a delivery that raises is a failed attempt, delivered again after an exponential backoff, and after
``attempts`` failed attempts the message goes to the dead-letter topic (delivered the same way, with the
dead-letter topic as its source); a dead letter that fails every attempt too is dropped (counted). With
``duplicates``, that share of the messages is delivered twice, the copy within a second of the first (push is at
least once).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import heapq
import inspect
import json
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.config import Settings
from worker.errors import Unavailable
from worker.fanout.coordinator import Stores
from worker.service import Worker

PROJECT = "run-driver"
SHARD_TOPIC = f"projects/{PROJECT}/topics/shards"
DEAD_LETTER_TOPIC = f"projects/{PROJECT}/topics/shards-dead-letter"
REPLY_TOPIC = f"projects/{PROJECT}/topics/results"
PUSH_ATTEMPTS = 5  # deploy/'s shard_max_delivery_attempts
PER_FOLDER = 5  # lake(): objects per folder (the first split cuts at folders; each range hands its objects on)
BACKOFF_S = (1.0, 5.0)  # first and longest retry delay: the local stack's SHORT_RETRY_POLICY (deploy/: 10 s, 600 s)


def lake(count: int, prefix: str = "lake/", per_folder: int = PER_FOLDER) -> dict[str, bytes]:
    """``count`` tiny Parquet objects (3 rows each, their values told apart), ``per_folder`` to a folder."""
    import pyarrow as pa

    from worker.devstack.datasets import parquet_bytes

    return {f"{prefix}g={i // per_folder:05d}/part-{i:06d}.parquet":
            parquet_bytes(pa.table({"id": pa.array([3 * i, 3 * i + 1, 3 * i + 2], pa.int64()),
                                    "v": pa.array([float(i), None, 0.5])}))
            for i in range(count)}


def reason_of(error: BaseException) -> str:
    """An exception's type and message with IDs and figures blanked, so that failures group by their kind."""
    text = re.sub(r"\b[0-9a-f]{8,}\b", "<id>", str(getattr(error, "message", error)))
    text = re.sub(r"run [\w-]+", "run <id>", text)
    text = re.sub(r"\d+(\.\d+)?", "#", text)
    return f"{type(error).__name__}: {text}"[:160]


@dataclass(order=True)
class _Pending:
    ready: float
    seq: int
    attributes: dict = field(compare=False)
    message_id: str = field(compare=False)
    dead: bool = field(compare=False, default=False)
    attempts: int = field(compare=False, default=0)


class PushDelivery:
    """A ``ShardPublisher`` whose messages are pushed to a worker by ``threads`` threads, as Pub/Sub push does
    (see the module's docstring). Counters: ``deliveries``, ``failures`` (failed deliveries by reason),
    ``dead_lettered``, ``dropped``, ``published``."""

    def __init__(self, *, threads: int, attempts: int = PUSH_ATTEMPTS, backoff: tuple[float, float] = BACKOFF_S,
                 shard_topic: str = SHARD_TOPIC, dead_letter_topic: str = DEAD_LETTER_TOPIC, duplicates: float = 0.0,
                 seed: int = 0):
        self.threads = threads
        self.duplicates = duplicates
        self.attempts = attempts
        self.backoff = backoff
        self.shard_topic, self.dead_letter_topic = shard_topic, dead_letter_topic
        self._rng = random.Random(seed)  # noqa: S311 (jitter)
        self._changed = threading.Condition()
        self._heap: list[_Pending] = []
        self._seq = 0
        self._busy = 0
        self._stopping = False
        self._workers: list[threading.Thread] = []
        self._target: Any = None
        self.deliveries = 0
        self.published: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.dead_lettered: collections.Counter[str] = collections.Counter()
        self.dropped = 0
        self.duplicated = 0
        self.most_at_once = 0

    # -- ShardPublisher ---------------------------------------------------------------------------

    def publish_shards(self, run_id: str, shards) -> None:
        for shard_id, generation in shards:
            self._put({"kind": "shard", "run_id": run_id, "shard_id": shard_id, "generation": str(generation)})

    def publish_tasks(self, run_id: str, task_ids) -> None:
        for task_id in task_ids:
            self._put({"kind": "merge", "run_id": run_id, "task_id": task_id})

    def _put(self, attributes: dict) -> None:
        with self._changed:
            self._seq += 1
            self.published[attributes["kind"]] += 1
            message_id = f"m-{self._seq}"
            heapq.heappush(self._heap, _Pending(0.0, self._seq, attributes, message_id))
            if self._rng.random() < self.duplicates:  # the same message again (its own attempts)
                self.duplicated += 1
                self._seq += 1
                heapq.heappush(self._heap, _Pending(time.monotonic() + self._rng.uniform(0, 1), self._seq,
                                                    attributes, message_id))
            self._changed.notify_all()

    # -- delivering ---------------------------------------------------------------------------------

    def start(self, worker: Worker) -> PushDelivery:
        self._target = worker
        self._workers = [threading.Thread(target=self._deliver_loop, name=f"push-{i}", daemon=True)
                         for i in range(self.threads)]
        for thread in self._workers:
            thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._workers:
            thread.join(timeout=60)

    def idle(self) -> bool:
        """Nothing waiting, nothing being delivered."""
        with self._changed:
            return not self._heap and not self._busy

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._heap or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(timeout=min(left, 0.5))
        return True

    def _next(self) -> _Pending | None:
        with self._changed:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                if self._heap and self._heap[0].ready <= now:
                    pending = heapq.heappop(self._heap)
                    self._busy += 1
                    self.most_at_once = max(self.most_at_once, self._busy)
                    return pending
                wait = (self._heap[0].ready - now) if self._heap else 0.5
                self._changed.wait(timeout=max(0.001, min(wait, 0.5)))

    def _deliver_loop(self) -> None:
        while (pending := self._next()) is not None:
            error: BaseException | None = None
            try:
                self._deliver(pending)
            except BaseException as e:  # noqa: BLE001 - any exception is a failed push (HTTP 500)
                error = e
            with self._changed:
                self._busy -= 1
                self.deliveries += 1
                if error is not None:
                    self._failed(pending, error)
                self._changed.notify_all()

    def _deliver(self, pending: _Pending) -> None:
        data = json.dumps(pending.attributes).encode()
        message = {"message": {"data": base64.b64encode(data).decode(), "messageId": pending.message_id,
                               "attributes": dict(pending.attributes)}}
        topic = self.dead_letter_topic if pending.dead else self.shard_topic
        self._target.handle_pubsub(message, pending.message_id, source=f"//pubsub.googleapis.com/{topic}")

    def _failed(self, pending: _Pending, error: BaseException) -> None:
        """Under the lock: count the failure and deliver the message again, dead-letter it, or drop it."""
        self.failures[reason_of(error)] += 1
        pending.attempts += 1
        if pending.attempts < self.attempts:
            first, longest = self.backoff
            delay = min(longest, first * 2 ** (pending.attempts - 1)) * self._rng.uniform(0.8, 1.2)
            pending.ready = time.monotonic() + delay
            heapq.heappush(self._heap, pending)
        elif not pending.dead:  # Pub/Sub republishes it on the dead-letter topic, with a new message ID
            self.dead_lettered[pending.attributes["kind"]] += 1
            self._seq += 1
            heapq.heappush(self._heap, _Pending(0.0, self._seq, pending.attributes, f"m-{self._seq}", dead=True))
        else:
            self.dropped += 1


class CountedRuns:
    """A ``RunStore`` passed through, counting per step of ``worker.fanout.decisions`` (``finish``, ``lease_shard``
    ...) its transactions and their attempts (``decide`` is called once per attempt: a transaction that lost to
    contention is tried again), and the ``Unavailable`` each method raised, by reason (those the coordinator
    swallows too: a lease renewal's, a release's)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.unavailable: collections.Counter[tuple[str, str]] = collections.Counter()
        self.transactions: collections.Counter[str] = collections.Counter()
        self.attempts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _count(self, method: str, error: Unavailable) -> None:
        with self._lock:
            self.unavailable[(method, reason_of(error))] += 1

    def transact(self, run_id: str, reads: Any, decide: Any) -> Any:
        step = getattr(decide, "__qualname__", "?").split(".<locals>")[0]

        def counted(view: Any) -> Any:
            with self._lock:
                self.attempts[step] += 1
            return decide(view)

        with self._lock:
            self.transactions[step] += 1
        try:
            return self.inner.transact(run_id, reads, counted)
        except Unavailable as e:
            self._count(f"transact {step}", e)
            raise

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                result = attr(*args, **kwargs)
            except Unavailable as e:
                self._count(name, e)
                raise
            return self._stream(name, result) if inspect.isgenerator(result) else result

        return call

    def _stream(self, name: str, items: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from items
        except Unavailable as e:
            self._count(name, e)
            raise


class Answers:
    """The worker's ``Publisher``: keeps every result published, with the monotonic time it came."""

    def __init__(self):
        self.sent: list[tuple[float, dict]] = []
        self._lock = threading.Lock()

    def publish(self, result: dict, topic: str | None = None) -> str:
        with self._lock:
            self.sent.append((time.monotonic(), json.loads(json.dumps(result))))
            return f"r-{len(self.sent)}"


class Objects:
    """The worker's ``Storage``: one object store for every bucket."""

    def __init__(self, store: Any):
        self.store = store

    def ensure_credentials(self) -> None:
        pass

    def objects(self, bucket: str, job_id: str) -> Any:
        return self.store


def settings(**overrides: Any) -> Settings:
    """The worker's settings for a driven run (``overrides``: fan-out's, e.g. ``shard_objects``)."""
    return Settings(role_arn="", audience="", reply_topic=REPLY_TOPIC, partials_bucket="partials",
                    shard_topic=SHARD_TOPIC, shard_dead_letter_topic=DEAD_LETTER_TOPIC, **overrides)


def job_message(job: dict, message_id: str) -> dict:
    return {"message": {"data": base64.b64encode(json.dumps(job).encode()).decode(), "messageId": message_id,
                        "attributes": {}}}


@dataclass
class Driven:
    """What one driven run did."""

    run_id: str
    started: float  # monotonic, when the job message was delivered
    answers: list[tuple[float, dict]]  # (monotonic time, result)
    push: PushDelivery
    runs: CountedRuns
    idle: bool  # the subscription went idle after the answer (nothing left undelivered)

    @property
    def answered_after(self) -> float | None:
        return self.answers[0][0] - self.started if self.answers else None


def drive(store: Any, runs: Any, blobs: Any, job: dict, *, threads: int, timeout: float, linger: float = 5.0,
          message_id: str = "job-1", attempts: int = PUSH_ATTEMPTS, backoff: tuple[float, float] = BACKOFF_S,
          duplicates: float = 0.0, **overrides: Any) -> Driven:
    """Deliver ``job`` (which must fan out) to a worker over ``store`` (S3), ``runs`` and ``blobs``, push its run's
    messages with ``threads`` threads until it answers (or ``timeout`` seconds pass), then until nothing is left
    (at most ``linger`` seconds more: a second answer would show). ``overrides``: the worker's settings."""
    counted = CountedRuns(runs)
    push = PushDelivery(threads=threads, attempts=attempts, backoff=backoff, duplicates=duplicates)
    answers = Answers()
    worker = Worker(settings(**overrides), Objects(store), answers, Stores(runs=counted, blobs=blobs, shards=push))
    push.start(worker)
    started = time.monotonic()
    try:
        for attempt in range(attempts):  # the job's own message, redelivered as its subscription would
            try:
                if worker.handle_pubsub(job_message(job, message_id), message_id) is not None:
                    raise RuntimeError("the job did not fan out (it was answered by one instance)")
                break
            except Unavailable:
                if attempt == attempts - 1:
                    raise
                time.sleep(backoff[0])
        deadline = started + timeout
        while not answers.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        idle = push.wait_idle(linger) if answers.sent else False
    finally:
        push.stop()
    return Driven(run_id=message_id, started=started, answers=list(answers.sent), push=push, runs=counted,
                  idle=idle)


def one_instance_answer(store: Any, job: dict, **overrides: Any) -> dict:
    """The answer of one instance (``fan_out`` never) over ``store``."""
    answers = Answers()
    worker = Worker(settings(**overrides), Objects(store), answers)
    worker.handle_pubsub(job_message({**job, "fan_out": {"mode": "never"}}, "alone-1"), "alone-1")
    ((_, result),) = answers.sent
    return result


@contextlib.contextmanager
def firestore_emulator(log_dir: Path, *, timeout: float = 90.0) -> Iterator[Any]:
    """The Firestore emulator on a free port, with FIRESTORE_EMULATOR_HOST pointing at it meanwhile; yields its
    ``Service`` (``address``, ``process``)."""
    from worker.devstack.processes import Service, free_port
    from worker.devstack.stack import firestore_emulator_argv

    port = free_port()
    service = Service("firestore-emulator", [a.replace("{port}", str(port)) for a in firestore_emulator_argv()],
                      port=port, log_dir=log_dir)
    before = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = service.address
    service.start()
    try:
        service.wait_ready(timeout=timeout)
        yield service
    finally:
        service.stop()
        if before is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = before
