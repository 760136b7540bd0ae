"""summarize_listing over an in-memory object store: concurrency, progress, modes and the deadline."""

import threading

import pytest

from worker.config import Settings
from worker.devstack.datasets import events_table, parquet_bytes, recipe_table
from worker.errors import (
    Forbidden,
    NotFound,
    ObjectChanged,
    ObjectDenied,
    Retryable,
    Throttled,
    Unavailable,
    WorkerError,
)
from worker.jobs import Job
from worker.service import Tally, Worker, summarize_listing
from worker.summary import Limits, StoppedAtDeadline

from .support import REFRESH_FAULTS, MemoryStore, RefreshFails


def _store(n: int = 12) -> MemoryStore:
    objects = {f"d/part-{i:02d}.parquet": parquet_bytes(events_table(i, 400), row_group_size=200) for i in range(n)}
    objects["d/_SUCCESS"] = b""
    return MemoryStore(objects)


@pytest.mark.parametrize("concurrency", [1, 3, 16])
def test_any_concurrency_gives_the_same_summary(concurrency):
    store = _store()
    out = summarize_listing(store, list(store.list("d/")), concurrency=concurrency).to_dict()
    assert out["files"] == 12 and out["rows"] == 4800 and out["skipped_count"] == 1
    assert store.fetches == 12  # one ranged read per small file


def test_progress_is_reported_per_object():
    store = _store(5)
    seen = []
    summarize_listing(store, list(store.list("d/")), concurrency=2, on_progress=lambda done, total: seen.append(
        (done, total)))
    assert [done for done, _ in seen] == [1, 2, 3, 4, 5]
    assert all(done <= total <= 5 for done, total in seen) and seen[-1] == (5, 5)


def test_an_object_deleted_after_listing_is_skipped():
    store = _store(3)
    listed = list(store.list("d/"))
    del store.objects["d/part-01.parquet"]
    out = summarize_listing(store, listed, concurrency=2).to_dict()
    assert out["files"] == 2
    assert [s["reason"] for s in out["skipped"] if s["key"] == "d/part-01.parquet"] == [
        "object deleted after it was listed: NoSuchKey"]


def test_deadline_stops_before_starting_more_objects():
    store = _store(10)
    ticks = iter(range(1000))
    with pytest.raises(StoppedAtDeadline) as info:
        summarize_listing(store, list(store.list("d/")), concurrency=1, deadline=4.5, clock=lambda: next(ticks))
    assert info.value.done < 10 and info.value.total in (None, 10)
    assert store.fetches < 10


def test_the_deadline_signal_names_its_fields():
    with pytest.raises(TypeError):
        StoppedAtDeadline("d/part-1.parquet", 3, 10)  # positional meaning is what crashed once
    stop = StoppedAtDeadline(key="d/part-1.parquet", done=3, total=10)
    assert (stop.key, stop.done, stop.total) == ("d/part-1.parquet", 3, 10)


def test_full_mode_deadline_stops_between_row_groups():
    store = _store(2)
    ticks = iter(range(1000))
    with pytest.raises(StoppedAtDeadline):
        summarize_listing(store, list(store.list("d/")), concurrency=1, mode="full", deadline=2.5,
                          clock=lambda: next(ticks))


def test_full_mode_with_columns():
    store = MemoryStore({"r/a.parquet": parquet_bytes(recipe_table()), "r/b.parquet": parquet_bytes(recipe_table())})
    out = summarize_listing(store, list(store.list("r/")), concurrency=2, mode="full",
                            columns=["age", "nope"]).to_dict()
    assert set(out["profile"]) == {"age"}
    assert out["profile"]["age"]["count"] == 4 and out["profile"]["age"]["null_count"] == 2
    assert out["profile"]["age"]["mean"] == pytest.approx((36 + 45) / 2)


# -- issue 10: the listing is streamed, one object's failure is that object's --------------------------


def _listing(n_junk: int, parquet: dict[str, bytes], seen: list[int]):
    """A lazy listing: ``n_junk`` non-Parquet keys, then the Parquet ones; ``seen`` counts keys handed out."""
    for i in range(n_junk):
        seen[0] += 1
        yield f"a/junk-{i:07d}.csv", 10
    for key, data in sorted(parquet.items()):
        seen[0] += 1
        yield key, len(data)


def test_a_long_listing_is_consumed_as_it_comes_and_keeps_a_bounded_sample():
    parquet = {f"z/part-{i}.parquet": parquet_bytes(events_table(i, 50)) for i in range(3)}
    store = MemoryStore(parquet)
    seen = [0]
    tally = Tally()
    out = summarize_listing(store, _listing(200_000, parquet, seen), concurrency=2, tally=tally).to_dict()
    assert out["files"] == 3 and out["skipped_count"] == 200_000 and len(out["skipped"]) == 100
    assert [s["key"] for s in out["skipped"]] == [f"a/junk-{i:07d}.csv" for i in range(100)]
    assert (tally.listed, tally.parquet, tally.refused) == (200_003, 3, 0)


def test_the_deadline_is_honoured_while_listing():
    seen = [0]
    ticks = iter(range(10**6))
    with pytest.raises(StoppedAtDeadline) as info:
        summarize_listing(MemoryStore({}), _listing(10**6, {}, seen), concurrency=2, deadline=1000.5,
                          clock=lambda: next(ticks))
    assert info.value.total is None and info.value.done == 0
    assert seen[0] <= 1002  # stopped while listing, not after a million keys


def _corrupt_footer(data: bytes) -> bytes:
    """``data`` (a Parquet file) with its footer's bytes overwritten: PAR1 and the footer length still right."""
    length = int.from_bytes(data[-8:-4], "little")
    return data[:-8 - length] + b"\xff" * length + data[-8:]


class _Refusing(MemoryStore):
    """Refuses some keys as S3 would (the adapter's errors), and serves others with a footer no decoder reads."""

    def __init__(self, objects, refused=(), broken=()):
        super().__init__({k: _corrupt_footer(v) if k in broken else v for k, v in objects.items()})
        self.refused = set(refused)

    def fetch(self, key, start, end):
        if key in self.refused:
            raise ObjectDenied(f"access denied to this object: {key}")
        return super().fetch(key, start, end)


def test_one_objects_failure_is_that_objects():
    objects = {f"d/{c}.parquet": parquet_bytes(recipe_table()) for c in "abcd"}
    store = _Refusing(objects, refused={"d/a.parquet"}, broken={"d/b.parquet"})
    for mode in ("metadata", "full"):
        out = summarize_listing(store, store.list("d/"), concurrency=2, mode=mode, tally=(tally := Tally())).to_dict()
        assert out["files"] == 2 and out["rows"] == 6
        reasons = {s["key"]: s["reason"] for s in out["skipped"]}
        assert reasons["d/a.parquet"] == "access denied to this object: d/a.parquet"
        assert reasons["d/b.parquet"].startswith("corrupt footer")
        assert tally.refused == 1 and tally.first_refusal.startswith("d/a.parquet")


class _StubStorage:
    """The Storage protocol over one in-memory store (no credentials to get)."""

    def __init__(self, store):
        self.store = store

    def ensure_credentials(self):
        pass

    def objects(self, bucket, job_id):
        return self.store


def test_a_job_answers_forbidden_only_when_every_object_is_refused():
    objects = {f"d/{c}.parquet": parquet_bytes(recipe_table()) for c in "ab"}
    settings = Settings(role_arn="", audience="")
    job = Job(bucket="b-1", prefix="d/", job_id="j")
    some = Worker(settings, _StubStorage(_Refusing(objects, refused={"d/a.parquet"}))).run(job)
    assert some["status"] == "ok" and some["files"] == 1 and some["skipped_count"] == 1
    every = Worker(settings, _StubStorage(_Refusing(objects, refused=set(objects)))).run(job)
    assert every["status"] == "error" and every["error"]["code"] == "forbidden"
    assert every["error"]["details"] == {"objects_refused": 2}
    assert "access denied to this object: d/a.parquet" in every["error"]["message"]
    broken = Worker(settings, _StubStorage(_Refusing(objects, broken=set(objects)))).run(job)
    assert broken["status"] == "ok" and broken["files"] == 0 and broken["skipped_count"] == 2


def test_memory_does_not_grow_with_the_number_of_keys():
    import tracemalloc

    parquet = {"z/part.parquet": parquet_bytes(events_table(1, 50))}

    class Lazy(MemoryStore):
        def __init__(self, junk):
            super().__init__(parquet)
            self.junk = junk

        def list(self, prefix):
            return _listing(self.junk, parquet, [0])

    def peak(junk: int) -> int:
        worker = Worker(Settings(role_arn="", audience=""), _StubStorage(Lazy(junk)))
        tracemalloc.start()
        try:
            result = worker.run(Job(bucket="b-1", prefix="", job_id="j"))
            assert result["skipped_count"] == junk and result["files"] == 1
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(20_000), peak(200_000)
    assert large < 1.5 * small + 64 * 1024, (small, large)  # ten times the keys, about the same memory


def test_one_object_that_reaches_the_deadline_is_answered_deadline_exceeded():
    """It used to raise IndexError (the one-object path re-raised the deadline signal, then DeadlineReached, with
    one positional argument: its fields are keyword-only now)."""
    import time as clock

    class Slow(MemoryStore):
        def fetch(self, key, start, end):
            clock.sleep(1.1)  # past the 1 s deadline before the first row group
            return super().fetch(key, start, end)

    store = Slow({"d/only.parquet": parquet_bytes(events_table(1, 100))})
    settings = Settings(role_arn="", audience="", job_deadline_seconds=1)
    result = Worker(settings, _StubStorage(store)).run(Job(bucket="b-1", prefix="d/", job_id="j", mode="full"))
    assert result["status"] == "error" and result["error"]["code"] == "deadline_exceeded"
    assert result["error"]["details"]["files_read"] == 0 and result["error"]["details"]["files_total"] == 1


def test_full_mode_jobs_take_turns_and_one_that_waits_too_long_is_handed_back():
    """With request concurrency above 1, full-mode jobs run FULL_MODE_JOBS at a time; one that cannot get a
    turn within half its deadline is handed back to Pub/Sub (Retryable), never started too late."""
    import threading
    import time as clock

    from worker.errors import Retryable

    class Tracking(MemoryStore):
        def __init__(self, objects, hold):
            super().__init__(objects)
            self.hold, self.running, self.most = hold, 0, 0
            self.lock = threading.Lock()

        def fetch(self, key, start, end):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            clock.sleep(self.hold)
            with self.lock:
                self.running -= 1
            return super().fetch(key, start, end)

    def jobs_at_once(settings, hold):
        store = Tracking({"d/only.parquet": parquet_bytes(events_table(1, 50))}, hold)
        worker = Worker(settings, _StubStorage(store))
        results, errors = [], []

        def one(i):
            try:
                results.append(worker.run(Job(bucket="b-1", prefix="d/", job_id=f"j{i}", mode="full")))
            except Retryable as e:
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return store, results, errors

    store, results, errors = jobs_at_once(Settings(role_arn="", audience=""), 0.05)
    assert store.most == 1 and not errors and all(r["status"] == "ok" for r in results) and len(results) == 3
    assert all("queued" in r["timings_ms"] for r in results)
    store, results, errors = jobs_at_once(Settings(role_arn="", audience="", job_deadline_seconds=1), 0.4)
    assert store.most == 1 and len(results) + len(errors) == 3 and errors  # 0.8 s per job, 0.5 s to wait
    assert errors[0].code == "unavailable" and errors[0].retryable


# -- issue 18: only the object's own fault costs the object; anything else ends the delivery by its class ----------


class _FaultOn(MemoryStore):
    """Serves every object, except that ``key``'s reads from the ``after``-th on go to ``fault`` (the S3 adapter,
    or a callable that raises); ``threads`` names the threads that read ``key``."""

    def __init__(self, objects, key, fault, after=0):
        super().__init__(objects)
        self.key, self.fault, self.after = key, fault, after
        self.reads_of_key = 0
        self.threads: list[str] = []

    def fetch(self, key, start, end):
        if key == self.key:
            self.reads_of_key += 1
            self.threads.append(threading.current_thread().name)
            if self.reads_of_key > self.after:
                return self.fault(key, start, end)
        return super().fetch(key, start, end)


def _raises(kind, *args):
    """A fault: a read that raises ``kind(*args)``, a new exception each time (as a store does)."""

    def fetch(key, start, end):
        raise kind(*args)

    return lambda: fetch


def _refresh_fails(make_error):
    """A fault: the S3 adapter's read when botocore's refresh of its expired credentials raises ``make_error()``."""
    return lambda: RefreshFails(make_error).fetch


SKIPPED = "skipped"
# (id, a fault on one object's reads, what the job must do: (SKIPPED, words in the reason), or raise this)
READ_FAULTS = [
    # the object's own: skipped with its reason
    ("deleted-since-listed", _raises(ObjectChanged, "object deleted after it was listed: NoSuchKey"),
     (SKIPPED, "object deleted after it was listed")),
    ("denied-to-the-role", _raises(ObjectDenied, "access denied to this object: the role may not s3:GetObject it"),
     (SKIPPED, "access denied to this object")),
    # botocore's refresh failing inside the adapter's read (STS, the metadata server): by the class it becomes
    *[(f"refresh:{name}", _refresh_fails(make), kind) for name, make, kind in REFRESH_FAULTS],
    ("refresh:a-bug", _refresh_fails(lambda: KeyError("a bug in a token source")), KeyError),
    # what the store raises itself
    ("s3-throttles", _raises(Throttled, "GetObject failed: SlowDown"), Throttled),
    ("s3-unreachable", _raises(Unavailable, "GetObject failed: ProtocolError: S3 unreachable"), Unavailable),
    ("credentials-refused", _raises(Forbidden, "GetObject failed: SignatureDoesNotMatch"), Forbidden),
    ("bucket-gone", _raises(NotFound, "GetObject failed: NoSuchBucket"), NotFound),
    ("memory-error", _raises(MemoryError), MemoryError),
    ("a-bug", _raises(TypeError, "a bug in the store"), TypeError),
    # a bug of the decoder's exception classes (KeyError, an OSError), raised by the store: still not the object's
    ("a-bug-as-keyerror", _raises(KeyError, "a bug"), KeyError),
    ("a-raw-timeout", _raises(TimeoutError, "timed out"), TimeoutError),
]


def _objects(n: int) -> dict[str, bytes]:
    return {f"d/part-{i:02d}.parquet": parquet_bytes(recipe_table()) for i in range(n)}


# metadata: the footer read; full: the footer read, or a column chunk's read through pyarrow (a batch budget of one
# byte: every chunk is read on demand, so pyarrow sees the fault first)
READS = [("metadata", 0), ("full", 0), ("full", 1)]


@pytest.mark.parametrize("n", [1, 6], ids=["one-object", "six-objects"])
@pytest.mark.parametrize(("mode", "after"), READS, ids=["metadata", "full", "full-data-read"])
@pytest.mark.parametrize(("fault", "expected"), [(make, expected) for _, make, expected in READ_FAULTS],
                         ids=[name for name, _, _ in READ_FAULTS])
def test_a_fault_in_a_reader_ends_the_delivery_unless_it_is_the_objects_own(n, mode, after, fault, expected):
    objects = _objects(n)
    key = sorted(objects)[n // 2]
    store = _FaultOn(objects, key, fault(), after=after)
    limits = Limits(full_mode_batch_bytes=1)
    tally = Tally()
    if isinstance(expected, tuple):
        out = summarize_listing(store, store.list("d/"), concurrency=3, mode=mode, tally=tally,
                                limits=limits).to_dict()
        assert out["files"] == n - 1 and [s["key"] for s in out["skipped"]] == [key]
        assert expected[1] in out["skipped"][0]["reason"]
        assert tally.refused == (1 if expected[1].startswith("access denied") else 0)
    else:
        with pytest.raises(expected):
            summarize_listing(store, store.list("d/"), concurrency=3, mode=mode, tally=tally, limits=limits)
    assert store.reads_of_key == after + 1
    if n > 1:
        assert all(name.startswith("reader") for name in store.threads)  # met in a reader thread


@pytest.mark.parametrize(("fault", "expected"), [(make, expected) for _, make, expected in READ_FAULTS],
                         ids=[name for name, _, _ in READ_FAULTS])
def test_a_job_is_retried_answered_or_skips_one_object_by_the_faults_class(fault, expected):
    """The job's outcome: a Retryable fault is raised (the push answers 500, Pub/Sub redelivers), another
    WorkerError is the job's error result, anything else an ``internal`` one; only the object's own fault is a
    skip in an ok result. Nothing is answered ok with objects skipped for a fault that was not theirs."""
    objects = _objects(6)
    key = "d/part-03.parquet"
    worker = Worker(Settings(role_arn="", audience=""), _StubStorage(_FaultOn(objects, key, fault())))
    job = Job(bucket="b-1", prefix="d/", job_id="j")
    if isinstance(expected, tuple):
        result = worker.run(job)
        assert result["status"] == "ok" and result["files"] == 5 and result["skipped_count"] == 1
    elif issubclass(expected, Retryable):
        with pytest.raises(expected):
            worker.run(job)
    else:
        result = worker.run(job)
        assert result["status"] == "error", result
        error = result["error"]
        if issubclass(expected, WorkerError):
            assert error["code"] == expected.code and not error["retryable"]
        else:
            assert error["code"] == "internal" and error["details"]["exception"] == expected.__name__
            assert error["details"]["stage"] == "listing and reading"
