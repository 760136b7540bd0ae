"""Adversarial review of fan-out (issue 12): each test here shows a bug found in review (see its docstring).

The doubles and helpers are those of tests/unit/test_fanout.py.
"""

from __future__ import annotations

import base64
import json
import random
import time

import pytest

import worker.service as service
from tests.unit.support import MemoryShardQueue
from tests.unit.test_fanout import (
    SHARD_SOURCE,
    _deliver_all,
    _job_message,
    _lake,
    _parquet,
    _shard_message,
    _worker,
    slow_fetches,
)
from worker.errors import Retryable, Unavailable
from worker.fanout import (
    Outcome,
    after,
    decide_finish,
    decide_hand_off,
    decide_requeue,
    job_doc,
    publish_after_commit,
    redrive,
    set_cap,
)
from worker.jobs import parse_job
from worker.runs import ANSWERED, DONE, FAILED, MERGING, RunRecord, ShardRecord

JOB = {"bucket": "bkt", "prefix": "lake/"}


class _Everything(set):
    def __contains__(self, item):
        return True


def _deliver_with_retries(worker, stores, rng, *, later=None, attempts=50):
    """Deliver every shard message; one that raises goes back to the queue (Pub/Sub redelivers a 500)."""
    queue = stores.shards.messages
    for _ in range(10_000):
        if not queue or attempts == 0:
            return
        message = queue.pop(rng.randrange(len(queue)))
        try:
            worker.handle_pubsub(_shard_message(*message), "s", source=SHARD_SOURCE)
        except Exception:  # noqa: BLE001 - redelivered, as Pub/Sub does for any 500
            attempts -= 1
            queue.append(message)
            if later is not None:
                later()


# -- the cap on shards in flight ---------------------------------------------------------------------


def test_a_run_capped_at_one_shard_in_flight_finishes():
    """Stores read queued shards with n = max_in_flight - in_flight *before* decide_finish frees the finishing
    shard's slot: with a cap of 1 (valid: the job schema allows 1), n is 0 on every commit, so no queued shard is
    ever dispatched again and the run stays `running` forever with nothing in flight."""
    worker, stores, out = _worker(_lake(60))
    worker.handle_pubsub(_job_message({**JOB, "fan_out": {"max_in_flight": 1}}), "m-1")
    _deliver_all(worker, stores, random.Random(1))
    run = stores.runs.get_run("m-1")
    assert (run.state, run.in_flight, run.shards_open, len(out.sent)) == (ANSWERED, 0, 0, 1)


def test_a_cap_lowered_to_one_while_shards_are_in_flight_lets_the_run_finish():
    """The same stall reached by `status --max-in-flight 1` on a running run: every commit finds n = 0."""
    worker, stores, out = _worker(_lake(60))
    worker.handle_pubsub(_job_message(JOB), "m-1")
    set_cap(stores, "m-1", 1)
    _deliver_all(worker, stores, random.Random(2), check_cap=False)
    run = stores.runs.get_run("m-1")
    assert (run.state, run.shards_open, len(out.sent)) == (ANSWERED, 0, 1)


# -- shards stranded by a failed publish --------------------------------------------------------------


def test_a_hand_off_whose_publish_failed_is_published_by_the_redelivery(monkeypatch):
    """decide_hand_off commits the child as `dispatched`; if publishing it fails (Retryable: the message is
    redelivered), the redelivery finds the shard's stop already cut, so it lists no more than its share, makes no
    hand-off, and never publishes the child (``replay`` runs only for terminal shards). The child stays
    `dispatched` with no message: the run never answers."""
    real = service.decide_hand_off
    armed = {"now": False, "done": False}

    def spy(*args, **kwargs):
        decide = real(*args, **kwargs)

        def wrapped(run, shard, queued):
            change = decide(run, shard, queued)
            if change.value.publish and not armed["done"]:
                armed["now"] = armed["done"] = True
            return change

        return wrapped

    monkeypatch.setattr(service, "decide_hand_off", spy)
    worker, stores, out = _worker(_lake(80), shard_objects=5)
    worker.handle_pubsub(_job_message(JOB), "m-1")
    queue = stores.shards

    class Flaky:
        def publish_shards(self, run_id, shard_ids):
            if armed["now"]:
                armed["now"] = False
                raise Unavailable("Pub/Sub unavailable")
            queue.publish_shards(run_id, shard_ids)

        @property
        def messages(self):
            return queue.messages

    stores.shards = Flaky()
    _deliver_with_retries(worker, stores, random.Random(3))
    assert armed["done"], "no hand-off happened"
    run = stores.runs.get_run("m-1")
    assert (run.state, run.shards_open, len(out.sent)) == (ANSWERED, 0, 1)


def test_a_redrive_whose_publish_failed_can_be_run_again():
    """redrive() commits decide_requeue (the shard `dispatched`, the run `running`) and then publishes; if the
    publish fails, running redrive again is refused ("run is running") and lists no failed shard anyway: the
    shard has no message and nothing can ever send one. The run never answers again."""
    worker, stores, out = _worker(_lake(80))
    worker.handle_pubsub(_job_message(JOB), "m-1")
    victim = stores.shards.messages[0][1]
    _deliver_all(worker, stores, random.Random(4), dead={victim})
    assert out.sent[0]["error"]["code"] == "incomplete"
    queue = stores.shards

    class Down:
        def publish_shards(self, run_id, shard_ids):
            raise Unavailable("Pub/Sub unavailable")

    stores.shards = Down()
    with pytest.raises(Retryable):
        redrive(stores, "m-1")
    stores.shards = queue
    redrive(stores, "m-1")  # the operator tries again
    _deliver_all(worker, stores, random.Random(5))
    assert len(out.sent) == 2 and out.sent[1]["status"] == "ok"


# -- exactly one answer per redrive ------------------------------------------------------------------------


def test_a_redrive_of_two_failed_ranges_answers_once():
    """redrive() requeues failed shards one transaction each, and the first already makes the run `running`
    with shards_open 1. If that shard finishes before the next is requeued (instances are fast, the CLI is far
    away), it closes the run: an answer goes out while the second range is still failed, and requeueing the
    second then reopens the run (even one being merged) for a third answer."""
    worker, stores, out = _worker(_lake(80))
    worker.handle_pubsub(_job_message(JOB), "m-1")
    victims = {stores.shards.messages[0][1], stores.shards.messages[1][1]}
    _deliver_all(worker, stores, random.Random(6), dead=victims)
    assert len(out.sent) == 1 and out.sent[0]["fanout"]["failed"] == 2

    class Immediate(MemoryShardQueue):  # each shard message is delivered as soon as it is published
        def publish_shards(self, run_id, shard_ids):
            for shard_id in shard_ids:
                worker.handle_pubsub(_shard_message(run_id, shard_id), "s",
                                     source=SHARD_SOURCE)

    stores.shards = Immediate()
    assert sorted(redrive(stores, "m-1")) == sorted(victims)
    assert [r["fanout"]["answer"] for r in out.sent] == [1, 2] and out.sent[1]["status"] == "ok"


def test_a_duplicate_that_commits_while_the_merger_publishes_does_not_publish_a_second_answer(monkeypatch):
    """Pub/Sub delivers a shard message twice at once (D1, D2: both read the shard as dispatched). D1's commit
    closes the run (merging) and D1 merges. D2's commit then finds the shard terminal, and decide_finish's
    duplicate branch answers ``merge=True`` because D2's shard is the merger: D2 calls _merge at once, skipping
    decide_claim_merge, and a second answer goes out with no crash anywhere. (Found by delivering with 6 threads
    and duplicates: 8 of 15 runs answered 2 or 3 times.) The duplicate branch should defer to the claim."""
    worker, stores, out = _worker(_lake(40))
    worker.handle_pubsub(_job_message(JOB), "m-1")
    queue = stores.shards.messages
    while len(queue) > 1 or stores.runs.get_run("m-1").shards_open > 1:
        worker.handle_pubsub(_shard_message(*queue.pop(0)), "s", source=SHARD_SOURCE)
    closing = queue.pop(0)
    stale = stores.runs.get_shard(*closing)  # D2 has read the shard (dispatched)
    real_get, send, calls = stores.runs.get_shard, out.publish, []

    def publish(result, topic=None):
        calls.append(result)
        if len(calls) == 1:  # D1 is publishing the run's answer; D2 commits now
            with monkeypatch.context() as m:
                m.setattr(stores.runs, "get_shard", lambda r, s: stale if s == closing[1] else real_get(r, s))
                # D2 is told to come back later (a 500: Pub/Sub redelivers it), not to build a second answer
                with pytest.raises(Unavailable, match="another delivery is building the answer"):
                    worker.handle_pubsub(_shard_message(*closing), "s2", source=SHARD_SOURCE)
        return send(result, topic)

    monkeypatch.setattr(out, "publish", publish)
    worker.handle_pubsub(_shard_message(*closing), "s1", source=SHARD_SOURCE)  # D1
    worker.handle_pubsub(_shard_message(*closing), "s2", source=SHARD_SOURCE)  # D2 redelivered: answered, no-op
    assert len(out.sent) == 1


# -- the merge must answer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "other_version"])
def test_a_run_answers_even_when_a_partial_cannot_be_read_at_merge_time(monkeypatch, damage):
    """_merge lets NotFound (a partial the bucket's lifecycle deleted: a redrive after PARTIALS_RETENTION_DAYS)
    or CorruptPartial (a partial written by another format version during a deploy) escape _handle_shard, whose
    contract is "raises only Retryable". The closing message is redelivered, dead-lettered, redelivered from the
    dead-letter subscription... and the run stays `merging` forever: no answer, and redrive refuses a run that
    has not answered. It should answer (e.g. the range as failed: incomplete, redrivable)."""
    worker, stores, out = _worker(_lake(40))
    worker.handle_pubsub(_job_message(JOB), "m-1")
    queue = stores.shards.messages
    while len(queue) > 1 or stores.runs.get_run("m-1").shards_open > 1:
        worker.handle_pubsub(_shard_message(*queue.pop(0)), "s", source=SHARD_SOURCE)
    name = sorted(stores.blobs.blobs)[0]
    if damage == "deleted":
        del stores.blobs.blobs[name]
    else:
        data = stores.blobs.blobs[name]
        stores.blobs.blobs[name] = data[:4] + bytes([data[4] + 1]) + data[5:]
    clock = {"t": time.time()}
    monkeypatch.setattr(time, "time", lambda: clock["t"])

    def later():
        clock["t"] += worker.settings.job_deadline_seconds + 61

    _deliver_with_retries(worker, stores, random.Random(7), later=later, attempts=6)
    assert len(out.sent) == 1, f"run is {stores.runs.get_run('m-1').state}, no answer"
    assert out.sent[0]["status"] == "error" or out.sent[0]["fanout"]["coverage"] < 1


def test_a_run_whose_ranges_all_failed_does_not_answer_that_the_prefix_has_no_parquet():
    """With tolerated_failure_percent 100 and every range dead-lettered, nothing was read, yet the answer is
    not_found "no Parquet object under s3://bkt/lake/", which is false (the prefix holds 80). _merge should not
    call the run's unread ranges "no Parquet" (answer incomplete when nothing was read, or say so)."""
    worker, stores, out = _worker(_lake(80))
    worker.handle_pubsub(_job_message({**JOB, "fan_out": {"tolerated_failure_percent": 100}}), "m-1")
    _deliver_all(worker, stores, random.Random(8), dead=_Everything())
    (result,) = out.sent
    assert not (result["status"] == "error" and result["error"]["code"] == "not_found"), result["error"]


# -- key ranges: a reading delivery must read the range the record holds -----------------------------------


def test_a_delivery_that_read_a_stale_stop_does_not_count_the_handed_off_range_twice():
    """Two deliveries of one shard: D2 reads the shard record (stop None), then D1 cuts it (hand-off: child
    [after(a3), None)). Objects are deleted meanwhile (compaction), so D2's listing holds no more than its share:
    it makes no hand-off, reads to its stale stop None, and decide_finish records it done with stop = the cut.
    The child reads p/a5.parquet again: the answer counts 4 files where 3 exist. decide_finish should refuse an outcome
    read over another range than the record's (carry the stop read in Outcome and compare)."""
    objects = {f"p/a{i}.parquet": _parquet(__import__("pyarrow").table({"x": [i]})) for i in range(1, 6)}
    worker, stores, out = _worker(objects, shard_objects=3)
    worker.handle_pubsub(_job_message({"bucket": "bkt", "prefix": "p/", "fan_out": {"mode": "always"}}), "m-1")
    ((_, shard_id),) = stores.shards.messages
    stores.shards.messages.clear()
    run, stale = stores.runs.get_run("m-1"), stores.runs.get_shard("m-1", shard_id)  # D2 reads the record
    handed = stores.runs.transact("m-1", shard_id, decide_hand_off("m-1", shard_id, after("p/a3.parquet"), time.time()))
    publish_after_commit(stores, "m-1", handed.publish)  # D1's hand-off
    del objects["p/a2.parquet"], objects["p/a4.parquet"]
    outcome = worker._read_shard(run, stale)  # D2 reads
    finish = stores.runs.transact("m-1", shard_id, decide_finish("m-1", shard_id, outcome, time.time()))
    assert finish.stale  # refused: D2 answers 500 and Pub/Sub delivers the message again
    stores.shards.messages.append(("m-1", shard_id))
    _deliver_all(worker, stores, random.Random(9))
    (result,) = out.sent
    assert result["status"] == "ok", result.get("error")
    assert result["files"] == 3


def test_a_delivery_that_found_its_shard_done_never_records_it_done_without_a_partial():
    """_read_shard turns "the hand-off found the shard terminal" into Outcome(DONE) with no partial, trusting
    decide_finish to drop it as a duplicate. If a redrive requeues and dispatches the (failed) shard between the
    two transactions, decide_finish records DONE with no partial and no counts: the range is silently missing
    from the answer, which says coverage 1.0. A no-op outcome should never be recordable."""
    run = RunRecord(run_id="r", job={}, created_at=0.0, max_in_flight=5, state=ANSWERED, shards_total=1,
                    shards_failed=1)
    shard = ShardRecord("s", None, None, state=FAILED, error="dead-lettered")
    assert decide_hand_off("r", "s", "k", 1.0)(run, shard, []).value.terminal  # -> _AlreadyDone -> Outcome(DONE)
    change = decide_requeue([shard], run.redrives, 2.0)(run, None, [])  # the operator's redrive, in between
    run, shard = change.run, next(s for s in change.shards if s.shard_id == "s")
    change = decide_finish("r", "s", Outcome(DONE), 3.0)(run, shard, [])
    assert not (change.shards and change.shards[0].state == DONE and change.shards[0].partial is None)


# -- messages -------------------------------------------------------------------------------------------------


def _spoof(data: dict, attributes: dict, message_id: str) -> dict:
    return {"message": {"data": base64.b64encode(json.dumps(data).encode()).decode(), "messageId": message_id,
                        "attributes": attributes}}


def test_a_job_message_cannot_fail_a_shard_of_another_run_by_posing_as_a_dead_letter():
    """_shard_of routes on attributes alone, and _dead_lettered accepts Pub/Sub's dead-letter attribute from any
    source: anyone who may publish a job can publish, on the *job* topic, a message with kind=shard, a run's ID
    (a job message ID, in every answer) and a shard ID (in failed_ranges, or shard_id_of(run_id, None, None)
    for a one-range run) plus CloudPubSubDeadLetterSourceDeliveryCount, and fail that range of someone else's
    run. Only messages whose source is SHARD_TOPIC / SHARD_DEAD_LETTER_TOPIC should be shard messages."""
    worker, stores, _ = _worker(_lake(60))
    worker.handle_pubsub(_job_message(JOB), "m-1")
    run_id, shard_id = stores.shards.messages[0]
    attributes = {"kind": "shard", "run_id": run_id, "shard_id": shard_id,
                  "CloudPubSubDeadLetterSourceDeliveryCount": "5"}
    worker.handle_pubsub(_spoof(JOB, attributes, "m-evil"), "m-evil",
                         source="//pubsub.googleapis.com/projects/p/topics/jobs")
    assert stores.runs.get_shard(run_id, shard_id).state != FAILED


def test_a_job_message_with_shard_like_attributes_is_answered():
    """A job on the job topic whose attributes happen to say kind=shard (with IDs of no run) is dropped with a
    log line: no result is ever published, against the worker's contract (every message, one result)."""
    worker, _, out = _worker(_lake(10))
    attributes = {"kind": "shard", "run_id": "nope", "shard_id": "nope"}
    worker.handle_pubsub(_spoof(JOB, attributes, "m-2"), "m-2", source="//pubsub.googleapis.com/projects/p/topics/jobs")
    assert len(out.sent) == 1


# -- the answer's size ------------------------------------------------------------


def test_an_incomplete_answer_with_100_long_failed_ranges_fits_result_max_bytes():
    """The fanout section is not in results.REDUCTION_ORDER and error.details repeats failed_ranges: 100 ranges of
    1,024-character keys (~410 KB twice over) cannot be cut, fit() raises, and _send replaces the run's answer by
    an `internal` error with no fanout section (RESULT_MAX_BYTES may be as low as 10,000; here 100,000)."""
    worker, stores, out = _worker({}, result_max_bytes=100_000)
    runs = stores.runs
    run = RunRecord(run_id="m-9", job=job_doc(parse_job(json.dumps(JOB).encode(), message_id="m-9")),
                    created_at=time.time(), max_in_flight=5, state=MERGING, merger="x", shards_total=100,
                    shards_failed=100)
    runs.runs["m-9"] = run.to_doc()
    for i in range(100):
        start, stop = f"lake/{i:04d}" + "a" * 1019, f"lake/{i:04d}" + "b" * 1019
        shard = ShardRecord(f"s{i:03d}", start, stop, state=FAILED, error="dead-lettered after 5 attempt(s)")
        runs.shard_docs[("m-9", shard.shard_id)] = shard.to_doc()
    worker._merge("m-9")
    (result,) = out.sent
    assert result["status"] == "error" and result["error"]["code"] == "incomplete"
    assert result["fanout"]["failed"] == 100


# -- full-mode shards and the instance's full-mode turns ---------------------------------------------------


def test_full_mode_shards_take_turns_like_full_mode_jobs(monkeypatch):
    """Worker.run makes full-mode jobs take turns (FULL_MODE_JOBS at once, default 1: with request concurrency 8,
    the CLI's default, they would otherwise hold all their memory at once). _read_shard calls summarize_listing
    in full mode without taking a turn, so one instance reads as many full-mode shards at once as Cloud Run sends
    it: here 2 with FULL_MODE_JOBS=1."""
    import threading

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
    worker, stores, _ = _worker(_lake(60), full_mode_jobs=1, full_mode_concurrency=1, read_concurrency=1)
    worker.handle_pubsub(_job_message({**JOB, "mode": "full"}), "m-1")
    first, second = stores.shards.messages[:2]
    threads = [threading.Thread(target=worker.handle_pubsub, args=(_shard_message(*m), "s"),
                               kwargs={"source": SHARD_SOURCE}) for m in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1


def test_a_full_mode_shard_that_waited_for_its_turn_hands_on_before_the_deadline_instead_of_failing(monkeypatch):
    """The fix for full-mode turns starts the shard's budget (SHARD_SECONDS) when the turn is granted, but the
    deadline (JOB_DEADLINE_SECONDS) still counts from the delivery: a shard that waited W for a turn reads until
    W + SHARD_SECONDS (+ up to a quarter budget more), past the deadline once W > deadline - SHARD_SECONDS (with
    the defaults 480/240 and a wait of up to 240 s, easily). It then stops at the deadline and answers
    Unavailable: all its reading is lost, and the redelivery waits for a turn again. The budget should end
    before the deadline (min(turn + SHARD_SECONDS, start + deadline - a margin)), handing the rest on."""
    import threading

    worker, stores, _ = _worker(_lake(20, flat=True), job_deadline_seconds=6, shard_seconds=4, shard_objects=20,
                                fanout_min_objects=1, full_mode_jobs=1, full_mode_concurrency=1, read_concurrency=1)
    slow_fetches(monkeypatch, worker, 0.15)
    worker.handle_pubsub(_job_message({"bucket": "bkt", "prefix": "lake/all/", "mode": "full",
                                       "fan_out": {"mode": "always"}}), "m-1")
    (message,) = stores.shards.messages
    worker._full_turns.acquire()  # another full-mode read holds the instance's one turn for a while
    threading.Timer(2.8, worker._full_turns.release).start()
    worker.handle_pubsub(_shard_message(*message), "s", source=SHARD_SOURCE)
    shard = stores.runs.get_shard(*message)
    assert shard.state == "done" and shard.children
