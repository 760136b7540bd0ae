"""Deterministic sample datasets for the demo, the tests and the benchmark."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq


def recipe_table() -> pa.Table:
    """The original recipe's frame: 3 rows, 4 columns (id, name, age, score)."""
    return pa.table({
        "id": pa.array([1, 2, 3], pa.int64()),
        "name": pa.array(["Ada", "Grace", "Linus"], pa.string()),
        "age": pa.array([36, 45, None], pa.int64()),
        "score": pa.array([91.5, 88.0, 79.25], pa.float64()),
    })


def events_table(day: int, rows: int) -> pa.Table:
    """A larger, deterministic table of events: ints, floats, strings, timestamps, a list and nulls."""
    base = day * 1_000_000
    return pa.table({
        "event_id": pa.array(range(base, base + rows), pa.int64()),
        "user": pa.array([f"user-{(i * 7919) % 1000:04d}" for i in range(rows)], pa.string()),
        "amount": pa.array([None if i % 17 == 0 else round((i * 37 % 1000) / 10.0, 2) for i in range(rows)],
                           pa.float64()),
        "ts": pa.array([1_767_225_600_000_000 + (base + i) * 1_000_000 for i in range(rows)], pa.timestamp("us")),
        "tags": pa.array([[f"t{i % 3}"] * (i % 3) for i in range(rows)], pa.list_(pa.string())),
    })


def parquet_bytes(table: pa.Table, *, row_group_size: int | None = None, **kwargs) -> bytes:
    """A table written as Parquet into memory."""
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size, **kwargs)
    return sink.getvalue()


def sample_objects() -> dict[str, bytes]:
    """The demo bucket's objects: the recipe file, and hive-partitioned events with junk beside them."""
    objects = {"recipe/data.parquet": parquet_bytes(recipe_table())}
    for day in (1, 2, 3):
        for part in range(2):
            key = f"events/dt=2026-01-0{day}/part-{part:05d}.parquet"
            objects[key] = parquet_bytes(events_table(day * 10 + part, 5000), row_group_size=2000)
        objects[f"events/dt=2026-01-0{day}/_SUCCESS"] = b""
    return objects


def lake_objects(count: int, *, days: int = 6) -> dict[str, bytes]:
    """A generated prefix of ``count`` small Parquet objects in ``days`` hive partitions (``lake/day=N/``): the
    fan-out demo's and benchmark's data. Objects repeat one of 32 bodies, so making thousands is quick."""
    bodies = [parquet_bytes(events_table(100 + i, 50)) for i in range(32)]
    return {f"lake/day={i % days}/part-{i:06d}.parquet": bodies[i % len(bodies)] for i in range(count)}
