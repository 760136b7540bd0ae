"""Whole fanned-out runs in one process: a Worker over given run stores (in-memory doubles by default, or the real
adapters on the emulators), shard and merge messages delivered by the test in any order, as often as it likes.

Shared by the unit tests of fan-out and by the integration tests that run the same scenarios on the emulators.
"""

from __future__ import annotations

import base64
import io
import json
import random
import time

import pyarrow as pa
import pyarrow.parquet as pq

from tests.unit.support import MemoryBlobs, MemoryRuns, MemoryShardQueue, MemoryStore
from worker.config import Settings
from worker.fanout.coordinator import Stores
from worker.service import Worker

DLQ = "projects/p/topics/shards-dead-letter"
SHARDS = "projects/p/topics/shards"
SHARD_SOURCE = f"//pubsub.googleapis.com/{SHARDS}"


def parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


class Publisher:
    def __init__(self):
        self.sent: list[dict] = []

    def publish(self, result, topic=None):
        self.sent.append(json.loads(json.dumps(result)))
        return f"r-{len(self.sent)}"


def lake(n: int = 120, *, flat: bool = False) -> dict[str, bytes]:
    objects = {}
    for i in range(n):
        day = "all" if flat else f"day={i % 6}"
        table = pa.table({"id": pa.array([i * 10 + j for j in range(3)], pa.int64()),
                          "big": pa.array([2**60 + i, None, -(2**62)], pa.int64()),
                          "x": pa.array([float(i), float("nan") if i % 7 == 0 else 0.5, None]),
                          "s": pa.array([f"v{i}", "é", None])})
        objects[f"lake/{day}/part-{i:04d}.parquet"] = parquet(table)
    objects["lake/_SUCCESS"] = b""
    objects["lake/readme.txt"] = b"not parquet"
    objects["lake/day=1/broken.parquet"] = b"PAR1 this is not parquet PAR1"
    return objects


def make_worker(objects, *, stores: Stores | None = None, **overrides):
    """A Worker over ``objects`` (an in-memory S3), its stores (in-memory unless given) and its results."""
    given = {"fanout_min_objects": 25, "shard_objects": 9, "fanout_max_in_flight": 4} | overrides
    settings = Settings(role_arn="", audience="", reply_topic="projects/p/topics/results", partials_bucket="parts",
                        shard_topic=SHARDS, shard_dead_letter_topic=DLQ, **given)
    stores = stores or Stores(runs=MemoryRuns(), blobs=MemoryBlobs(), shards=MemoryShardQueue())
    publisher = Publisher()
    store = MemoryStore(objects)

    class Storage:
        def ensure_credentials(self):
            pass

        def objects(self, bucket, job_id):
            return store

    return Worker(settings, Storage(), publisher, stores), stores, publisher


def job_message(job: dict, message_id: str = "m-1") -> dict:
    return {"message": {"data": base64.b64encode(json.dumps(job).encode()).decode(), "messageId": message_id,
                        "attributes": {}}}


def work_message(kind: str, run_id: str, work_id: str, generation: int | None = None, **attributes: str) -> dict:
    """A message on the shard topic: a shard's (kind ``shard``) or a merge task's (``merge``)."""
    key = "shard_id" if kind == "shard" else "task_id"
    fields = {"kind": kind, "run_id": run_id, key: work_id}
    if generation is not None:
        fields["generation"] = str(generation)
    data = json.dumps(fields).encode()
    return {"message": {"data": base64.b64encode(data).decode(), "messageId": f"s-{work_id}",
                        "attributes": {**fields, **attributes}}}


def slow_fetches(monkeypatch, worker, seconds: float) -> None:
    """Every ranged read of the worker's (one, in-memory) store takes ``seconds`` longer: a slow S3."""
    store = worker.storage.objects("b", "j")
    fetch = store.fetch

    def slow(key, start, end):
        time.sleep(seconds)
        return fetch(key, start, end)

    monkeypatch.setattr(store, "fetch", slow)


def deliver(worker, message, *, dead: bool = False) -> None:
    source = f"//pubsub.googleapis.com/{DLQ if dead else SHARDS}"
    worker.handle_pubsub(work_message(*message), f"s-{message[2]}", source=source)


def deliver_all(worker, stores, rng: random.Random, *, duplicates: float = 0.0, dead: set[str] = frozenset(),
                 check_cap: bool = True) -> int:
    """Deliver every published message in random order (some twice); return the deliveries. With ``check_cap``, the
    shards dispatched at once never exceed the run's cap (deliveries here are one at a time: no concurrent commits
    to overshoot it)."""
    queue = stores.shards.messages
    delivered = 0
    while queue:
        message = queue.pop(rng.randrange(len(queue)))
        if rng.random() < duplicates:
            queue.append(message)
        deliver(worker, message, dead=message[2] in dead)
        delivered += 1
        run = stores.runs.get_run(message[1])
        if check_cap:
            assert stores.runs.count_shards(run.run_id, ["dispatched"]) <= run.max_in_flight
    return delivered


def alone(objects, job, **overrides) -> dict:
    """The answer of one instance (fan_out never) over ``objects``."""
    alone, _, out = make_worker(objects, **overrides)
    alone.handle_pubsub(job_message({**job, "fan_out": {"mode": "never"}}, "m-0"), "m-0")
    return out.sent[0]
