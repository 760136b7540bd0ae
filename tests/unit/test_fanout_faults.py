"""Fan-out under the faults the real services show (issue 18) and those found in review (issue 12).

Each test names the behaviour it holds; where a real service does something the in-memory doubles do not, the test
makes it happen (a request that runs on after its lease, a message dead-lettered twice, a lost message). The
doubles and helpers are those of tests/unit/test_fanout.py.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time

import pytest

from tests.unit.runs_support import deliver, deliver_all, job_message, lake, make_worker, slow_fetches
from tests.unit.support import MemoryShardQueue
from worker.errors import Retryable, Unavailable
from worker.fanout.records import ANSWERED, DONE, FAILED, MERGING, OPEN, RunRecord, ShardRecord

JOB = {"bucket": "bkt", "prefix": "lake/"}


@pytest.fixture
def stores():
    """The run's stores: None, so in-memory ones. tests/integration/test_fanout_faults_on_emulators.py runs the tests
    that take this fixture again on Firestore (with Firestore's contention, by a fault layer) and Cloud Storage."""
    return None


class _Everything(set):
    def __contains__(self, item):
        return True


def _deliver_with_retries(worker, stores, rng, *, attempts=50):
    """Deliver every message; one that raises goes back to the queue (Pub/Sub redelivers a 500)."""
    queue = stores.shards.messages
    for _ in range(10_000):
        if not queue or attempts == 0:
            return
        message = queue.pop(rng.randrange(len(queue)))
        try:
            deliver(worker, message)
        except Exception:  # noqa: BLE001 - redelivered, as Pub/Sub does for any 500
            attempts -= 1
            queue.append(message)


def _until_one_shard_open(worker, stores) -> tuple:
    """Deliver shard messages until the run has one open shard; returns that shard's message (not delivered)."""
    queue = stores.shards.messages
    while True:
        message = queue.pop(0)
        if stores.runs.count_shards("m-1", list(OPEN)) == 1 and not queue:
            return message
        deliver(worker, message)


class _Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


# -- liveness by lease ---------------------------------------------------------------------------------------


def test_a_merge_that_outlives_its_lease_publishes_nothing_once_another_delivery_answered(monkeypatch, stores):
    """Cloud Run lets a request run on after its timeout (and throttles its CPU), so a merge can outlive its lease
    while a redelivery takes over. Before leases a second delivery presumed the first dead after a timeout and
    both published. Now the late holder's publish is fenced by its token: one answer."""
    worker, stores, out = make_worker(lake(40), lease_seconds=60, stores=stores)
    clock = worker.coordinator.clock = _Clock()
    worker.handle_pubsub(job_message(JOB), "m-1")
    closing = _until_one_shard_open(worker, stores)
    first_holder_waits, first_holder_in = threading.Event(), threading.Event()
    real_get, calls = stores.blobs.get, []

    def get(name, **options):
        calls.append(name)
        if len(calls) == 1:  # the first holder stalls in its merge (CPU throttled after its request timed out)
            first_holder_in.set()
            first_holder_waits.wait(10)
        return real_get(name, **options)

    monkeypatch.setattr(stores.blobs, "get", get)
    first = threading.Thread(target=deliver, args=(worker, closing))
    first.start()
    assert first_holder_in.wait(10)
    assert stores.runs.get_run("m-1").state == MERGING
    clock.t += 61  # its lease (60 s, no renewal made meanwhile) has expired
    deliver(worker, closing)  # Pub/Sub redelivers the closing shard's message: it takes the merge over
    assert len(out.sent) == 1 and stores.runs.get_run("m-1").state == ANSWERED
    first_holder_waits.set()
    first.join(10)
    assert len(out.sent) == 1


def test_a_delivery_that_outlived_its_shard_lease_records_nothing_and_the_new_holder_reads_once(monkeypatch, stores):
    worker, stores, out = make_worker(lake(40), lease_seconds=60, stores=stores)
    clock = worker.coordinator.clock = _Clock()
    worker.handle_pubsub(job_message(JOB), "m-1")
    message = stores.shards.messages.pop(0)
    stalled, go = threading.Event(), threading.Event()
    store = worker.storage.objects("b", "j")
    real_fetch = store.fetch

    def fetch(key, start, end):
        if not stalled.is_set():  # the first delivery's first read stalls
            stalled.set()
            go.wait(10)
        return real_fetch(key, start, end)

    monkeypatch.setattr(store, "fetch", fetch)
    first = threading.Thread(target=deliver, args=(worker, message))
    first.start()
    assert stalled.wait(10)
    clock.t += 61
    deliver(worker, message)  # the redelivery takes the expired lease and reads the range
    done = stores.runs.get_shard("m-1", message[2])
    assert done.state == DONE and done.attempts == 2
    go.set()
    first.join(10)
    assert stores.runs.get_shard("m-1", message[2]).to_doc() == done.to_doc()  # the late holder changed nothing
    deliver_all(worker, stores, random.Random(1))
    assert len(out.sent) == 1 and out.sent[0]["files"] == 40


def test_a_copy_that_comes_while_another_delivery_holds_the_lease_comes_back_later_and_reads_nothing(
        monkeypatch, stores):
    """The holder may be alive or killed (its lease then runs out within LEASE_SECONDS): the copy is told to come
    back later, takes no attempt at the shard, and its dead-lettered twin changes nothing."""
    worker, stores, out = make_worker(lake(40), stores=stores)
    worker.handle_pubsub(job_message(JOB), "m-1")
    message = stores.shards.messages.pop(0)
    inside, go = threading.Event(), threading.Event()
    store = worker.storage.objects("b", "j")
    real_fetch = store.fetch

    def fetch(key, start, end):
        inside.set()
        go.wait(10)
        return real_fetch(key, start, end)

    monkeypatch.setattr(store, "fetch", fetch)
    first = threading.Thread(target=deliver, args=(worker, message))
    first.start()
    assert inside.wait(10)
    with pytest.raises(Unavailable, match="held by another delivery"):
        deliver(worker, message)
    with pytest.raises(Unavailable, match="which a delivery holds"):  # its dead-lettered twin: later, too
        deliver(worker, message, dead=True)
    assert stores.runs.get_shard("m-1", message[2]).attempts == 1
    go.set()
    first.join(10)
    assert stores.runs.get_shard("m-1", message[2]).state == DONE
    deliver_all(worker, stores, random.Random(2))
    assert len(out.sent) == 1 and out.sent[0]["status"] == "ok"


# -- stale copies ---------------------------------------------------------------------------------------------


def test_a_dead_letter_copy_from_before_a_redrive_does_not_fail_the_redriven_range(stores):
    """Pub/Sub may dead-letter the same message more than once (best effort): a copy from the shard's earlier
    dispatch carries its generation, which the redrive's dispatch has passed, so it is recognised and dropped."""
    worker, stores, out = make_worker(lake(80), stores=stores)
    worker.handle_pubsub(job_message(JOB), "m-1")
    victim = stores.shards.messages[0]
    deliver_all(worker, stores, random.Random(11), dead={victim[2]})
    assert out.sent[0]["error"]["code"] == "incomplete"
    worker.coordinator.redrive("m-1")
    deliver(worker, victim, dead=True)  # the old generation's copy, dead-lettered again
    assert stores.runs.get_shard("m-1", victim[2]).state == "dispatched"
    current = next(m for m in stores.shards.messages if m[2] == victim[2])
    assert current[3] > victim[3]
    deliver_all(worker, stores, random.Random(12))
    assert out.sent[-1]["status"] == "ok" and out.sent[-1]["fanout"]["answer"] == 2


def test_a_shard_dead_lettered_with_no_failed_read_of_its_own_is_sent_again_not_failed(stores):
    """Its attempts went on 429s (Cloud Run had no instance), busy leases or contention: the range did nothing wrong.
    It is sent again as a new generation, up to 3 times; only a range whose reads failed, or that keeps being
    dead-lettered, is failed."""
    worker, stores, out = make_worker(lake(80), stores=stores)
    worker.handle_pubsub(job_message(JOB), "m-1")
    victim = stores.shards.messages.pop(0)
    deliver(worker, victim, dead=True)
    shard = stores.runs.get_shard("m-1", victim[2])
    assert shard.state == "dispatched" and shard.generation == victim[3] + 1 and shard.republished == 1
    assert ("shard", "m-1", victim[2], victim[3] + 1) in stores.shards.messages
    deliver_all(worker, stores, random.Random(13))
    assert out.sent[0]["status"] == "ok" and out.sent[0]["files"] == 80


def test_a_redelivered_parent_publishes_its_children_only_if_they_may_never_have_been(stores):
    worker, stores, out = make_worker(lake(80, flat=True), shard_objects=5, fanout_min_objects=1, stores=stores)
    worker.handle_pubsub(job_message({**JOB, "prefix": "lake/all/", "fan_out": {"mode": "always"}}), "m-1")
    (parent,) = stores.shards.messages
    deliver(worker, parent)
    children = [m for m in stores.shards.messages if m[2] != parent[2]]
    assert children
    for _ in range(3):  # the parent's message, delivered again (Pub/Sub's at-least-once)
        deliver(worker, parent)
    for child in children:
        assert stores.shards.messages.count(child) == 1
    deliver_all(worker, stores, random.Random(3))
    assert len(out.sent) == 1 and out.sent[0]["files"] == 80


def test_a_hand_off_whose_publish_failed_is_published_by_the_redelivery():
    worker, stores, out = make_worker(lake(80), shard_objects=5)
    worker.handle_pubsub(job_message(JOB), "m-1")
    queue = stores.shards
    failed = {"n": 0}

    class Flaky:
        def publish_shards(self, run_id, shards):
            if failed["n"] < 3 and any(stores.runs.get_shard(run_id, s).attempts == 0 and
                                       stores.runs.get_shard(run_id, s).shard_id not in
                                       {m[2] for m in queue.messages} for s, _ in shards):
                failed["n"] += 1
                raise Unavailable("Pub/Sub unavailable")
            queue.publish_shards(run_id, shards)

        def publish_tasks(self, run_id, task_ids):
            queue.publish_tasks(run_id, task_ids)

        @property
        def messages(self):
            return queue.messages

    stores.shards = Flaky()
    _deliver_with_retries(worker, stores, random.Random(3))
    assert failed["n"], "no publish failed"
    assert stores.runs.get_run("m-1").state == ANSWERED and len(out.sent) == 1 and out.sent[0]["files"] == 120 - 40


# -- every run ends ---------------------------------------------------------------------------------------------


def test_a_bug_while_building_the_answer_answers_internal_with_an_incident(monkeypatch, stores):
    worker, stores, out = make_worker(lake(40), stores=stores)
    worker.handle_pubsub(job_message(JOB), "m-1")

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(worker, "answer_of", broken)
    deliver_all(worker, stores, random.Random(4))
    (result,) = out.sent
    assert result["error"]["code"] == "internal" and result["error"]["details"]["incident_id"]
    assert result["fanout"]["run_id"] == "m-1" and stores.runs.get_run("m-1").state == ANSWERED


def test_a_run_whose_messages_are_all_lost_is_found_by_the_sweeper_and_answers(stores):
    worker, stores, out = make_worker(lake(60), sweep_stall_seconds=600, stores=stores)
    clock = worker.coordinator.clock = _Clock()
    worker.handle_pubsub(job_message(JOB), "m-1")
    stores.shards.messages.clear()  # every message for the run lost
    assert worker.coordinator.sweep()["republished"] == 0  # too soon: they may be waiting in Pub/Sub
    clock.t += 601
    report = worker.coordinator.sweep()
    assert report["republished"] == 4  # the cap's worth, each a new generation
    deliver_all(worker, stores, random.Random(5))
    assert len(out.sent) == 1 and out.sent[0]["status"] == "ok" and out.sent[0]["files"] == 60


def test_a_range_whose_every_republication_is_lost_fails_and_the_run_answers():
    worker, stores, out = make_worker(lake(60), sweep_stall_seconds=600)
    clock = worker.coordinator.clock = _Clock()
    worker.handle_pubsub(job_message(JOB), "m-1")
    victim = stores.shards.messages[0][2]
    for _ in range(6):
        stores.shards.messages[:] = [m for m in stores.shards.messages if m[2] != victim]
        deliver_all(worker, stores, random.Random(6))
        clock.t += 601
        worker.coordinator.sweep()
    (result,) = out.sent
    assert result["error"]["code"] == "incomplete"
    assert "no delivery made progress" in result["fanout"]["failed_ranges"][0]["error"]


def test_a_run_left_merging_by_a_dead_holder_is_answered_by_the_sweeper(monkeypatch, stores):
    worker, stores, out = make_worker(lake(40), lease_seconds=60, stores=stores)
    clock = worker.coordinator.clock = _Clock()
    worker.handle_pubsub(job_message(JOB), "m-1")
    closing = _until_one_shard_open(worker, stores)
    real = worker.coordinator._answer

    def dies(*args, **kwargs):
        raise SystemExit  # the instance is killed while merging: nothing is released

    monkeypatch.setattr(worker.coordinator, "_answer", dies)
    with pytest.raises(SystemExit):
        deliver(worker, closing)
    monkeypatch.setattr(worker.coordinator, "_answer", real)
    assert stores.runs.get_run("m-1").state == MERGING and out.sent == []
    worker.coordinator.sweep()
    assert out.sent == []  # its lease is live: it may be at work
    clock.t += 61
    worker.coordinator.sweep()
    assert len(out.sent) == 1 and out.sent[0]["status"] == "ok"


# -- no hot document --------------------------------------------------------------------------------------------


def test_no_document_is_written_more_often_as_the_run_grows():
    """Firestore sustains about one write per second per document: the run's record is written a fixed number of
    times (open, claim, level, answer) however many shards finish, and each shard's a fixed number."""
    writes = {}
    for n in (60, 240):
        worker, stores, out = make_worker(lake(n), shard_objects=3, merge_fan_in=8, fanout_max_in_flight=10)
        worker.handle_pubsub(job_message(JOB), "m-1")
        deliver_all(worker, stores, random.Random(7), duplicates=0.1)
        assert len(out.sent) == 1 and out.sent[0]["files"] == n
        shards = len(list(stores.runs.shards("m-1")))
        run_writes = stores.runs.writes["m-1"]
        most = max(v for k, v in stores.runs.writes.items() if k != "m-1")
        writes[n] = (shards, run_writes, most)
    (small, run_small, _), (large, run_large, most_large) = writes[60], writes[240]
    assert large > 3 * small
    assert run_large <= run_small + 2  # one more merge level at most
    assert run_large <= 8 and most_large <= 8, writes


# -- store-safe records ----------------------------------------------------------------------------------------


def test_a_run_record_holds_the_job_as_one_string_so_no_user_key_becomes_a_field_name():
    from worker.fanout.coordinator import job_json, job_of
    from worker.jobs import parse_job

    job = parse_job(json.dumps({**JOB, "reply_attributes": {"__x__": "1", "a.b": "2"}}).encode(),
                    message_id="m-1", attributes={"__y__": "z"})
    record = RunRecord(run_id="m-1", job_json=job_json(job), created_at=0.0, max_in_flight=1)

    def names(doc, path=()):
        for key, value in doc.items():
            yield (*path, key)
            if isinstance(value, dict):
                yield from names(value, (*path, key))

    assert not any(part.startswith("__") for name in names(record.to_doc()) for part in name)
    assert job_of(record.job_json) == job


# -- the merge must answer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "other_version"])
def test_a_run_answers_even_when_a_partial_cannot_be_read_at_merge_time(damage):
    worker, stores, out = make_worker(lake(40))
    worker.handle_pubsub(job_message(JOB), "m-1")
    closing = _until_one_shard_open(worker, stores)
    name = sorted(stores.blobs.blobs)[0]
    if damage == "deleted":
        del stores.blobs.blobs[name]
    else:
        data = stores.blobs.blobs[name]
        stores.blobs.blobs[name] = data[:4] + bytes([data[4] + 1]) + data[5:]
    deliver(worker, closing)
    (result,) = out.sent
    assert result["error"]["code"] == "incomplete" and "partial summary lost" in str(result["fanout"])
    assert result["fanout"]["failed"] == 1 and result["fanout"]["objects_failed"] > 0


def test_a_run_whose_ranges_all_failed_does_not_answer_that_the_prefix_has_no_parquet(stores):
    worker, stores, out = make_worker(lake(80), stores=stores)
    worker.handle_pubsub(job_message({**JOB, "fan_out": {"tolerated_failure_percent": 100}}), "m-1")
    deliver_all(worker, stores, random.Random(8), dead=_Everything())
    (result,) = out.sent
    assert result["status"] == "error" and result["error"]["code"] == "incomplete", result["error"]


def test_a_delivery_that_found_its_shard_done_never_records_it_done_without_a_partial():
    from worker.fanout import decisions as d
    from worker.fanout.records import View

    shard = ShardRecord("s", None, None, state="dispatched", generation=1)
    leased = d.lease_shard("s", 1, "t", 0.0, 60)(View(shards={"s": shard})).value.shard
    change = d.finish("r", "s", d.Outcome(DONE), 1.0, 0, token="t")(View(shards={"s": leased}))
    assert not change.shards and change.value.why == "stale range"


# -- cap -------------------------------------------------------------------------------------------------------


def test_a_run_capped_at_one_shard_in_flight_finishes():
    worker, stores, out = make_worker(lake(60))
    worker.handle_pubsub(job_message({**JOB, "fan_out": {"max_in_flight": 1}}), "m-1")
    deliver_all(worker, stores, random.Random(1))
    assert stores.runs.get_run("m-1").state == ANSWERED and len(out.sent) == 1
    assert stores.runs.count_shards("m-1", list(OPEN)) == 0


def test_a_cap_lowered_to_one_while_shards_are_in_flight_lets_the_run_finish():
    worker, stores, out = make_worker(lake(60))
    worker.handle_pubsub(job_message(JOB), "m-1")
    worker.coordinator.set_cap("m-1", 1)
    deliver_all(worker, stores, random.Random(2), check_cap=False)
    assert stores.runs.get_run("m-1").state == ANSWERED and len(out.sent) == 1


# -- redrive -------------------------------------------------------------------------------------------------


def test_a_redrive_whose_publish_failed_can_be_run_again():
    worker, stores, out = make_worker(lake(80))
    worker.handle_pubsub(job_message(JOB), "m-1")
    victim = stores.shards.messages[0][2]
    deliver_all(worker, stores, random.Random(4), dead={victim})
    assert out.sent[0]["error"]["code"] == "incomplete"
    queue = stores.shards

    class Down:
        def publish_shards(self, run_id, shards):
            raise Unavailable("Pub/Sub unavailable")

    stores.shards = Down()
    with pytest.raises(Retryable):
        worker.coordinator.redrive("m-1")
    stores.shards = queue
    worker.coordinator.redrive("m-1")  # the operator tries again
    deliver_all(worker, stores, random.Random(5))
    assert len(out.sent) == 2 and out.sent[1]["status"] == "ok"


def test_a_redrive_of_two_failed_ranges_answers_once():
    worker, stores, out = make_worker(lake(80))
    worker.handle_pubsub(job_message(JOB), "m-1")
    victims = {stores.shards.messages[0][2], stores.shards.messages[1][2]}
    deliver_all(worker, stores, random.Random(6), dead=victims)
    assert len(out.sent) == 1 and out.sent[0]["fanout"]["failed"] == 2

    class Immediate(MemoryShardQueue):  # each message is delivered as soon as it is published
        def publish_shards(self, run_id, shards):
            for shard_id, generation in shards:
                deliver(worker, ("shard", run_id, shard_id, generation))

    stores.shards = Immediate()
    assert sorted(worker.coordinator.redrive("m-1")) == sorted(victims)
    assert [r["fanout"]["answer"] for r in out.sent] == [1, 2] and out.sent[1]["status"] == "ok"


# -- messages -------------------------------------------------------------------------------------------------


def _spoof(data: dict, attributes: dict, message_id: str) -> dict:
    return {"message": {"data": base64.b64encode(json.dumps(data).encode()).decode(), "messageId": message_id,
                        "attributes": attributes}}


def test_a_job_message_cannot_fail_a_shard_of_another_run_by_posing_as_a_dead_letter():
    """Only messages whose source is SHARD_TOPIC / SHARD_DEAD_LETTER_TOPIC are run work."""
    worker, stores, _ = make_worker(lake(60))
    worker.handle_pubsub(job_message(JOB), "m-1")
    _, run_id, shard_id, _ = stores.shards.messages[0]
    attributes = {"kind": "shard", "run_id": run_id, "shard_id": shard_id,
                  "CloudPubSubDeadLetterSourceDeliveryCount": "5"}
    worker.handle_pubsub(_spoof(JOB, attributes, "m-evil"), "m-evil",
                         source="//pubsub.googleapis.com/projects/p/topics/jobs")
    assert stores.runs.get_shard(run_id, shard_id).state != FAILED


def test_a_job_message_with_shard_like_attributes_is_answered():
    worker, _, out = make_worker(lake(10))
    attributes = {"kind": "shard", "run_id": "nope", "shard_id": "nope"}
    worker.handle_pubsub(_spoof(JOB, attributes, "m-2"), "m-2", source="//pubsub.googleapis.com/projects/p/topics/jobs")
    assert len(out.sent) == 1


# -- the answer's size ------------------------------------------------------------


def test_an_incomplete_answer_with_100_long_failed_ranges_fits_result_max_bytes():
    from worker.fanout.coordinator import job_json
    from worker.fanout.records import Lease
    from worker.jobs import parse_job

    worker, stores, out = make_worker({}, result_max_bytes=100_000)
    runs = stores.runs
    run = RunRecord(run_id="m-9", job_json=job_json(parse_job(json.dumps(JOB).encode(), message_id="m-9")),
                    created_at=time.time(), max_in_flight=5, state=MERGING, lease=Lease("tok", time.time() + 60))
    runs.run_docs["m-9"] = run.to_doc()
    for i in range(100):
        start, stop = f"lake/{i:04d}" + "a" * 1019, f"lake/{i:04d}" + "b" * 1019
        shard = ShardRecord(f"s{i:03d}", start, stop, state=FAILED, error="dead-lettered after 5 attempt(s)")
        runs.shard_docs[("m-9", shard.shard_id)] = shard.to_doc()
    worker.coordinator._build(run, "tok")
    (result,) = out.sent
    assert result["status"] == "error" and result["error"]["code"] == "incomplete"
    assert result["fanout"]["failed"] == 100


# -- full-mode shards and the instance's full-mode turns ---------------------------------------------------


def test_full_mode_shards_take_turns_like_full_mode_jobs(monkeypatch):
    import worker.profile as profile

    real = profile.profile_object
    active, most, lock = [0], [0], threading.Lock()

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.2)
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(profile, "profile_object", counting)
    worker, stores, _ = make_worker(lake(60), full_mode_jobs=1, full_mode_concurrency=1, read_concurrency=1)
    worker.handle_pubsub(job_message({**JOB, "mode": "full"}), "m-1")
    first, second = stores.shards.messages[:2]
    threads = [threading.Thread(target=deliver, args=(worker, m)) for m in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1


def test_a_full_mode_shard_that_waited_for_its_turn_hands_on_before_the_deadline_instead_of_failing(monkeypatch):
    worker, stores, _ = make_worker(lake(20, flat=True), job_deadline_seconds=6, shard_seconds=4, shard_objects=20,
                                fanout_min_objects=1, full_mode_jobs=1, full_mode_concurrency=1, read_concurrency=1)
    slow_fetches(monkeypatch, worker, 0.15)
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/all/", "mode": "full",
                                       "fan_out": {"mode": "always"}}), "m-1")
    (message,) = stores.shards.messages
    worker._full_turns.acquire()  # another full-mode read holds the instance's one turn for a while
    threading.Timer(2.8, worker._full_turns.release).start()
    deliver(worker, message)
    shard = stores.runs.get_shard("m-1", message[2])
    assert shard.state == "done" and shard.children


def test_a_full_mode_shard_that_gets_no_turn_in_time_is_handed_back_without_spending_an_attempt():
    """The instance's full-mode turns were taken for longer than half the deadline: the shard gives its lease up and
    its message is sent again (a new copy with attempts of its own); this delivery is acknowledged."""
    worker, stores, out = make_worker(lake(20, flat=True), job_deadline_seconds=2, shard_seconds=1, shard_objects=20,
                                      fanout_min_objects=1, full_mode_jobs=1)
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/all/", "mode": "full",
                                      "fan_out": {"mode": "always"}}), "m-1")
    (message,) = stores.shards.messages
    stores.shards.messages.clear()
    worker._full_turns.acquire()  # another full-mode read holds the instance's one turn past half the deadline
    try:
        deliver(worker, message)  # no exception: acknowledged
    finally:
        worker._full_turns.release()
    shard = stores.runs.get_shard("m-1", message[2])
    assert shard.state == "dispatched" and not shard.lease.live(time.time()) and shard.attempts == 1
    assert stores.shards.messages == [message]  # sent again, same generation
    deliver_all(worker, stores, random.Random(14))
    assert out.sent[0]["status"] == "ok" and out.sent[0]["files"] == 20


def test_a_range_whose_partial_would_exceed_the_merges_bound_fails_saying_why():
    """PARTIAL_MAX_BYTES bounds what the merge reads: a shard whose partial is larger fails its range at once with
    the reason, rather than store it for the merge to refuse as lost."""
    worker, stores, out = make_worker(lake(40), partial_max_bytes=100)
    worker.handle_pubsub(job_message(JOB), "m-1")
    deliver_all(worker, stores, random.Random(15))
    (result,) = out.sent
    assert result["error"]["code"] == "incomplete"
    assert all("PARTIAL_MAX_BYTES" in r["error"] for r in result["fanout"]["failed_ranges"])
    assert not stores.blobs.blobs  # nothing stored that the merge would refuse


def test_a_job_whose_attributes_are_firestore_reserved_names_fans_out_and_answers(stores):
    """Firestore refuses field names like ``__x__`` (InvalidArgument, the emulator too): a valid job with such
    attribute or reply_attribute keys was answered ``internal``. Its run keeps the job as one string."""
    worker, stores, out = make_worker(lake(40), stores=stores)
    message = job_message({**JOB, "reply_attributes": {"__y__": "2"}})
    message["message"]["attributes"] = {"__x__": "1"}
    worker.handle_pubsub(message, "m-1")
    deliver_all(worker, stores, random.Random(16))
    (result,) = out.sent
    assert result["status"] == "ok" and result["files"] == 40, result.get("error")
    assert result["attributes"] == {"__x__": "1", "__y__": "2"}  # the job's, with its reply_attributes


def test_a_read_whose_commit_lost_to_contention_does_not_count_toward_failing_the_range(monkeypatch):
    """Firestore gives up a contended transaction after its attempts (Unavailable: the delivery is retried). The
    range read fine: that delivery must not count as one of the reads after which a dead-lettered range fails."""
    from worker.fanout import decisions as d

    worker, stores, out = make_worker(lake(40))
    worker.handle_pubsub(job_message(JOB), "m-1")
    message = stores.shards.messages.pop(0)
    real_finish = d.finish

    def contended(*args, **kwargs):
        raise Unavailable("Firestore contention outlasted 5 attempts", details={"step": "firestore"})

    monkeypatch.setattr(d, "finish", contended)
    for _ in range(4):
        with pytest.raises(Unavailable):
            deliver(worker, message)
    shard = stores.runs.get_shard("m-1", message[2])
    assert shard.attempts == 0 and not shard.lease.live(time.time())
    deliver(worker, message, dead=True)  # Pub/Sub gave up on it: sent again, not failed
    assert stores.runs.get_shard("m-1", message[2]).state == "dispatched"
    monkeypatch.setattr(d, "finish", real_finish)
    deliver_all(worker, stores, random.Random(17))
    assert out.sent[0]["status"] == "ok" and out.sent[0]["files"] == 40
