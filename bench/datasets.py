"""Deterministic benchmark datasets, written once to bench/data/ (git-ignored) and reused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATA = Path(__file__).resolve().parent / "data"


def _write(path: Path, table: pa.Table, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, **kwargs)
    tmp.rename(path)


def events(seed: int, rows: int) -> pa.Table:
    """A mixed table: ints, floats with nulls, low- and high-cardinality strings, timestamps, booleans."""
    rng = np.random.default_rng(seed)
    price = rng.uniform(0, 1000, rows).round(2)
    price_mask = rng.random(rows) < 0.05
    categories = np.array([f"category-{i:02d}" for i in range(50)])
    countries = np.array([f"C{i:03d}" for i in range(200)])
    return pa.table({
        "id": pa.array(np.arange(seed * rows, (seed + 1) * rows, dtype=np.int64)),
        "user_id": pa.array(rng.integers(0, 1_000_000, rows)),
        "amount": pa.array(rng.normal(100, 25, rows)),
        "price": pa.array(price, mask=price_mask),
        "qty": pa.array(rng.integers(1, 100, rows).astype(np.int32)),
        "category": pa.array(categories[rng.integers(0, 50, rows)]),
        "country": pa.array(countries[rng.integers(0, 200, rows)]),
        "ts": pa.array(1_767_225_600_000_000 + rng.integers(0, 86_400_000_000 * 30, rows), pa.timestamp("us")),
        "flag": pa.array(rng.random(rows) < 0.3),
        "session": pa.array(np.char.add("s-", rng.integers(0, 100_000, rows).astype(str))),
    })


def build_all() -> dict[str, Path]:
    """Write the datasets that are missing; return {name: folder}."""
    sets = {}
    # 40 files of 400,000 rows (16 M rows), 4 row groups of 100,000 each: about 733 MB (699 MiB) in all
    large = DATA / "large"
    for i in range(40):
        path = large / f"part-{i:03d}.parquet"
        if not path.exists():
            _write(path, events(i, 400_000), row_group_size=100_000)
    sets["large"] = large
    # ~1000 small files
    small = DATA / "small"
    for i in range(1000):
        path = small / f"part-{i:04d}.parquet"
        if not path.exists():
            _write(path, events(10_000 + i, 500))
    sets["small"] = small
    # ~300 columns
    wide = DATA / "wide"
    for i in range(10):
        path = wide / f"part-{i:02d}.parquet"
        if not path.exists():
            rng = np.random.default_rng(20_000 + i)
            cols = {f"c{j:03d}": pa.array(rng.integers(0, 1000, 5000) if j % 3 else rng.normal(0, 1, 5000))
                    for j in range(300)}
            _write(path, pa.table(cols), row_group_size=2500)
    sets["wide"] = wide
    # a drifting schema: a column appears, another changes type from int to string
    drift = DATA / "drift"
    for i in range(6):
        path = drift / f"part-{i}.parquet"
        if not path.exists():
            table = events(30_000 + i, 20_000)
            if i >= 3:
                table = table.append_column("discount", pa.array(np.full(20_000, 0.1)))
            if i == 5:
                table = table.set_column(table.schema.get_field_index("qty"), "qty", table["qty"].cast(pa.string()))
            _write(path, table)
    sets["drift"] = drift
    # junk beside the data: a marker, a checksum, a zero-byte and a truncated .parquet
    junk = DATA / "junk"
    for i in range(4):
        path = junk / f"part-{i}.parquet"
        if not path.exists():
            _write(path, events(40_000 + i, 20_000))
    (junk / "_SUCCESS").write_bytes(b"")
    (junk / ".part-0.parquet.crc").write_bytes(b"crc32:0000")
    (junk / "empty.parquet").write_bytes(b"")
    whole = (junk / "part-0.parquet").read_bytes()
    (junk / "truncated.parquet").write_bytes(whole[: len(whole) // 2])
    sets["junk"] = junk
    return sets
