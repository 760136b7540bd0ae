"""Pure: full mode. Column data -> mergeable column profiles.

Exact figures (``count``, ``null_count``, ``min``, ``max``, and for numeric columns ``mean``
and sample ``stddev``, merged with Chan's parallel formula) and approximate ones from Apache
DataSketches: an HLL sketch for the distinct count and a KLL sketch for the quartiles. Both
sketches merge, so a profile of a whole prefix is the merge of per-row-group profiles in any
order or grouping. Imported only for full-mode jobs (numpy and datasketches are not needed
for metadata mode). The allocator settings that keep full mode's memory bounded are process-wide,
so the edge makes them (:func:`worker.adapters.runtime.bound_allocator_retention`), not this module.
"""

from __future__ import annotations

import collections
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
    DECODE_ERRORS,
    DEFAULT_LIMITS,
    FOOTER_ERRORS,
    ByteBudget,
    Fetch,
    Limits,
    StoppedAtDeadline,
    Summary,
    load_footer,
    merge_bound,
    partition_values,
    unreadable_footer,
)
from worker.values import ValueType, array_bounds, comparable_array, render, render_float, value_type

# HLL with 2^14 buckets: ~0.8% relative standard error of the distinct count, 16 KiB per column.
HLL_LG_K = 14
# KLL with k=1000: ~0.35% normalized rank error for the quartiles, a few KiB per column.
KLL_K = 1000
QUARTILES = (0.25, 0.5, 0.75)
HLL_BATCH = 8192
UNIQUE_SAMPLE = 2048


def kind_of(arrow_type: pa.DataType) -> str:
    """What can be computed for a column of this type: numeric, string, temporal, boolean, binary,
    null (a null-typed column) or nested."""
    family = value_type(arrow_type).family
    if family == "number":
        return "numeric"
    if family in ("date", "time", "timestamp", "duration"):
        return "temporal"
    if family in ("binary", "uuid"):
        return "binary"
    if family in ("string", "boolean", "null"):
        return family
    return "nested"


@dataclass
class ColumnProfile:
    """A mergeable profile of one column. ``absorb`` merges in place; ``merge`` returns a new profile.

    ``min``/``max`` are comparable values (:mod:`worker.values`) of type ``vtype``, rendered only
    in ``to_dict``. The moments of the finite numeric values are kept scaled by ``2**exp`` (the
    largest magnitude seen is below it), so sums of squares of values near the float64 limit do
    not overflow: ``mean * 2**exp`` is the mean and ``m2 * 4**exp`` the sum of squared deviations.
    """

    kind: str
    types: frozenset[str]
    count: int = 0
    null_count: int = 0
    nan_count: int = 0
    min: Any = None
    max: Any = None
    vtype: ValueType | None = None
    bounds_lost: str | None = None  # why min/max are not known (values of types that do not compare)
    n: int = 0  # finite numeric values in mean and m2
    mean: float = 0.0
    m2: float = 0.0
    exp: int = 0
    hll: Any = None  # datasketches.hll_sketch
    kll: Any = None  # datasketches.kll_doubles_sketch
    partition: bool = False

    @classmethod
    def of_array(cls, array: pa.ChunkedArray | pa.Array) -> ColumnProfile:
        """The profile of one column's values (a row group's or a record batch's, typically)."""
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        kind = kind_of(array.type)
        profile = cls(kind=kind, types=frozenset([str(array.type)]), null_count=array.null_count,
                      count=len(array) - array.null_count, vtype=value_type(array.type))
        if kind == "null":
            profile.null_count, profile.count = len(array), 0
        if kind in ("nested", "null"):
            return profile
        profile.hll = _new_hll()
        profile.kll = _new_kll() if kind == "numeric" else None
        if profile.count == 0:
            return profile
        values = comparable_array(array)  # exact integers, bytes for strings: nothing decoded or rounded
        if values.null_count:
            values = pc.drop_null(values)
        profile.min, profile.max = array_bounds(values)
        _update_hll(profile.hll, values, kind)
        if kind == "numeric":
            profile._add_numbers(values)
        return profile

    def _add_numbers(self, values: pa.Array) -> None:
        # Integers above 2**53 and decimals lose digits only here, in the float figures
        # (mean, stddev, quartiles); min and max stay exact.
        floats = values if pa.types.is_float64(values.type) else values.cast(pa.float64(), safe=False)
        if pa.types.is_floating(values.type):
            nan = pc.is_nan(floats)
            self.nan_count = pc.sum(nan).as_py() or 0
            if self.nan_count:  # NaNs are counted, and take no part in mean, stddev or quartiles
                floats = pc.filter(floats, pc.invert(nan))
        if not len(floats):
            return
        # the sketch takes a writable float64 numpy array (infinities included: they are quantiles)
        self.kll.update(np.require(floats.to_numpy(zero_copy_only=False), np.float64, ["C", "W"]))
        if pa.types.is_floating(values.type) and self.min is not None and (
                math.isinf(self.min) or math.isinf(self.max)):
            floats = pc.filter(floats, pc.is_finite(floats))
        self.n = len(floats)
        if not self.n:
            return
        low, high = pc.min_max(floats).values()
        biggest = max(abs(low.as_py()), abs(high.as_py()))
        self.exp = math.frexp(biggest)[1] if biggest else 0
        # ldexp by a power of two is exact (bar underflow of values too small to matter beside the largest)
        scaled = pa.array(np.ldexp(floats.to_numpy(zero_copy_only=False), -self.exp))
        self.mean = pc.mean(scaled).as_py()
        self.m2 = pc.variance(scaled, ddof=0).as_py() * self.n

    @classmethod
    def constant(cls, value: str, rows: int) -> ColumnProfile:
        """A hive partition column: one value for every row of a file."""
        raw = value.encode("utf-8", "surrogatepass")
        hll = _new_hll()
        hll.update(_hll_text(raw))  # hashed as a string column's values are
        return cls(kind="string", types=frozenset(["string"]), count=rows, min=raw, max=raw,
                   vtype=value_type(pa.string()), hll=hll, partition=True)

    def copy(self) -> ColumnProfile:
        clone = ColumnProfile(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        if self.hll is not None:
            clone.hll = ds.hll_sketch.deserialize(self.hll.serialize_compact())
        if self.kll is not None:
            clone.kll = ds.kll_doubles_sketch.deserialize(self.kll.serialize())
        return clone

    def __getstate__(self) -> dict[str, Any]:
        """The fields, with the sketches as their own serializations (bytes): what pickle and
        :mod:`worker.partials` store, since the sketch objects themselves do not pickle."""
        state = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if self.hll is not None:
            state["hll"] = self.hll.serialize_compact()
        if self.kll is not None:
            state["kll"] = self.kll.serialize()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """The inverse of ``__getstate__``: every field set, the sketches rebuilt from their bytes."""
        if set(state) != set(self.__dataclass_fields__):
            raise ValueError("a ColumnProfile state must name exactly its fields")
        state = dict(state)
        if state["hll"] is not None:
            state["hll"] = ds.hll_sketch.deserialize(state["hll"])
        if state["kll"] is not None:
            state["kll"] = ds.kll_doubles_sketch.deserialize(state["kll"])
        self.__dict__.update(state)

    def merge(self, other: ColumnProfile) -> ColumnProfile:
        merged = self.copy()
        merged.absorb(other)
        return merged

    def absorb(self, other: ColumnProfile) -> None:
        """Merge ``other`` into this profile (``other`` is not changed)."""
        self.types = self.types | other.types
        self.partition = self.partition or other.partition
        self.count += other.count
        self.null_count += other.null_count
        self.nan_count += other.nan_count
        if other.kind == "null":  # a null-typed column in some files: only nulls to add
            return
        if self.kind == "null":
            counts = self.count, self.null_count, self.nan_count, self.types, self.partition
            taken = other.copy()
            for name in self.__dataclass_fields__:
                setattr(self, name, getattr(taken, name))
            self.count, self.null_count, self.nan_count, self.types, self.partition = counts
            return
        if self.kind != other.kind:
            # Types that do not compare (drift from int to string, say): keep only the counts.
            self.kind = "conflict"
            self.min = self.max = self.hll = self.kll = self.vtype = self.bounds_lost = None
            self.n, self.mean, self.m2, self.exp, self.nan_count = 0, 0.0, 0.0, 0, 0
            return
        if self.kind == "numeric":
            self._absorb_moments(other)
        self._absorb_bounds(other)
        if self.hll is not None and other.hll is not None:
            union = ds.hll_union(HLL_LG_K)
            union.update(self.hll)
            union.update(other.hll)
            self.hll = union.get_result()
        if self.kll is not None and other.kll is not None:
            self.kll.merge(other.kll)

    def _absorb_moments(self, other: ColumnProfile) -> None:
        # Chan's parallel formula, on both sides scaled to the larger exponent.
        if not other.n:
            return
        if not self.n:
            self.n, self.mean, self.m2, self.exp = other.n, other.mean, other.m2, other.exp
            return
        # A part whose values are all zero has no scale of its own (exp 0 by convention): taking it would scale
        # the other part's moments down by 4**exp and lose tiny values (~1e-270) to underflow.
        if other.mean == 0.0 and other.m2 == 0.0:
            exp = self.exp
        elif self.mean == 0.0 and self.m2 == 0.0:
            exp = other.exp
        else:
            exp = max(self.exp, other.exp)
        mean_a, m2_a = math.ldexp(self.mean, self.exp - exp), math.ldexp(self.m2, 2 * (self.exp - exp))
        mean_b, m2_b = math.ldexp(other.mean, other.exp - exp), math.ldexp(other.m2, 2 * (other.exp - exp))
        n = self.n + other.n
        delta = mean_b - mean_a
        self.m2 = m2_a + m2_b + delta * delta * self.n * other.n / n
        self.mean = mean_a + delta * other.n / n
        self.n, self.exp = n, exp

    def _absorb_bounds(self, other: ColumnProfile) -> None:
        reasons = [r for r in (self.bounds_lost, other.bounds_lost) if r]
        common = self.vtype.common(other.vtype) if self.vtype and other.vtype else None
        if reasons or common is None:
            self.min = self.max = None
            self.bounds_lost = min(reasons) if reasons else "values of these types do not compare"
            return
        low, high = other.vtype.convert(other.min, common), other.vtype.convert(other.max, common)
        self.min = merge_bound(min, self.vtype.convert(self.min, common), low)
        self.max = merge_bound(max, self.vtype.convert(self.max, common), high)
        self.vtype = common

    def to_dict(self) -> dict:
        """The profile as JSON: exact figures, and ``*_approx`` figures from the sketches.

        Figures that cannot be rendered are null and named in ``unrendered``; min/max shortened
        to STATISTIC_MAX_BYTES are named in ``truncated``.
        """
        out: dict[str, Any] = {"kind": self.kind, "count": self.count, "null_count": self.null_count}
        if self.partition:
            out["partition"] = True
        if len(self.types) > 1:
            out["types"] = sorted(self.types)
        if self.kind in ("nested", "conflict", "null"):
            return out
        unrendered: dict[str, str] = {}
        truncated: list[str] = []
        for figure in ("min", "max"):
            shown = render(self.vtype, getattr(self, figure), figure) if self.vtype else None
            out[figure] = shown.value if shown else None
            if self.bounds_lost:
                unrendered[figure] = self.bounds_lost
            elif shown and shown.reason:
                unrendered[figure] = shown.reason
            if shown and shown.truncated:
                truncated.append(figure)
        out["distinct_approx"] = _distinct(self.hll) if self.hll is not None else None
        if self.kind == "numeric":
            out["nan_count"] = self.nan_count
            out["mean"], out["stddev"] = self._mean_stddev(unrendered)
            n = self.kll.n if self.kll is not None else 0
            out["quartiles_approx"] = [render_float(self.kll.get_quantile(q)) for q in QUARTILES] if n else None
        if unrendered:
            out["unrendered"] = unrendered
        if truncated:
            out["truncated"] = truncated
        return out

    def _mean_stddev(self, unrendered: dict[str, str]) -> tuple[Any, Any]:
        # Over the non-NaN values, by the rule of real arithmetic: an infinity makes the mean infinite (NaN with
        # both signs) and the deviation NaN. pyarrow.compute.mean agrees except where the finite values' float
        # sum overflows to the other infinity ([inf, -1e308, -1e308]: NaN there, inf here).
        values = self.count - self.nan_count
        up = isinstance(self.max, float) and self.max == math.inf
        down = isinstance(self.min, float) and self.min == -math.inf
        if up or down:
            mean = "NaN" if up and down else "Infinity" if up else "-Infinity"
            return mean, "NaN" if values > 1 else None
        if not self.n:
            return None, None
        try:
            mean = render_float(math.ldexp(self.mean, self.exp))
        except OverflowError:
            mean, unrendered["mean"] = None, "outside the float64 range"
        if self.n < 2:
            return mean, None
        try:
            stddev = render_float(math.ldexp(math.sqrt(self.m2 / (self.n - 1)), self.exp))
        except OverflowError:
            stddev, unrendered["stddev"] = None, "outside the float64 range"
        return mean, stddev


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


def _hll_text(raw: bytes) -> str:
    # The sketch hashes str, int or float, not bytes: Latin-1 maps each byte to one code point,
    # so distinct byte strings stay distinct and invalid UTF-8 is no error.
    return raw.decode("latin-1")


def _update_hll(hll, values: pa.Array, kind: str) -> None:
    """Feed the non-null values of a comparable array (:func:`worker.values.comparable_array`)."""
    # The sketch takes one value per call, so feed it each distinct value of the chunk once; but
    # where a sample shows the values are nearly all distinct (ids, measurements), hashing them
    # first buys nothing: feed them as they are (the sketch ignores repeats anyway).
    sample = values.slice(0, UNIQUE_SAMPLE)
    mostly_distinct = len(values) > 2 * UNIQUE_SAMPLE and len(pc.unique(sample)) > 0.9 * len(sample)
    unique = values if mostly_distinct else pc.unique(values)
    if kind == "boolean":
        unique = unique.cast(pa.int8())
    elif pa.types.is_decimal(unique.type):
        unique = unique.cast(pa.string())
    # In slices, so that at most HLL_BATCH Python objects exist at a time; map() drives the
    # sketch's update from C, about twice as fast as a Python loop.
    for offset in range(0, len(unique), HLL_BATCH):
        part = unique.slice(offset, HLL_BATCH)
        if kind in ("string", "binary"):  # bytes (strings arrive as binary): hashed from their bytes
            _consume(map(hll.update, map(_hll_text, part.to_pylist())))
        else:
            _consume(map(hll.update, part.to_numpy(zero_copy_only=False).tolist()))


class _SparseFile(io.RawIOBase):
    """A read-only file of ``size`` bytes backed by the byte ranges fetched for one row group.

    pyarrow's Parquet reader reads column chunks through it; a read outside the fetched ranges
    (a chunk too large to prefetch, or a writer whose chunk sizes are off) is fetched on demand,
    so answers stay exact. An error from ``fetch`` is kept in ``error``: pyarrow reports it as
    its own I/O error, and the caller re-raises the original (a Retryable fault must stay one).
    """

    def __init__(self, size: int, fetch: Fetch):
        self._size = size
        self._fetch = fetch
        self._pos = 0
        self.ranges: list[tuple[int, bytes]] = []
        self.error: BaseException | None = None

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
        try:
            return self._fetch(start, end - 1)
        except BaseException as e:
            self.error = e
            raise


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


# Decoded bytes per value of each Parquet physical type (Arrow's layout), validity bit aside.
_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 8}
# More rows than this per batch buy no speed, and bound what a row-size estimate can miss.
MAX_BATCH_ROWS = 1 << 20
MAX_COLUMNS_PER_READ = 256
# A chunk read on demand (too large to prefetch) is read in pieces of at most this size.
MAX_READ_PIECE = 8 << 20


def batch_rows(group, leaves: list[int], budget: int) -> int:
    """Rows per record batch so that a batch of these leaves decodes to about ``budget`` bytes.

    Estimated from the footer: each leaf's values per row times its decoded width (a byte array
    by its encoded size per value, which undercounts repeated long values: MAX_BATCH_ROWS caps that).
    """
    rows = max(group.num_rows, 1)
    per_row = 0.0
    for j in leaves:
        chunk = group.column(j)
        values = max(chunk.num_values, 0)
        width = _WIDTH.get(chunk.physical_type)
        if width is None:  # BYTE_ARRAY, FIXED_LEN_BYTE_ARRAY: offsets + bytes
            width = 4 + max(chunk.total_uncompressed_size, 0) / max(values, 1)
        per_row += (width + 0.125) * max(values, rows) / rows
    return int(max(1, min(MAX_BATCH_ROWS, budget // max(per_row, 1.0))))


def column_groups(paths: tuple[tuple[str, ...], ...], leaves: list[int],
                  most: int = MAX_COLUMNS_PER_READ) -> list[list[int]]:
    """``leaves`` in runs of about ``most`` that never split a top-level column (a struct's leaves are
    read together, so it is counted once): Arrow's reader costs several KiB per column read at once,
    which for 20,000 columns is more than the data (measured: +130 MiB for one row of 20,000)."""
    groups: list[list[int]] = []
    for j in leaves:
        if groups and (len(groups[-1]) < most or paths[j][0] == paths[groups[-1][-1]][0]):
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


def profile_object(key: str, size: int, fetch: Fetch, *, columns: Collection[str] | None = None,
                   should_stop: Callable[[], bool] = lambda: False, limits: Limits = DEFAULT_LIMITS,
                   budget: ByteBudget | None = None) -> Summary:
    """Full mode for one object: its footer summary plus column profiles from one pass over its
    data, in record batches of about ``limits.full_mode_batch_bytes`` each, whatever the size of
    a row group. ``columns`` names top-level columns exactly. Unreadable objects become skips;
    raises StoppedAtDeadline between batches when ``should_stop`` says so. ``budget`` is the
    footer budget (see :func:`worker.summary.load_footer`)."""
    try:
        footer = load_footer(size, fetch, limits=limits, budget=budget)
        md = footer.metadata
        schema = md.schema.to_arrow_schema()
    except FOOTER_ERRORS as e:
        return unreadable_footer(key, e)
    paths = footer.schema.leaves
    names = [f.name for f in schema if columns is None or f.name in columns]
    leaves = [j for j, path in enumerate(paths) if columns is None or path[0] in columns]
    profiles: dict[str, ColumnProfile] = {}
    sparse = _SparseFile(size, fetch)
    cap = max(1, limits.full_mode_batch_bytes)
    readers: dict[int, pq.ParquetFile] = {}

    def reader(buffer_size: int) -> pq.ParquetFile:
        # pre_buffer off: this function decides what is fetched ahead, and how much.
        if buffer_size not in readers:
            readers[buffer_size] = pq.ParquetFile(pa.PythonFile(sparse, mode="r"), metadata=md,
                                                  buffer_size=buffer_size, pre_buffer=False)
        return readers[buffer_size]

    try:
        for r in range(md.num_row_groups if leaves else 0):
            group = md.row_group(r)
            for some in column_groups(paths, leaves):
                if should_stop():
                    raise StoppedAtDeadline(key=key)
                ranges = [chunk_range(group.column(j)) for j in some]
                if sum(b - a for a, b in ranges) <= cap:
                    sparse.ranges = [(a, fetch(a, b - 1)) for a, b in coalesce(ranges)]
                    piece = 0
                else:
                    # Too much to hold at once: every chunk is read on demand, in pieces, as it decodes.
                    piece = max(64 << 10, min(MAX_READ_PIECE, cap // (2 * len(some))))
                batches = reader(piece).reader.iter_batches(batch_rows(group, some, cap), [r],
                                                            column_indices=some, use_threads=False)
                for batch in batches:
                    for name, array in zip(batch.schema.names, batch.columns, strict=True):
                        part = ColumnProfile.of_array(array)
                        if name in profiles:
                            profiles[name].absorb(part)
                        else:
                            profiles[name] = part
                    del batch, array
                    if should_stop():
                        raise StoppedAtDeadline(key=key)
                sparse.ranges = []
    except StoppedAtDeadline:
        raise
    except DECODE_ERRORS as e:
        if sparse.error is not None and not isinstance(sparse.error, DECODE_ERRORS):
            raise sparse.error from None  # a fetch failure (Unavailable, NotFound...), not the data's
        return Summary.of_skipped(key, f"unreadable data: {type(e).__name__}: {e}")
    finally:
        sparse.ranges = []
        sparse.error = None  # a raised fault's traceback holds this frame: no cycle back to it through ``sparse``
    for field in schema:  # a column of empty row groups only: its type, no values
        if field.name in names and field.name not in profiles:
            profiles[field.name] = ColumnProfile.of_array(pa.array([], type=field.type))
    for name, value in partition_values(key).items():
        if columns is None or name in columns:
            profiles.setdefault(name, ColumnProfile.constant(value, md.num_rows))
    return Summary.of_file(key, size, md, columns, profiles, leaves=paths)
