"""The Firestore fault layer and write meter (worker.devstack.firestore_faults) over the real emulator: two
transactions on one document abort the younger at once, as Firestore does, where the emulator alone holds the
commit about 2 s and then aborts it; the meter counts what was written, per document and per time window."""

import threading
import time
import uuid

import pytest
from google.api_core import exceptions as google_errors
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from worker.adapters.firestore import FirestoreRunStore
from worker.devstack.firestore_faults import WriteMeter, faulty_client, install, most_in_window
from worker.devstack.processes import Service, free_port
from worker.devstack.stack import firestore_emulator_argv
from worker.fanout.records import Change, Reads, RunRecord

PROJECT = "faults-test"
EMULATOR_LOCK_WAIT_S = 1.5  # the emulator holds a contended commit about 2 s before it aborts it


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The Firestore emulator alone, with FIRESTORE_EMULATOR_HOST pointing at it."""
    port = free_port()
    service = Service("firestore-emulator", [a.replace("{port}", str(port)) for a in firestore_emulator_argv()],
                      port=port, log_dir=tmp_path_factory.mktemp("firestore"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FIRESTORE_EMULATOR_HOST", service.address)
        service.start()
        try:
            service.wait_ready(timeout=90)
            yield service
        finally:
            service.stop()


def new_run() -> RunRecord:
    return RunRecord(run_id=f"run-{uuid.uuid4().hex[:12]}", job_json='{"bucket": "b", "prefix": "p/"}',
                     created_at=time.time(), max_in_flight=4)


def contend(store: FirestoreRunStore, run_id: str) -> tuple[int, float]:
    """Two threads each add one to the run's ``redrives`` in a transaction; both read the run before either
    commits. Returns (calls of decide, seconds taken)."""
    both_read = threading.Barrier(2, timeout=30)
    calls = []
    errors = []

    def add_one(view):
        calls.append(1)
        if len(calls) <= 2:
            both_read.wait()
        view.run.redrives += 1
        return Change(run=view.run)

    def worker():
        try:
            store.transact(run_id, Reads(run=True), add_one)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    return len(calls), time.monotonic() - started


def test_the_younger_of_two_contending_transactions_is_aborted_and_retried(emulator):
    client = faulty_client(project=PROJECT)
    store = FirestoreRunStore(client, "runs")
    run = new_run()
    store.create_run(run, [])

    calls, seconds = contend(store, run.run_id)

    assert store.get_run(run.run_id).redrives == 2
    assert client.contention_faults.aborts == 1  # the younger one, once; its retry then committed
    assert calls == 3
    assert client.write_meter.operations()["aborted_commits"] == 0  # the emulator aborted nothing itself
    assert seconds < EMULATOR_LOCK_WAIT_S, seconds


def test_without_the_layer_the_emulator_holds_the_commit_then_aborts_it(emulator):
    client = faulty_client(project=PROJECT, contention=False)  # the meter only
    store = FirestoreRunStore(client, "runs")
    run = new_run()
    store.create_run(run, [])

    calls, seconds = contend(store, run.run_id)

    assert store.get_run(run.run_id).redrives == 2
    assert calls == 3
    assert client.write_meter.operations()["aborted_commits"] == 1
    assert seconds >= EMULATOR_LOCK_WAIT_S, seconds


def test_a_wounded_transaction_is_aborted_at_its_next_read(emulator):
    """The older transaction commits a write to a document the younger read: the younger gets Aborted at its
    next read, before the emulator is asked."""
    client = faulty_client(project=PROJECT)
    a, b = client.collection("wound").document(uuid.uuid4().hex), client.collection("wound").document(uuid.uuid4().hex)
    a.set({"n": 0})
    older, younger = client.transaction(), client.transaction()
    older._begin()
    younger._begin()
    a.get(transaction=older)
    a.get(transaction=younger)
    older.update(a, {"n": 1})
    older._commit()
    with pytest.raises(google_errors.Aborted, match="Too much contention"):
        b.get(transaction=younger)
    younger._rollback()
    assert client.contention_faults.counts() == {"aborts": 1, "aborts_at_commit": 0, "aborts_at_read": 1,
                                                 "wounded": 1, "waits": 0}
    assert a.get().get("n") == 1


def test_a_plain_write_waits_for_the_transaction_that_read_its_document(emulator):
    """A write outside any transaction waits for the lock, as on the service; the emulator alone fails it."""
    client = faulty_client(project=PROJECT)
    doc = client.collection("plain").document(uuid.uuid4().hex)
    doc.set({"n": 0})
    transaction = client.transaction()
    transaction._begin()
    doc.get(transaction=transaction)
    wrote = threading.Event()
    writer = threading.Thread(target=lambda: (doc.update({"n": firestore.Increment(10)}), wrote.set()))
    writer.start()
    assert not wrote.wait(0.5)  # held while the transaction lives
    transaction.update(doc, {"n": 1})
    transaction._commit()
    writer.join(timeout=30)
    assert wrote.is_set()
    assert doc.get().get("n") == 11
    assert client.contention_faults.waits == 1


def test_the_meter_counts_writes_per_document_and_window(emulator):
    now = [1000.0]
    meter = WriteMeter(clock=lambda: now[0])
    client = install(firestore.Client(project=PROJECT), meter)
    hot, cold = client.collection("meter").document("hot"), client.collection("meter").document("cold")
    for _ in range(12):  # 12 writes in 5.5 s, then 3 more 20 s later
        hot.set({"n": 1})
        now[0] += 0.5
    now[0] += 20
    for _ in range(3):
        hot.update({"n": firestore.Increment(1)})
    batch = client.batch()
    batch.set(cold, {"n": 0})
    batch.set(hot, {"n": 0})
    batch.commit()

    @firestore.transactional
    def touch(transaction):
        cold.get(transaction=transaction)
        transaction.update(cold, {"n": 1})

    touch(client.transaction())

    assert meter.writes_by_document() == {"meter/hot": 16, "meter/cold": 2}
    assert meter.max_sustained_writes_per_second(window=10.0) == ("meter/hot", 1.2)
    assert meter.max_sustained_writes_per_second(window=1.0) == ("meter/hot", 4.0)  # 3 updates + the batch
    list(client.collection("meter").where(filter=FieldFilter("n", ">=", 0)).stream())
    client.collection("meter").count().get()
    list(client.get_all([hot, client.collection("meter").document("absent")]))
    ops = meter.operations()
    assert ops["writes"] == 18
    assert ops["commits"] == 12 + 3 + 1 + 1
    assert (ops["query_documents"], ops["aggregation_queries"]) == (2, 1)
    assert (ops["lookup_documents"], ops["lookup_missing"]) == (2, 1)  # the transaction's get, then get_all
    assert ops["reads"] == 2 + 2 + 1


def test_aborted_commits_write_nothing_in_the_meter(emulator):
    client = faulty_client(project=PROJECT)
    doc = client.collection("metered").document(uuid.uuid4().hex)
    doc.set({"n": 0})
    older, younger = client.transaction(), client.transaction()
    older._begin()
    younger._begin()
    doc.get(transaction=older)
    doc.get(transaction=younger)
    older.update(doc, {"n": 1})
    older._commit()
    younger.update(doc, {"n": 2})
    with pytest.raises(google_errors.Aborted):
        younger._commit()
    assert client.write_meter.writes_by_document() == {doc._document_path.split("/documents/")[1]: 2}


@pytest.mark.parametrize(("times", "window", "most"), [
    ([], 10.0, 0), ([5.0], 10.0, 1), ([0.0, 9.99, 10.0], 10.0, 2), ([0.0, 10.0, 10.5, 19.9, 30.0], 10.0, 3),
])
def test_most_in_window(times, window, most):
    assert most_in_window(times, window) == most
