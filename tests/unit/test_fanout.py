"""Fan-out's logic without servers: key ranges, the run's decisions, and whole runs delivered in any order.

The stores here are in-memory doubles of the project's own Protocols (tests/unit/support.py); the Firestore,
Cloud Storage and Pub/Sub adapters are tested on the real emulators in tests/integration.
"""

from __future__ import annotations

import itertools
import json
import random

import pyarrow as pa
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.unit.reaching import Branches
from tests.unit.runs_support import (
    alone,
    deliver,
    deliver_all,
    job_message,
    lake,
    make_worker,
    parquet,
    slow_fetches,
)
from tests.unit.support import MemoryStore, same_figures
from worker.fanout.coordinator import status_of
from worker.fanout.ranges import INITIAL_SHARDS_MAX, after, first_split, list_range, split_unread
from worker.fanout.records import ANSWERED, FAILED

KEY_CHARS = st.sampled_from(["a", "b", "/", "0", "9", "-", ".", "=", "é", "\u4e2d", "\U0001f600", " ", "~"])


# Keys in "folders" (p/a/b), so that S3's common prefixes lie past the keys listed so far.
FOLDER_KEYS = st.lists(st.text(KEY_CHARS, min_size=1, max_size=2), min_size=2, max_size=3).map("/".join)
FIRST_SPLIT = Branches(**{"bounds thinned": 30, "folders past the listing": 40})


@FIRST_SPLIT.checked
@settings(max_examples=300, deadline=None)
@given(most=st.integers(2, 6) | st.just(INITIAL_SHARDS_MAX), per_shard=st.integers(1, 9), head=st.integers(0, 60),
       keys=st.sets(st.text(KEY_CHARS, min_size=1, max_size=6) | FOLDER_KEYS, max_size=60))
def test_the_first_split_covers_every_key_of_the_prefix_exactly_once(most, per_shard, head, keys):
    store = MemoryStore({f"p/{k}": b"x" for k in keys} | {"o/outside": b"x", "p": b"x"})
    every = [k for k, _ in store.list("p/")]
    listed = every[:head % (len(every) + 1)]  # the keys listed before the split: any number of them
    folders = store.common_prefixes("p/")
    ranges = first_split(listed, folders, per_shard=per_shard, most=most)
    read = [k for a, b in ranges for k, _ in list_range(store, "p/", a, b)]
    event(f"ranges: {'1' if len(ranges) == 1 else '2-9' if len(ranges) < 10 else '10+'}")
    tail = after(listed[-1]) if listed else None
    past = {f for f in folders if tail is None or f > tail}
    bounds = {listed[i] for i in range(per_shard, len(listed), per_shard)} | ({tail} if tail else set()) | past
    assert len(ranges) == min(len(bounds), most - 1) + 1  # a run starts with at most `most` shards
    if len(bounds) > most - 1:
        FIRST_SPLIT.reached("bounds thinned")
    if past and listed:
        FIRST_SPLIT.reached("folders past the listing")
    assert read == sorted(f"p/{k}" for k in keys)
    assert ranges[0][0] is None and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


SPLITS = Branches(**{"ranges: as many as ways": 20, "ranges: fewer than ways": 15, "sizes: unequal": 12,
                     "ways: more than keys": 20, "bounded": 30, "unbounded": 30})


@SPLITS.checked
@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.text(KEY_CHARS, min_size=1, max_size=5), min_size=1, max_size=40, unique=True),
       ways=st.integers(1, 6), bounded=st.booleans())
def test_unread_keys_split_into_ranges_that_hold_each_once(keys, ways, bounded):
    keys = sorted(keys)
    stop = after(keys[-1]) if bounded else None
    ranges = split_unread(keys, stop, ways)
    assert 1 <= len(ranges) <= ways
    held = [[k for k in keys if (a is None or k >= a) and (b is None or k < b)] for a, b in ranges]
    assert [k for part in held for k in part] == keys and all(held)
    if len(ranges) > 1:  # a split: as many ranges as asked for, or fewer when the keys run out
        SPLITS.reached(f"ranges: {'as many as' if len(ranges) == ways else 'fewer than'} ways")
        SPLITS.reached(f"sizes: {'equal' if len({len(part) for part in held}) == 1 else 'unequal'}")
    SPLITS.reached(f"ways: {'more than' if ways > len(keys) else 'at most'} keys")
    SPLITS.reached("bounded" if bounded else "unbounded")


# -- whole runs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["metadata", "full"])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_fanned_out_run_answers_once_with_the_figures_of_one_instance(mode, seed):
    objects = lake()
    job = {"bucket": "bkt", "prefix": "lake/", "mode": mode}
    worker, stores, out = make_worker(objects)
    assert worker.handle_pubsub(job_message(job), "m-1") is None  # fanned out: the run answers
    assert out.sent == []
    deliveries = deliver_all(worker, stores, random.Random(seed), duplicates=0.3)
    (result,) = out.sent
    run = stores.runs.get_run("m-1")
    shards = list(stores.runs.shards("m-1"))
    assert run.state == ANSWERED and all(s.state == "done" for s in shards) and len(shards) > 5
    assert deliveries > len(shards)  # duplicates were delivered, and counted once
    assert not same_figures(result, alone(objects, job))
    fan = result["fanout"]
    assert fan["run_id"] == "m-1" and fan["failed"] == 0 and fan["coverage"] == 1.0 and fan["coverage_exact"]
    assert fan["shards"] == len(shards) and fan["succeeded"] == len(shards)
    assert fan["objects_listed"] == len(objects) and fan["objects_read"] == result["files"] == 120
    assert fan["bytes_listed"] == sum(len(v) for v in objects.values())


@pytest.mark.parametrize("seed", [3, 4])
def test_partials_merge_in_a_tree_of_bounded_tasks_with_the_figures_of_one_instance(seed):
    objects = lake(120)
    job = {"bucket": "bkt", "prefix": "lake/", "mode": "full"}
    worker, stores, out = make_worker(objects, shard_objects=4, merge_fan_in=3)
    worker.handle_pubsub(job_message(job), "m-1")
    deliver_all(worker, stores, random.Random(seed), duplicates=0.2)
    (result,) = out.sent
    assert not same_figures(result, alone(objects, job))
    tasks = [doc for (run_id, _), doc in stores.runs.task_docs.items() if run_id == "m-1"]
    levels = {t["level"] for t in tasks}
    assert len(levels) >= 2, levels  # a tree: more than one level of tasks
    assert all(len(t["inputs"]) <= 3 for t in tasks)  # no task merged more than MERGE_FAN_IN
    assert result["fanout"]["objects_read"] == 120


def test_the_cap_on_shards_in_flight_holds_and_can_change_while_the_run_goes():
    worker, stores, out = make_worker(lake(60))
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/", "fan_out": {"max_in_flight": 1}}), "m-1")
    assert len(stores.shards.messages) == 1
    run = stores.runs.get_run("m-1")
    assert run.max_in_flight == 1 and stores.runs.count_shards("m-1", ["queued"]) > 1
    worker.coordinator.set_cap("m-1", 3)
    assert len(stores.shards.messages) == 3 and stores.runs.count_shards("m-1", ["dispatched"]) == 3
    deliver_all(worker, stores, random.Random(3))
    assert len(out.sent) == 1 and out.sent[0]["status"] == "ok"


def test_a_cap_above_the_workers_ceiling_is_clamped_and_the_answer_says_so():
    worker, stores, out = make_worker(lake(60), fanout_max_in_flight=4)
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/", "fan_out": {"max_in_flight": 900}}),
                         "m-1")
    assert len(stores.shards.messages) == 4
    deliver_all(worker, stores, random.Random(3))
    fan = out.sent[0]["fanout"]
    assert fan["max_in_flight"] == 4 and fan["max_in_flight_requested"] == 900


def test_a_dead_lettered_range_makes_the_answer_incomplete_and_a_redrive_completes_it():
    objects = lake(80)
    worker, stores, out = make_worker(objects)
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/"}), "m-1")
    victim = stores.shards.messages[0][2]
    deliver_all(worker, stores, random.Random(4), dead={victim})
    (first,) = out.sent
    assert first["status"] == "error" and first["error"]["code"] == "incomplete"
    assert "redrive m-1" in first["error"]["message"]
    (failed,) = first["fanout"]["failed_ranges"]
    assert failed["shard_id"] == victim and "dead-lettered" in failed["error"]
    assert [s.shard_id for s in stores.runs.shards("m-1", FAILED)] == [victim]
    assert worker.coordinator.redrive("m-1") == [victim]
    deliver_all(worker, stores, random.Random(5))
    second = out.sent[1]
    assert second["status"] == "ok" and second["fanout"]["answer"] == 2 and second["fanout"]["redrives"] == 1
    assert not same_figures(second, alone(objects, {"bucket": "bkt", "prefix": "lake/"}))


def test_a_tolerated_failure_answers_ok_with_the_failed_range_and_the_coverage():
    worker, stores, out = make_worker(lake(80))
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/",
                                       "fan_out": {"tolerated_failure_percent": 50}}), "m-1")
    victim = stores.shards.messages[0][2]
    deliver_all(worker, stores, random.Random(6), dead={victim})
    (result,) = out.sent
    fan = result["fanout"]
    assert result["status"] == "ok" and fan["failed"] == 1 and 0 < fan["coverage"] < 1
    assert result["files"] < 80 and fan["failed_ranges"][0]["shard_id"] == victim


def test_tolerance_and_coverage_count_objects_not_shards():
    """A flat prefix of 200 objects in shards of 110 and 90: the dead-lettered shard held 110 of them. Counting
    shards said coverage 0.5 (or, with more small shards, 0.95); in objects it is 90/200, and a 50% tolerance of
    objects does not cover it."""
    objects = {f"flat/k{i:04d}.parquet": parquet(pa.table({"x": [i]})) for i in range(200)}
    worker, stores, out = make_worker(objects, shard_objects=110, fanout_min_objects=200)
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "flat/",
                                       "fan_out": {"tolerated_failure_percent": 50}}), "m-1")
    big = next(s for s in stores.runs.shards("m-1") if s.expected_objects == 110)
    deliver_all(worker, stores, random.Random(6), dead={big.shard_id})
    (result,) = out.sent
    fan = result["fanout"]
    assert result["status"] == "error" and result["error"]["code"] == "incomplete"
    assert fan["objects_failed"] == 110 and fan["coverage"] == round(90 / 200, 6) and fan["coverage_exact"]
    assert fan["failed_ranges"][0]["objects"] == 110


def test_a_shard_out_of_time_hands_its_unread_keys_on_and_the_run_completes(monkeypatch):
    objects = lake(40, flat=True)
    worker, stores, out = make_worker(objects, shard_seconds=1, shard_objects=1000, fanout_min_objects=1,
                                  read_concurrency=1)
    slow_fetches(monkeypatch, worker, 0.05)
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/", "fan_out": {"mode": "always"}}), "m-1")
    deliver_all(worker, stores, random.Random(7))
    (result,) = out.sent
    assert result["status"] == "ok" and result["files"] == 40
    split = [s for s in stores.runs.shards("m-1") if len(s.children) > 1]
    assert split, "no shard ran out of time"


def test_status_reports_progress_and_an_estimate():
    worker, stores, _ = make_worker(lake(60))
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/"}), "m-1")
    deliver(worker, stores.shards.messages.pop(0))
    status = status_of(worker.coordinator, "m-1")
    assert status["state"] == "running" and status["shards_done"] == 1 and status["eta_seconds"] is not None
    assert status["objects_listed"] > 0


def test_a_redelivered_job_message_starts_no_second_run():
    worker, stores, out = make_worker(lake(60))
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/"}), "m-1")
    first = list(stores.shards.messages)
    total = len(list(stores.runs.shards("m-1")))
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/"}), "m-1")
    assert sorted(stores.shards.messages[len(first):]) == sorted(first)  # the same shards again, no new ones
    assert len(list(stores.runs.shards("m-1"))) == total
    deliver_all(worker, stores, random.Random(8))
    assert len(out.sent) == 1


def test_small_jobs_and_http_jobs_run_on_one_instance():
    worker, stores, out = make_worker(lake(10))
    worker.handle_pubsub(job_message({"bucket": "bkt", "prefix": "lake/"}), "m-1")
    assert len(out.sent) == 1 and "fanout" not in out.sent[0] and not stores.shards.messages
    answer = worker.handle_http(json.dumps({"bucket": "bkt", "prefix": "lake/", "fan_out": {"mode": "always"}}))
    assert answer["error"]["code"] == "invalid_job" and "HTTP" in answer["error"]["message"]
