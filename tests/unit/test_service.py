"""summarize_listing over an in-memory object store: concurrency, progress, modes and the deadline."""

import pytest

from worker.devstack.datasets import events_table, parquet_bytes, recipe_table
from worker.service import summarize_listing
from worker.summary import DeadlineReached

from .support import MemoryStore


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
    assert seen == [(i, 5) for i in range(1, 6)]


def test_an_object_deleted_after_listing_is_skipped():
    store = _store(3)
    listed = list(store.list("d/"))
    del store.objects["d/part-01.parquet"]
    out = summarize_listing(store, listed, concurrency=2).to_dict()
    assert out["files"] == 2
    assert {"key": "d/part-01.parquet", "reason": "object disappeared after it was listed"} in out["skipped"]


def test_deadline_stops_before_starting_more_objects():
    store = _store(10)
    ticks = iter(range(1000))
    with pytest.raises(DeadlineReached) as info:
        summarize_listing(store, list(store.list("d/")), concurrency=1, deadline=4.5, clock=lambda: next(ticks))
    _, done, total = info.value.args
    assert total == 10 and done < 10
    assert store.fetches < 10


def test_full_mode_deadline_stops_between_row_groups():
    store = _store(2)
    ticks = iter(range(1000))
    with pytest.raises(DeadlineReached):
        summarize_listing(store, list(store.list("d/")), concurrency=1, mode="full", deadline=2.5,
                          clock=lambda: next(ticks))


def test_full_mode_with_columns():
    store = MemoryStore({"r/a.parquet": parquet_bytes(recipe_table()), "r/b.parquet": parquet_bytes(recipe_table())})
    out = summarize_listing(store, list(store.list("r/")), concurrency=2, mode="full",
                            columns=["age", "nope"]).to_dict()
    assert set(out["profile"]) == {"age"}
    assert out["profile"]["age"]["count"] == 4 and out["profile"]["age"]["null_count"] == 2
    assert out["profile"]["age"]["mean"] == pytest.approx((36 + 45) / 2)
