"""The fan-out adapters against the real stand-ins: runs and shards in the Firestore emulator, partials in
fake-gcs-server, shard messages on the Pub/Sub emulator."""

import itertools
import json
import threading
import time
import uuid

import pytest
from google.api_core import exceptions as google_errors

from worker.adapters.firestore import FirestoreRunStore
from worker.adapters.gcs import GcsBlobStore
from worker.adapters.pubsub import ShardPublisher
from worker.devstack.processes import free_port
from worker.devstack.stack import FIRESTORE_DATABASE, RUNS_COLLECTION
from worker.errors import ConfigError, NotFound, Retryable
from worker.fanout import decisions as d
from worker.fanout.records import (
    DISPATCHED,
    DONE,
    FAILED,
    QUEUED,
    Change,
    Lease,
    MergeTask,
    Reads,
    RunRecord,
    ShardRecord,
    shard_id_of,
    task_id_of,
)
from worker.tools.pubsub import pull_now


def new_run(max_in_flight: int = 50, **fields) -> RunRecord:
    job = json.dumps({"bucket": "b", "prefix": "p/", "attributes": {"__x__": "reserved in Firestore"}})
    return RunRecord(run_id=f"run-{uuid.uuid4().hex[:12]}", job_json=job, created_at=time.time(),
                     max_in_flight=max_in_flight, **fields)


def shards_of(run: RunRecord, bounds: list[str | None], state: str = QUEUED) -> list[ShardRecord]:
    """Shards covering consecutive ranges between ``bounds``."""
    return [ShardRecord(shard_id_of(run.run_id, start, stop), start, stop, state=state)
            for start, stop in itertools.pairwise(bounds)]


def test_a_run_is_created_once_with_its_shards(stack):
    store = stack.run_store()
    run = new_run()
    shards = shards_of(run, [None, "m", None])
    assert store.create_run(run, shards) is True
    assert store.create_run(run, shards_of(run, [None, None])) is False  # a redelivered job: nothing more
    assert store.get_run(run.run_id) == run
    assert [store.get_shard(run.run_id, s.shard_id) for s in shards] == shards
    assert len(list(store.shards(run.run_id))) == 2


def test_transact_reads_what_it_names_and_writes_what_decide_returns(stack):
    store = stack.run_store()
    run = new_run()
    shards = shards_of(run, [None, "m", None])
    store.create_run(run, shards)
    first = shards[0]
    seen = []

    def dispatch(view):
        seen.append(view)
        shard = view.shards[first.shard_id]
        shard.state = DISPATCHED
        return Change(shards=[shard], value="sent")

    assert store.transact(run.run_id, Reads(run=True, shards=(first.shard_id, "nope")), dispatch) == "sent"
    assert seen[-1].run == run and seen[-1].shards["nope"] is None
    assert store.get_shard(run.run_id, first.shard_id).state == DISPATCHED
    assert store.get_shard(run.run_id, shards[1].shard_id).state == QUEUED
    assert store.count_shards(run.run_id, [DISPATCHED]) == 1
    assert store.count_shards(run.run_id, [QUEUED, DISPATCHED]) == 2


def test_a_change_with_nothing_writes_nothing(stack):
    store = stack.run_store()
    run = new_run()
    assert store.transact(run.run_id, Reads(run=True, shards=("no-such-shard",)),
                          lambda view: Change(value=(view.run, view.shards))) == (None, {"no-such-shard": None})
    assert store.get_run(run.run_id) is None
    assert store.get_shard(run.run_id, "no-such-shard") is None


def test_decide_sees_queued_shards_from_a_random_place(stack):
    store = stack.run_store()
    run = new_run()
    bounds = [None, *[f"k{i:02d}" for i in range(1, 30)], None]
    shards = shards_of(run, bounds)
    for shard in shards[:3]:
        shard.state = DISPATCHED
    store.create_run(run, shards)
    queued_ids = {s.shard_id for s in shards if s.state == QUEUED}
    firsts = set()
    for _ in range(8):
        seen = store.transact(run.run_id, Reads(queued=4), lambda view: Change(value=view.queued))
        assert len(seen) == 4 and all(s.state == QUEUED and s.shard_id in queued_ids for s in seen)
        firsts.add(seen[0].shard_id)
    assert len(firsts) > 1  # not always the same first ones: concurrent commits mostly pick different shards


def test_documents_carry_an_expiry_for_the_ttl_policy(stack):
    from google.cloud import firestore

    store = stack.run_store()
    run = new_run()
    shard = shards_of(run, [None, None])[0]
    store.create_run(run, [shard])
    client = firestore.Client(project=stack.project, database=FIRESTORE_DATABASE)
    doc = client.collection(RUNS_COLLECTION).document(run.run_id).get().to_dict()
    assert doc["expire_at"].timestamp() > time.time() + 86400
    shard_doc = client.collection(RUNS_COLLECTION).document(run.run_id).collection("shards").document(
        shard.shard_id).get().to_dict()
    assert shard_doc["expire_at"].timestamp() > time.time() + 86400


def test_a_job_whose_attributes_are_reserved_field_names_is_stored(stack):
    """Firestore refuses a field named like ``__x__``: the job is one JSON string in the run's record."""
    store = stack.run_store()
    run = new_run()
    assert store.create_run(run, [])
    assert json.loads(store.get_run(run.run_id).job_json)["attributes"] == {"__x__": "reserved in Firestore"}


def test_merge_tasks_are_created_once_and_listed_by_level(stack):
    store = stack.run_store()
    run = new_run()
    store.create_run(run, [])
    tasks = d.plan_level(1, 1, [f"in-{i}" for i in range(7)], 3, time.time())
    store.create_tasks(run.run_id, tasks)
    done = tasks[0].copy()
    done.state, done.output = "done", "out-0"
    store.transact(run.run_id, Reads(tasks=(done.task_id,)), lambda view: Change(tasks=[done]))
    store.create_tasks(run.run_id, tasks)  # again: the done task stays done
    listed = list(store.tasks(run.run_id, 1, 1))
    assert [t.index for t in listed] == [0, 1, 2] and listed[0].state == "done" and listed[2].inputs == ["in-6"]
    assert store.open_tasks(run.run_id, 1, 1) == 2 and list(store.tasks(run.run_id, 1, 2)) == []
    assert store.get_task(run.run_id, task_id_of(1, 1, 1)).inputs == ["in-3", "in-4", "in-5"]
    assert isinstance(store.get_task(run.run_id, task_id_of(1, 1, 1)), MergeTask)


def test_runs_are_listed_by_state(stack):
    store = stack.run_store()
    merging = new_run(state="merging")
    answered = new_run(state="answered")
    store.create_run(merging, [])
    store.create_run(answered, [])
    found = {r.run_id for r in store.runs(["running", "merging"])}
    assert merging.run_id in found and answered.run_id not in found


def test_a_lease_goes_to_one_of_two_contending_deliveries(stack):
    """Two instances (threads with clients of their own) take one shard's lease at once: one gets it; the other
    finds it busy. On the emulator two overlapping transactions on one document stall until its lock timeout
    aborts one, which may then lose every attempt: that ``Retryable`` wrote nothing and is tried again, as a
    redelivery would."""
    run = new_run()
    (shard,) = shards_of(run, [None, None], state=DISPATCHED)
    stack.run_store().create_run(run, [shard])
    verdicts, retried = [], []

    def instance(token):
        store = FirestoreRunStore.from_settings(stack.project, FIRESTORE_DATABASE, RUNS_COLLECTION)
        try:
            while True:
                try:
                    verdicts.append(store.transact(run.run_id, Reads(shards=(shard.shard_id,)), d.lease_shard(
                        shard.shard_id, None, token, time.time(), 60)).verdict)
                    return
                except Retryable as e:
                    retried.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=instance, args=(f"t{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert sorted(verdicts) == ["busy", "leased"]
    record = stack.run_store().get_shard(run.run_id, shard.shard_id)
    assert record.attempts == 1 and record.lease.owner in ("t0", "t1") and isinstance(record.lease, Lease)
    assert all("contention" in e.message for e in retried)


def test_shards_stream_in_id_order_and_by_state(stack):
    store = stack.run_store()
    run = new_run()
    bounds = [None, *[f"key-{i:04d}" for i in range(1, 700)], None]  # 700 shards: more than one page
    shards = shards_of(run, bounds)
    for i, shard in enumerate(shards):
        shard.state = (DONE, QUEUED, FAILED)[i % 3]
    store.create_run(run, shards[:400])  # at most 500 writes per batch
    store.transact(run.run_id, Reads(), lambda view: Change(shards=shards[400:]))

    listed = list(store.shards(run.run_id))
    assert [s.shard_id for s in listed] == sorted(s.shard_id for s in shards)
    assert sorted(listed, key=lambda s: s.shard_id) == sorted(shards, key=lambda s: s.shard_id)
    done = list(store.shards(run.run_id, DONE))
    assert [s.shard_id for s in done] == sorted(s.shard_id for s in shards if s.state == DONE)
    assert list(store.shards(run.run_id, DISPATCHED)) == []
    assert list(store.shards("no-such-run")) == []
    assert store.count_shards(run.run_id, [QUEUED]) == len([s for s in shards if s.state == QUEUED])


def test_put_once_keeps_the_first_blob(stack):
    blobs = stack.blob_store()
    name = f"run-{uuid.uuid4().hex[:8]}/shard/digest.partial"
    assert blobs.put_once(name, b"first") is True
    assert blobs.put_once(name, b"second") is False
    assert blobs.get(name) == b"first"


def test_get_of_a_missing_blob_is_not_found(stack):
    with pytest.raises(NotFound, match="does not exist"):
        stack.blob_store().get(f"run-{uuid.uuid4().hex[:8]}/nothing.partial")


def test_shard_messages_carry_run_and_shard(stack):
    topic_id = f"shards-{uuid.uuid4().hex[:8]}"
    topic = f"projects/{stack.project}/topics/{topic_id}"
    subscription = f"projects/{stack.project}/subscriptions/{topic_id}-pull"
    stack.publisher.create_topic(name=topic)
    stack.subscriber.create_subscription(request={"name": subscription, "topic": topic})
    ShardPublisher(topic).publish_shards("run-1", [("s-a", 1), ("s-b", 2), ("s-c", 1)])
    ShardPublisher(topic).publish_tasks("run-1", ["0001-01-0000000"])

    received, deadline = [], time.monotonic() + 30
    while len(received) < 4 and time.monotonic() < deadline:
        received += pull_now(stack.subscriber, subscription, wait_s=1.0)
    messages = sorted(((json.loads(m.message.data), dict(m.message.attributes)) for m in received),
                      key=lambda m: m[0].get("shard_id", ""))
    # the generation: a copy of an older dispatch (dead-lettered or not) is known for stale
    shards = [{"kind": "shard", "run_id": "run-1", "shard_id": s, "generation": g}
              for s, g in (("s-a", "1"), ("s-b", "2"), ("s-c", "1"))]
    task = {"kind": "merge", "run_id": "run-1", "task_id": "0001-01-0000000"}
    assert messages == [(task, task), *[(m, m) for m in shards]]


def test_publishing_to_a_missing_shard_topic_is_retryable(stack):
    with pytest.raises(Retryable, match=r"SHARD_TOPIC .* does not exist"):
        ShardPublisher(f"projects/{stack.project}/topics/never-made").publish_shards("run-1", [("s-a", 1)])


def test_firestore_down_is_retryable(stack, monkeypatch):
    """A store whose Firestore does not answer (nothing listens where it was): reads give up within their
    timeout as Retryable. (A transaction's begin keeps the client's own retry of about a minute, too long to
    wait for here.)"""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # read when the client is built
    store = FirestoreRunStore.from_settings(stack.project, FIRESTORE_DATABASE, RUNS_COLLECTION, timeout=2.0)
    started = time.monotonic()
    with pytest.raises(Retryable, match="Firestore failed during reading run"):
        store.get_run("some-run")
    with pytest.raises(Retryable):
        list(store.shards("some-run"))
    with pytest.raises(Retryable):
        store.count_shards("some-run", [QUEUED])
    assert time.monotonic() - started < 20
    store.close()


def test_storage_down_is_retryable(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    blobs = GcsBlobStore.from_settings("demo-project", "partials", timeout=1.0)
    with pytest.raises(Retryable, match=r"Cloud Storage failed writing gs://partials/x\.partial"):
        blobs.put_once("x.partial", b"data")
    with pytest.raises(Retryable, match="Cloud Storage failed reading"):
        blobs.get("x.partial")


class _Refusing:
    """A client stand-in whose every document read is refused (the emulator cannot deny the harness)."""

    project, _database_string = "p", "projects/p/databases/(default)"

    def collection(self, name):
        return self

    def document(self, name):
        return self

    def get(self, **options):
        raise google_errors.PermissionDenied("Missing or insufficient permissions.")


def test_permission_denied_is_a_config_error():
    with pytest.raises(ConfigError, match=r"may not use Firestore database projects/p/databases/\(default\)"):
        FirestoreRunStore(_Refusing(), RUNS_COLLECTION).get_run("run-1")


def test_queued_shards_claimed_at_once_by_many_go_to_one_each_without_locks(stack):
    """Commits passing slots at the same moment: each queued shard is dispatched once (a write with a
    last-update-time precondition fails for the one that read it second), and none waits on another's lock."""
    run = new_run()
    shards = shards_of(run, [None, *[f"k{i:02d}" for i in range(1, 12)], None])
    stack.run_store().create_run(run, shards)
    claimed, barrier = [], threading.Barrier(6)

    def instance():
        store = FirestoreRunStore.from_settings(stack.project, FIRESTORE_DATABASE, RUNS_COLLECTION)
        try:
            barrier.wait()
            claimed.extend(store.claim_queued(run.run_id, 3, d.claim(time.time())))
        finally:
            store.close()

    started = time.monotonic()
    threads = [threading.Thread(target=instance) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ids = [s.shard_id for s in claimed]
    assert len(ids) == len(set(ids)) <= 12  # no shard dispatched twice
    assert len(ids) >= 6  # most claims found a shard (18 asked, 12 there)
    assert all(s.generation == 1 for s in claimed)
    assert stack.run_store().count_shards(run.run_id, [DISPATCHED]) == len(ids)
    assert time.monotonic() - started < 30
