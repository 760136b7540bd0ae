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
from worker.runs import DISPATCHED, DONE, FAILED, QUEUED, Change, RunRecord, ShardRecord, shard_id_of
from worker.tools.pubsub import pull_now


def new_run(max_in_flight: int = 50, **fields) -> RunRecord:
    return RunRecord(run_id=f"run-{uuid.uuid4().hex[:12]}", job={"bucket": "b", "prefix": "p/"},
                     created_at=time.time(), max_in_flight=max_in_flight, **fields)


def shards_of(run: RunRecord, bounds: list[str | None], state: str = QUEUED) -> list[ShardRecord]:
    """Shards covering consecutive ranges between ``bounds``."""
    return [ShardRecord(shard_id_of(run.run_id, start, stop), start, stop, state=state)
            for start, stop in itertools.pairwise(bounds)]


def create(store: FirestoreRunStore, run: RunRecord, shards: list[ShardRecord]) -> None:
    run.shards_total = run.shards_open = len(shards)
    store.transact(run.run_id, None, lambda r, s, q: Change(run=run, shards=shards))


def test_transact_creates_then_updates(stack):
    store = stack.run_store()
    run = new_run()
    shards = shards_of(run, [None, "m", None])
    seen = []

    def open_run(r, s, queued):
        seen.append((r, s, queued))
        return Change(run=run, shards=shards, value="opened")

    assert store.transact(run.run_id, None, open_run) == "opened"
    assert seen == [(None, None, [])]
    assert store.get_run(run.run_id) == run
    assert [store.get_shard(run.run_id, s.shard_id) for s in shards] == shards

    first = shards[0]

    def dispatch(r, s, queued):
        assert (r, s) == (run, first)
        r.in_flight += 1
        s.state = DISPATCHED
        return Change(run=r, shards=[s], value=r.in_flight)

    assert store.transact(run.run_id, first.shard_id, dispatch) == 1
    assert store.get_run(run.run_id).in_flight == 1
    assert store.get_shard(run.run_id, first.shard_id).state == DISPATCHED
    assert store.get_shard(run.run_id, shards[1].shard_id).state == QUEUED


def test_a_change_with_nothing_writes_nothing(stack):
    store = stack.run_store()
    run = new_run()
    assert store.transact(run.run_id, "no-such-shard", lambda r, s, q: Change(value=(r, s, q))) == (None, None, [])
    assert store.get_run(run.run_id) is None
    assert store.get_shard(run.run_id, "no-such-shard") is None


def test_decide_sees_queued_shards_up_to_the_cap(stack):
    store = stack.run_store()
    run = new_run(max_in_flight=5, in_flight=2)
    bounds = [None, *[f"k{i:02d}" for i in range(1, 10)], None]
    shards = shards_of(run, bounds)
    for shard in shards[:3]:
        shard.state = DISPATCHED
    create(store, run, shards)
    queued_ids = {s.shard_id for s in shards if s.state == QUEUED}

    seen = store.transact(run.run_id, None, lambda r, s, queued: Change(value=queued))
    assert len(seen) == 4  # max_in_flight 5 - in_flight 2, and one for the slot a commit may free: of the 7 queued
    assert all(s.state == QUEUED and s.shard_id in queued_ids for s in seen)
    assert [s.shard_id for s in seen] == sorted(s.shard_id for s in seen)

    def fill(r, s, queued):
        r.in_flight = r.max_in_flight
        return Change(run=r)

    store.transact(run.run_id, None, fill)
    assert len(store.transact(run.run_id, None, lambda r, s, queued: Change(value=queued))) == 1  # the freed slot


def test_concurrent_increments_each_count_once(stack):
    """Two instances (threads with clients of their own) commit 6 increments of one run at once. On the emulator
    two overlapping transactions on one document deadlock until its 10 s lock timeout aborts one, and a transaction
    can lose every attempt: that ``Retryable`` wrote nothing, so the caller runs it again (as a redelivery would)."""
    run = new_run()
    create(stack.run_store(), run, [])
    per_thread, calls, values, retried = 3, [], [], []

    def increment(r, s, queued):
        calls.append(1)
        r.shards_done += 1
        return Change(run=r, value=r.shards_done)

    def instance():
        store = FirestoreRunStore.from_settings(stack.project, FIRESTORE_DATABASE, RUNS_COLLECTION)
        try:
            for _ in range(per_thread):
                while True:
                    try:
                        values.append(store.transact(run.run_id, None, increment))
                        break
                    except Retryable as e:
                        retried.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=instance) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert stack.run_store().get_run(run.run_id).shards_done == 2 * per_thread
    assert sorted(values) == list(range(1, 2 * per_thread + 1))  # each commit saw the one before it
    assert len(calls) >= 2 * per_thread + len(retried)  # decide runs again for each retried attempt
    assert all("contention" in e.message for e in retried)


def test_shards_stream_in_id_order_and_by_state(stack):
    store = stack.run_store()
    run = new_run()
    bounds = [None, *[f"key-{i:04d}" for i in range(1, 700)], None]  # 700 shards: more than one page
    shards = shards_of(run, bounds)
    for i, shard in enumerate(shards):
        shard.state = (DONE, QUEUED, FAILED)[i % 3]
    create(store, run, shards[:400])  # at most 500 writes per transaction
    store.transact(run.run_id, None, lambda r, s, q: Change(shards=shards[400:]))

    listed = list(store.shards(run.run_id))
    assert [s.shard_id for s in listed] == sorted(s.shard_id for s in shards)
    assert sorted(listed, key=lambda s: s.shard_id) == sorted(shards, key=lambda s: s.shard_id)
    done = list(store.shards(run.run_id, DONE))
    assert [s.shard_id for s in done] == sorted(s.shard_id for s in shards if s.state == DONE)
    assert list(store.shards(run.run_id, DISPATCHED)) == []
    assert list(store.shards("no-such-run")) == []


def test_note_attempt_counts_on_the_shard_only(stack):
    store = stack.run_store()
    run = new_run()
    shard = shards_of(run, [None, None])[0]
    create(store, run, [shard])
    store.note_attempt(run.run_id, shard.shard_id)
    store.note_attempt(run.run_id, shard.shard_id)
    assert store.get_shard(run.run_id, shard.shard_id).attempts == 2
    assert store.get_run(run.run_id) == run
    with pytest.raises(NotFound, match="no-such-shard"):
        store.note_attempt(run.run_id, "no-such-shard")


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
    before = time.time()
    ShardPublisher(topic).publish_shards("run-1", ["s-a", "s-b", "s-c"])
    after = time.time()

    received, deadline = [], time.monotonic() + 30
    while len(received) < 3 and time.monotonic() < deadline:
        received += pull_now(stack.subscriber, subscription, wait_s=1.0)
    messages = sorted(((json.loads(m.message.data), dict(m.message.attributes)) for m in received),
                      key=lambda m: m[0]["shard_id"])
    # sent_at: when the copy was sent (a dead-lettered copy keeps it, so a late one from before a redrive is known)
    sent = {float(attributes.pop("sent_at")) for _, attributes in messages}
    assert len(sent) == 1 and before - 0.001 <= sent.pop() <= after + 0.001
    assert messages == [({"run_id": "run-1", "shard_id": s}, {"kind": "shard", "run_id": "run-1", "shard_id": s})
                        for s in ("s-a", "s-b", "s-c")]


def test_publishing_to_a_missing_shard_topic_is_retryable(stack):
    with pytest.raises(Retryable, match=r"SHARD_TOPIC .* does not exist"):
        ShardPublisher(f"projects/{stack.project}/topics/never-made").publish_shards("run-1", ["s-a"])


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
        store.note_attempt("some-run", "some-shard")
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
