"""A fanned-out run under Firestore's contention: the real coordinator and ``FirestoreRunStore`` on the Firestore
emulator behind the contention fault layer (worker/devstack/firestore_faults.py, which aborts the younger of two
contending transactions as Firestore does), its shard and merge messages pushed by 8 threads at once
(worker/devstack/run_driver.py). It answers once, with the figures of one instance, and writes no document faster
than Firestore sustains (about one write per second per document: its solutions/counters page)."""

import pytest

from tests.unit.support import MemoryBlobs, MemoryStore, same_figures
from worker.adapters.firestore import FirestoreRunStore
from worker.devstack.firestore_faults import faulty_client, most_in_window
from worker.devstack.run_driver import PROJECT, drive, firestore_emulator, lake, one_instance_answer

OBJECTS = 120  # SHARD_OBJECTS=1: a shard per object (and per empty range at the edges)
THREADS = 8  # deliveries at once, and the run's cap on shards in flight
FAN_IN = 10  # 120 partials -> 12 merge tasks -> 2 -> the answer: a tree of two levels
WINDOW_S = 10.0
SUSTAINED = 1.0  # writes per second per document, over WINDOW_S


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    with firestore_emulator(tmp_path_factory.mktemp("firestore")) as service:
        yield service


def test_a_run_pushed_concurrently_answers_once_and_writes_no_document_hot(emulator):
    client = faulty_client(project=PROJECT)  # contention faults on, and the write meter
    runs = FirestoreRunStore(client, "runs")
    client.collection("warm-up").document("w").get()  # the emulator's first call takes seconds
    store = MemoryStore(lake(OBJECTS))
    job = {"bucket": "bkt", "prefix": "lake/", "mode": "metadata", "fan_out": {"mode": "always"}}
    settings = {"shard_objects": 1, "fanout_max_in_flight": THREADS,
                "merge_fan_in": FAN_IN, "read_concurrency": 2}

    driven = drive(store, runs, MemoryBlobs(), job, threads=THREADS, timeout=45, linger=3, **settings)

    assert len(driven.answers) == 1, f"{len(driven.answers)} answers; failed deliveries: {driven.push.failures}"
    assert driven.idle  # nothing left undelivered after the answer: no second answer on its way
    ((_, result),) = driven.answers
    assert result["status"] == "ok" and result["files"] == OBJECTS
    assert not same_figures(result, one_instance_answer(store, job, **settings))
    shards = list(runs.shards(driven.run_id))
    run = runs.get_run(driven.run_id)
    assert len(shards) >= OBJECTS and run.merge_level == 2
    assert driven.push.dead_lettered == {} and driven.push.dropped == 0

    by_document: dict[str, list[float]] = {}
    for at, path in client.write_meter.writes():
        by_document.setdefault(path, []).append(at)
    busiest = max(by_document, key=lambda p: most_in_window(by_document[p], WINDOW_S))
    most = most_in_window(by_document[busiest], WINDOW_S)
    assert most <= SUSTAINED * WINDOW_S, f"{busiest} written {most} times within {WINDOW_S:.0f} s"
    # The run's record: opened, claimed, two levels (each planned, then advanced by the last task), answered; the
    # same for any number of shards. A lease renewal or a release after a fault may add one or two.
    run_writes = len(by_document[f"runs/{driven.run_id}"])
    assert run_writes <= 3 + 2 * run.merge_level + 2, run_writes
    assert client.contention_faults.aborts > 0  # the run met contention (and got past it)
