"""Pure: full mode. Column data -> mergeable column profiles.

Exact figures (``count``, ``null_count``, ``min``, ``max``, and for numeric columns ``mean``
and sample ``stddev``, merged with Chan's parallel formula) and approximate ones from Apache
DataSketches: an HLL sketch for the distinct count and a KLL sketch for the quartiles. Both
sketches merge, so a profile of a whole prefix is the merge of per-row-group profiles in any
order or grouping. Imported only for full-mode jobs (numpy and datasketches are not needed
for metadata mode).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import io
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import datasketches as ds
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from worker.summary import (
    DeadlineReached,
    Fetch,
    Summary,
    UnreadableFile,
    merge_bound,
    partition_values,
    read_footer,
    to_json_value,
)

# HLL with 2^14 buckets: ~0.8% relative standard error of the distinct count, 16 KiB per column.
HLL_LG_K = 14
# KLL with k=1000: ~0.35% normalized rank error for the quartiles, a few KiB per column.
KLL_K = 1000
QUARTILES = (0.25, 0.5, 0.75)
HLL_BATCH = 8192
UNIQUE_SAMPLE = 2048


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


@functools.cache
def bound_allocator_retention() -> None:
    """Keep full mode's memory bounded by what it holds, not by what allocators keep after freeing.

    Decoding row group after row group in several threads makes Arrow's mimalloc heaps and
    glibc's per-thread arenas keep freed memory: measured here, 60 to 90 MiB more peak RSS with
    two threads. Arrow then uses the system allocator, and glibc keeps at most two arenas and
    returns freed memory above 4 MiB. Process-wide and idempotent; a no-op off glibc.
    """
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for option, value in ((_M_ARENA_MAX, 2), (_M_TRIM_THRESHOLD, 4 << 20), (_M_MMAP_THRESHOLD, 4 << 20)):
        libc.mallopt(option, value)


def kind_of(arrow_type: pa.DataType) -> str:
    """What can be computed for a column of this type."""
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "numeric"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return "string"
    if pa.types.is_temporal(arrow_type):
        return "temporal"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(
            arrow_type):
        return "binary"
    if pa.types.is_dictionary(arrow_type):
        return kind_of(arrow_type.value_type)
    return "nested"


@dataclass
class ColumnProfile:
    """A mergeable profile of one column. ``absorb`` merges in place; ``merge`` returns a new profile."""

    kind: str
    types: frozenset[str]
    count: int = 0
    null_count: int = 0
    min: Any = None
    max: Any = None
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean (numeric)
    hll: Any = None  # datasketches.hll_sketch
    kll: Any = None  # datasketches.kll_doubles_sketch
    partition: bool = False

    @classmethod
    def of_array(cls, array: pa.ChunkedArray | pa.Array) -> ColumnProfile:
        """The profile of one column's values (a row group's, typically)."""
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        kind = kind_of(array.type)
        profile = cls(kind=kind, types=frozenset([str(array.type)]), null_count=array.null_count,
                      count=len(array) - array.null_count)
        if kind == "nested" or profile.count == 0:
            if kind != "nested":
                profile.hll, profile.kll = _new_hll(), _new_kll() if kind == "numeric" else None
            return profile
        values = pc.drop_null(array) if array.null_count else array
        bounds = pc.min_max(values)
        profile.min, profile.max = bounds["min"].as_py(), bounds["max"].as_py()
        profile.hll = _new_hll()
        _update_hll(profile.hll, values, kind)
        if kind == "numeric":
            floats = values.cast(pa.float64()) if not pa.types.is_floating(values.type) else values
            mean = pc.mean(floats).as_py()
            if mean is not None and math.isnan(mean):  # NaNs take no part in mean, stddev or quartiles
                floats = pc.filter(floats, pc.invert(pc.is_nan(floats)))
                mean = pc.mean(floats).as_py() if len(floats) else None
            profile.kll = _new_kll()
            if len(floats):
                # Arrow's kernels, not numpy temporaries: variance is computed in one streaming pass.
                profile.mean = mean
                profile.m2 = pc.variance(floats, ddof=0).as_py() * len(floats)
                # the sketch takes a writable float64 numpy array
                profile.kll.update(np.require(floats.to_numpy(zero_copy_only=False), np.float64, ["C", "W"]))
        return profile

    @classmethod
    def constant(cls, value: str, rows: int) -> ColumnProfile:
        """A hive partition column: one value for every row of a file."""
        hll = _new_hll()
        hll.update(value)
        return cls(kind="string", types=frozenset(["string"]), count=rows, min=value, max=value, hll=hll,
                   partition=True)

    def copy(self) -> ColumnProfile:
        clone = ColumnProfile(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        if self.hll is not None:
            clone.hll = ds.hll_sketch.deserialize(self.hll.serialize_compact())
        if self.kll is not None:
            clone.kll = ds.kll_doubles_sketch.deserialize(self.kll.serialize())
        return clone

    def merge(self, other: ColumnProfile) -> ColumnProfile:
        merged = self.copy()
        merged.absorb(other)
        return merged

    def absorb(self, other: ColumnProfile) -> None:
        """Merge ``other`` into this profile."""
        same_kind = self.kind == other.kind
        self.types = self.types | other.types
        self.partition = self.partition or other.partition
        n_a, n_b = self._numeric_n(), other._numeric_n()
        if same_kind and self.kind == "numeric" and n_b:
            n = n_a + n_b
            delta = other.mean - self.mean
            self.m2 = self.m2 + other.m2 + delta * delta * n_a * n_b / n
            self.mean = self.mean + delta * n_b / n
        self.count += other.count
        self.null_count += other.null_count
        if not same_kind:
            # Types that do not compare (drift from int to string, say): keep only the counts.
            self.kind = "conflict"
            self.min = self.max = self.hll = self.kll = None
            self.mean = self.m2 = 0.0
            return
        self.min = merge_bound(min, self.min, other.min)
        self.max = merge_bound(max, self.max, other.max)
        if self.hll is not None and other.hll is not None:
            union = ds.hll_union(HLL_LG_K)
            union.update(self.hll)
            union.update(other.hll)
            self.hll = union.get_result()
        if self.kll is not None and other.kll is not None:
            self.kll.merge(other.kll)

    def _numeric_n(self) -> int:
        return self.kll.n if self.kll is not None else 0

    def to_dict(self) -> dict:
        """The profile as JSON: exact figures, and ``*_approx`` figures from the sketches."""
        out: dict[str, Any] = {"kind": self.kind, "count": self.count, "null_count": self.null_count}
        if self.partition:
            out["partition"] = True
        if len(self.types) > 1:
            out["types"] = sorted(self.types)
        if self.kind in ("nested", "conflict"):
            return out
        out["min"], out["max"] = to_json_value(self.min), to_json_value(self.max)
        out["distinct_approx"] = _distinct(self.hll) if self.hll is not None else None
        if self.kind == "numeric":
            n = self._numeric_n()
            out["mean"] = self.mean if n else None
            out["stddev"] = math.sqrt(self.m2 / (n - 1)) if n > 1 else None
            out["quartiles_approx"] = [self.kll.get_quantile(q) for q in QUARTILES] if n else None
        return out


def _consume(iterator) -> None:
    collections.deque(iterator, maxlen=0)


def _distinct(hll) -> int:
    # A sketch built in one pass estimates with HIP; a merged one, from its registers alone. Folding
    # the sketch into a union twice (registers unchanged: max is idempotent) puts every sketch on
    # the register estimator, so the figure depends on the data, not on how the parts were merged.
    union = ds.hll_union(HLL_LG_K)
    union.update(hll)
    union.update(hll)
    return round(union.get_result().get_estimate())


def _new_hll():
    return ds.hll_sketch(HLL_LG_K, ds.tgt_hll_type.HLL_8)


def _new_kll():
    return ds.kll_doubles_sketch(KLL_K)


def _update_hll(hll, values: pa.Array, kind: str) -> None:
    # The sketch takes one value per call, so feed it each distinct value of the chunk once; but
    # where a sample shows the values are nearly all distinct (ids, measurements), hashing them
    # first buys nothing: feed them as they are (the sketch ignores repeats anyway).
    sample = values.slice(0, UNIQUE_SAMPLE)
    mostly_distinct = len(values) > 2 * UNIQUE_SAMPLE and len(pc.unique(sample)) > 0.9 * len(sample)
    unique = values if mostly_distinct else pc.unique(values)
    if kind == "temporal":
        unique = unique.cast(pa.int64()) if not pa.types.is_date32(unique.type) else unique.cast(pa.int32())
    elif kind == "boolean":
        unique = unique.cast(pa.int8())
    elif kind == "binary":
        unique = pc.cast(unique, pa.binary())
        _consume(map(hll.update, (v.hex() for v in unique.to_pylist())))
        return
    elif pa.types.is_decimal(unique.type):
        unique = unique.cast(pa.string())
    # In slices, so that at most HLL_BATCH Python objects exist at a time; map() drives the
    # sketch's update from C, about twice as fast as a Python loop.
    for offset in range(0, len(unique), HLL_BATCH):
        part = unique.slice(offset, HLL_BATCH)
        _consume(map(hll.update, part.to_numpy(zero_copy_only=False).tolist() if kind != "string"
                      else part.to_pylist()))


class _SparseFile(io.RawIOBase):
    """A read-only file of ``size`` bytes backed by the byte ranges fetched for one row group.

    pyarrow's Parquet reader reads column chunks through it; a read outside the fetched ranges
    (a writer whose chunk sizes are off) is fetched on demand, so answers stay exact.
    """

    def __init__(self, size: int, fetch: Fetch):
        self._size = size
        self._fetch = fetch
        self._pos = 0
        self.ranges: list[tuple[int, bytes]] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        start = self._pos
        end = self._size if n is None or n < 0 else min(self._size, start + n)
        if end <= start:
            return b""
        self._pos = end
        for begin, data in self.ranges:
            if begin <= start and end <= begin + len(data):
                return memoryview(data)[start - begin:end - begin]  # no copy: pyarrow takes any buffer
        return self._fetch(start, end - 1)


def chunk_range(chunk) -> tuple[int, int]:
    """The byte range [start, end) of one column chunk (dictionary page included)."""
    start = chunk.data_page_offset
    if chunk.has_dictionary_page and chunk.dictionary_page_offset and 0 < chunk.dictionary_page_offset < start:
        start = chunk.dictionary_page_offset
    return start, start + chunk.total_compressed_size


def coalesce(ranges: list[tuple[int, int]], gap: int = 1 << 20) -> list[tuple[int, int]]:
    """Merge ranges closer than ``gap`` bytes, so a row group costs few requests."""
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start - out[-1][1] <= gap:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def profile_object(key: str, size: int, fetch: Fetch, *, columns: Collection[str] | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> Summary:
    """Full mode for one object: its footer summary plus column profiles from one pass over its
    row groups, one row group in memory at a time. Unreadable objects become skips; raises
    DeadlineReached between row groups when ``should_stop`` says so."""
    try:
        md = read_footer(size, fetch)
        schema = md.schema.to_arrow_schema()
    except UnreadableFile as e:
        return Summary.of_skipped(key, str(e))
    except (pa.ArrowException, ValueError, OSError) as e:
        return Summary.of_skipped(key, f"unsupported Parquet schema: {e}")
    bound_allocator_retention()
    names = [f.name for f in schema if columns is None or f.name in columns]
    leaves = [j for j in range(md.num_columns) if md.schema.column(j).path.split(".", 1)[0] in set(names)]
    profiles: dict[str, ColumnProfile] = {}
    sparse = _SparseFile(size, fetch)
    try:
        reader = pq.ParquetFile(pa.PythonFile(sparse, mode="r"), metadata=md)
        for r in range(md.num_row_groups if names else 0):
            if should_stop():
                raise DeadlineReached(key)
            group = md.row_group(r)
            sparse.ranges = [(a, fetch(a, b - 1)) for a, b in coalesce([chunk_range(group.column(j)) for j in leaves])]
            table = reader.read_row_group(r, columns=names, use_threads=False)
            sparse.ranges = []
            for name in names:
                part = ColumnProfile.of_array(table.column(name))
                if name in profiles:
                    profiles[name].absorb(part)
                else:
                    profiles[name] = part
            del table
    except (pa.ArrowException, OSError) as e:
        return Summary.of_skipped(key, f"unreadable data: {e}")
    for name, value in partition_values(key).items():
        if columns is None or name in columns:
            profiles.setdefault(name, ColumnProfile.constant(value, md.num_rows))
    return Summary.of_file(key, size, md, columns, profiles)
